"""The pack's scorer: diversity across samples, the guidance choice and its record in the model's config."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rcdm.cli import main
from rcdm.diffusion import resolve_sampling
from rcdm.model import RCDM
from rcdm.pack import stages
from rcdm.pack.evaluation import Score, choose_guidance, sampling_record

BASE = Score(
    num_images=100,
    sampler="dpm++",
    steps=20,
    guidance=1.0,
    class_agreement=0.3,
    rank1=0.02,
    mean_rank=40.0,
    frechet=5.0,
    own_rank1=0.1,
    diversity=0.3,
    pixel_spread=0.2,
    num_samples=2,
    wall_s=1.0,
    cpu_s=1.0,
)


def test_the_lowest_guidance_nearly_as_faithful_as_the_best_is_chosen():
    scores = [
        BASE,
        replace(BASE, guidance=2.0, class_agreement=0.55, rank1=0.05),
        replace(BASE, guidance=3.0, class_agreement=0.60, rank1=0.06),
        replace(BASE, guidance=5.0, class_agreement=0.61, rank1=0.065),
    ]
    assert choose_guidance(scores).guidance == 3.0  # 0.60 is within 0.02 of 0.61, 0.06 within 0.01 of 0.065
    assert choose_guidance(scores[:3]).guidance == 3.0
    worse_rank = [*scores[:3], replace(BASE, guidance=5.0, class_agreement=0.61, rank1=0.09)]
    assert choose_guidance(worse_rank).guidance == 5.0
    record = sampling_record(scores, scores[2], "judge:x")
    assert record["guidance"] == 3.0 and [m["guidance"] for m in record["measured"]] == [1.0, 2.0, 3.0, 5.0]


@pytest.fixture
def guided(tmp_path, few_images) -> Path:
    torch.manual_seed(0)
    m = RCDM.from_preset(
        "tiny", representation_dim=12, sample_size=16, null_representation=True, encoder="pixels:2"
    )
    with torch.no_grad():
        m.null_rep.normal_()
    m.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_cli_guidance_measures_diversity_and_records_the_choice(guided, cifar_root, resnet56_path, capsys):
    judge = f"cifar-resnet56:{resnet56_path}"
    argv = ["recipe", "guidance", "--model", str(guided), "--data", str(cifar_root), "--judge", judge]
    assert main([*argv, "--guidance", "1", "4", "--eval-images", "10", "--record", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| guidance | class agreement |" in out and "chosen: guidance" in out
    config = json.loads((guided / "config.json").read_text())
    measured = config["sampling"]["measured"]
    assert [m["guidance"] for m in measured] == [1.0, 4.0]
    assert all(0 < m["diversity"] <= 2 and 0 < m["pixel_spread"] < 1 for m in measured)
    chosen = config["sampling"]["guidance"]
    # the judge is named by its weights' digest: no path of this machine travels with the model into a bundle
    assert (
        str(resnet56_path) not in json.dumps(config)
        and "cifar-resnet56@sha256:" in config["sampling"]["chosen_by"]
    )
    assert resolve_sampling(RCDM.from_pretrained(guided)).guidance == chosen  # sampling now uses it
    assert main([*argv, "--num-samples", "1"]) == 2
    assert "diversity needs at least 2 samples" in capsys.readouterr().err
    assert main([*argv, "--device", "cuda:7"]) == 2  # a device this machine lacks: one line, before any work
    assert "cuda:7" in capsys.readouterr().err


def test_cli_guidance_scores_resume_a_sweep_and_a_retrained_model_is_measured_again(
    guided, cifar_root, resnet56_path, tmp_path, monkeypatch, capsys
):
    scored: list[float] = []
    real = stages.score_model

    def counting(*args, **kwargs):
        scored.append(args[4].guidance)
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "score_model", counting)
    judge = f"cifar-resnet56:{resnet56_path}"
    argv = ["recipe", "guidance", "--model", str(guided), "--data", str(cifar_root), "--judge", judge]
    argv += ["--eval-images", "10", "--no-progress", "--scores", str(tmp_path / "scores")]

    def rows(out: str) -> dict[str, str]:
        lines = [
            line
            for line in out.splitlines()
            if line.startswith("| ") and "guidance" not in line and "---" not in line
        ]
        return {line.split("|")[1].strip(" *"): line.replace("*", "") for line in lines}

    assert main([*argv, "--guidance", "1"]) == 0  # a sweep cut short after its first weight
    first = rows(capsys.readouterr().out)
    assert scored == [1.0] and (tmp_path / "scores" / "guidance" / "score.json").is_file()
    assert main([*argv, "--guidance", "1", "4"]) == 0
    assert scored == [1.0, 4.0]  # weight 1 read back, weight 4 measured
    again = rows(capsys.readouterr().out)
    assert again["1"] == first["1"] and set(again) == {"1", "4"}
    assert main([*argv, "--guidance", "1", "4", "--num-samples", "3"]) == 0
    assert scored == [1.0, 4.0, 1.0, 4.0]  # other samples per image: measured again
    model = RCDM.from_pretrained(guided)
    with torch.no_grad():
        model.null_rep.add_(1.0)
    model.save_pretrained(guided)  # retrained in place: the same folder, other weights
    assert main([*argv, "--guidance", "4"]) == 0
    assert scored[-1] == 4.0 and len(scored) == 5
