"""Faithfulness: retrieval ranks on pure tensors, and `rcdm evaluate faithfulness` on the tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.io import read_image

from rcdm.cli import main
from rcdm.metrics import (
    faithfulness_scores,
    retrieval_ranks,
)
from rcdm.metrics.generate import sample_path

# --- faithfulness: pure tensors -------------------------------------------------------------------------


def test_rank_is_one_for_a_perfect_generator():
    refs = torch.randn(50, 16)
    samples = refs[:, None, :].repeat(1, 3, 1) * 2.0  # same direction, other norm: cosine distance 0
    ranks = retrieval_ranks(refs, samples)
    assert ranks.shape == (50, 3)
    assert torch.all(ranks == 1)
    s = faithfulness_scores(refs, samples)
    assert s.mean_rank == 1 and s.top1 == 1 and s.top5 == 1 and s.cosine == pytest.approx(1, abs=1e-5)
    assert retrieval_ranks(refs, refs[:, None, :], distance="l2").eq(1).all()


def test_class_agreement_counts_samples_in_their_source_class():
    refs = torch.eye(4)  # class k = dimension k
    classifier = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        classifier.weight.copy_(torch.eye(4))
    same = refs[:, None, :].repeat(1, 2, 1) + 0.1 * torch.randn(4, 2, 4)
    assert faithfulness_scores(refs, same, classifier=classifier).class_agreement == 1.0
    wrong = refs.roll(1, 0)[:, None, :].repeat(1, 2, 1)  # every sample lands in the next class
    half = torch.cat([same[:, :1], wrong[:, :1]], 1)
    assert faithfulness_scores(refs, wrong, classifier=classifier).class_agreement == 0.0
    assert faithfulness_scores(refs, half, classifier=classifier).class_agreement == 0.5
    assert faithfulness_scores(refs, same).class_agreement is None


def test_rank_is_about_half_n_for_a_shuffled_generator():
    n = 400
    refs = torch.randn(n, 32)
    perm = (torch.arange(n) + torch.randint(1, n, (n,), generator=torch.Generator().manual_seed(0))) % n
    shuffled = refs[perm][:, None, :]  # every sample is the representation of another, random image
    s = faithfulness_scores(refs, shuffled)
    assert s.top1 == 0
    assert abs(s.mean_rank - n / 2) < 0.1 * n, s.mean_rank
    unrelated = faithfulness_scores(refs, torch.randn(n, 4, 32))
    assert abs(unrelated.mean_rank - (n + 1) / 2) < 0.06 * n
    assert unrelated.chance_rank == (n + 1) / 2


def test_rank_ties_count_half():
    refs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # references 0 and 1 coincide
    ranks = retrieval_ranks(refs, refs[:, None, :])
    assert ranks[:, 0].tolist() == [1.5, 1.5, 1.0]


def test_cli_faithfulness_on_tiny_run(tiny_run: Path, few_images: Path, resnet56_path: Path, tmp_path: Path):
    images = sorted(few_images.glob("*.jpg"))[:3]
    out = tmp_path / "faith.json"
    argv = ["evaluate", "faithfulness", "--model", str(tiny_run), "--images", *map(str, images)]
    argv += [
        "--num-samples",
        "2",
        "--steps",
        "2",
        "--judge",
        f"cifar-resnet56:{resnet56_path}",
        "--out",
        str(out),
    ]
    # the speed switches reach the sampler: CUDA graphs are refused on a CPU
    if not torch.cuda.is_available():
        assert main([*argv, "--compile", "graphs"]) == 2
    assert main([*argv, "--no-compile", "--precision", "fp32"]) == 0
    data = json.loads(out.read_text())
    own, judge = data["scores"]
    assert own["role"] == "conditioning" and judge["role"] == "judge" and "resnet56" in judge["encoder"]
    for s in (own, judge):
        assert s["num_references"] == 3 and s["samples_per_reference"] == 2
        assert 1 <= s["mean_rank"] <= 3 and -1 <= s["cosine"] <= 1 and 0 <= s["top1"] <= 1 and s["top5"] == 1
    assert 0 <= judge["class_agreement"] <= 1 and 0 <= own["class_agreement"] <= 1  # both ResNets classify
    md = out.with_suffix(".md").read_text()
    assert f"{own['mean_rank']:.4f}" in md and f"{judge['cosine']:.4f}" in md and "class agreement" in md
    # an earlier result is replaced only with --overwrite (as rcdm sample's folder)
    assert main([*argv, "--no-compile"]) == 2
    assert json.loads(out.read_text()) == data
    assert main([*argv, "--no-compile", "--precision", "fp32", "--overwrite"]) == 0


def test_cli_faithfulness_saves_the_samples_that_generate_would_draw(
    tiny_run: Path, few_images: Path, tmp_path: Path, capsys
):
    """--save-samples writes the scored samples in generate's layout: with 1 sample per image they are the very
    images `evaluate generate` draws, so `evaluate quality` can score them without sampling twice."""
    images = sorted(few_images.glob("*.jpg"))[:3]
    common = ["--model", str(tiny_run), "--images", *map(str, images), "--num-samples", "1", "--steps", "2"]
    common += ["--precision", "fp32"]
    saved, gen = tmp_path / "saved", tmp_path / "gen"
    faith = [
        "evaluate",
        "faithfulness",
        *common,
        "--out",
        str(tmp_path / "f.json"),
        "--save-samples",
        str(saved),
    ]
    assert main(faith) == 0
    assert main(["evaluate", "generate", *common, "--out", str(gen)]) == 0
    assert (saved / "references.txt").read_text().split() == [str(p) for p in images]
    for g in range(3):
        a, b = read_image(str(sample_path(saved, g))).int(), read_image(str(sample_path(gen, g))).int()
        assert (a - b).abs().max() <= 1
    assert not sample_path(saved, 3).exists()
    capsys.readouterr()
    assert main(faith) == 2  # an earlier result is replaced only with --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*faith, "--overwrite"]) == 2  # an earlier samples folder is never mixed with a new one
    assert "--save-samples" in capsys.readouterr().err
