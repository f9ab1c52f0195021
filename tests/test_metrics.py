"""Metrics: pure-tensor checks of rank/KID/PR, CIFAR feature checks of FID, and the evaluate CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from rcdm.cli import main
from rcdm.metrics import (
    EncoderFeatures,
    extract_features,
    faithfulness_scores,
    frechet_distance,
    kernel_inception_distance,
    manifold_metrics,
    mmd2_unbiased,
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


# --- quality: pure tensors --------------------------------------------------------------------------------


def test_frechet_distance_matches_torchmetrics():
    from torchmetrics.image.fid import _compute_fid

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 8, generator=g).double(), (torch.randn(300, 8, generator=g) * 1.5 + 0.3).double()
    mu_a, mu_b, ca, cb = a.mean(0), b.mean(0), a.T.cov(), b.T.cov()
    assert frechet_distance(mu_a, ca, mu_b, cb) == pytest.approx(
        float(_compute_fid(mu_a, ca, mu_b, cb)), rel=1e-6
    )
    assert abs(frechet_distance(mu_a, ca, mu_a, ca)) < 1e-6


def test_kid_is_unbiased_on_small_sets():
    from torchmetrics.image.kid import poly_mmd

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 10, generator=g), torch.randn(20, 10, generator=g)
    assert mmd2_unbiased(x, y) == pytest.approx(float(poly_mmd(x.double(), y.double())), rel=1e-6)
    # Expectation of the unbiased estimator is 0 for two samples of one distribution, even with 10 points each
    # (the biased V-statistic would be clearly positive).
    vals = torch.tensor(
        [
            mmd2_unbiased(torch.randn(10, 10, generator=g), torch.randn(10, 10, generator=g))
            for _ in range(400)
        ]
    )
    assert abs(vals.mean()) < 3 * vals.std() / 400**0.5
    shifted = kernel_inception_distance(
        torch.randn(30, 10, generator=g), torch.randn(30, 10, generator=g) + 1, subsets=20
    )
    same = kernel_inception_distance(
        torch.randn(30, 10, generator=g), torch.randn(30, 10, generator=g), subsets=20
    )
    assert shifted[2] == 30 and shifted[0] > 10 * abs(same[0])


def test_precision_recall_of_a_set_against_itself_is_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g)
    m = manifold_metrics(x, x.clone(), chunk=128)
    assert m["precision"] == 1 and m["recall"] == 1 and m["coverage"] == 1
    far = manifold_metrics(x, torch.randn(500, 16, generator=g) + 10, chunk=128)
    assert far["precision"] == 0 and far["recall"] == 0 and far["coverage"] == 0 and far["density"] == 0
    same_dist = manifold_metrics(x, torch.randn(500, 16, generator=g))
    assert 0.5 < same_dist["precision"] <= 1 and 0.5 < same_dist["density"] < 1.5


# --- quality on CIFAR features ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet56_features(resnet56_path: Path) -> EncoderFeatures:
    from rcdm.encoders import create_encoder

    return EncoderFeatures(create_encoder(f"cifar-resnet56:{resnet56_path}"))


def _class_files(cifar_root: Path, cls: str, start: int, count: int) -> list[Path]:
    return sorted((cifar_root / "test" / cls).glob("*.jpg"))[start : start + count]


def test_fid_orders_cifar_sets(cifar_root: Path, resnet56_features: EncoderFeatures, tmp_path: Path):
    cats_a = _class_files(cifar_root, "cat", 0, 120)
    cats_b = _class_files(cifar_root, "cat", 120, 120)
    planes = _class_files(cifar_root, "airplane", 0, 120)
    store = tmp_path / "store"
    fa, fb, fp = (
        extract_features(f, resnet56_features, store, batch_size=64) for f in (cats_a, cats_b, planes)
    )
    assert fa.count == 120 and fa.dim == 64 and fa.has_logits
    self_fid = frechet_distance(*fa.mean_cov(), *fa.mean_cov())
    halves = frechet_distance(*fa.mean_cov(), *fb.mean_cov())
    classes = frechet_distance(*fa.mean_cov(), *fp.mean_cov())
    print(f"FID[resnet56] self {self_fid:.4g}, cat halves {halves:.3f}, cat vs airplane {classes:.3f}")
    assert abs(self_fid) < 1e-6
    assert classes > 2 * halves > 0
    # The store is reused: a second call extracts nothing (no new marker) and reads the same numbers.
    again = extract_features(cats_a, resnet56_features, store, batch_size=64)
    assert again.folder == fa.folder and torch.equal(
        torch.cat(list(again.chunks())), torch.cat(list(fa.chunks()))
    )


# --- CLI -------------------------------------------------------------------------------------------------


def _folder(files: list[Path], dest: Path) -> Path:
    dest.mkdir(parents=True)
    for f in files:
        shutil.copy(f, dest / f.name)
    return dest


def test_cli_quality_writes_json_and_markdown(cifar_root: Path, resnet56_path: Path, tmp_path: Path, capsys):
    real = _folder(_class_files(cifar_root, "dog", 0, 40), tmp_path / "real")
    fake = _folder(_class_files(cifar_root, "dog", 40, 40), tmp_path / "fake")
    out = tmp_path / "q" / "quality.json"
    spec = f"cifar-resnet56:{resnet56_path}"
    argv = ["evaluate", "quality", "--real", str(real), "--fake", str(fake), "--features", spec]
    assert main([*argv, "--out", str(out), "--num-workers", "0", "--kid-subsets", "10"]) == 0
    data = json.loads(out.read_text())
    assert data["features"] == spec and data["standard"] is False
    assert data["num_real"] == data["num_fake"] == 40 and data["settings"]["kid_subset_size"] == 40
    assert data["fid"] > 0 and 0 <= data["precision"] <= 1 and 0 <= data["coverage"] <= 1
    assert 1 <= data["inception_score"] <= 10 and "non-standard" in data["inception_score_note"]
    md = out.with_suffix(".md").read_text()
    assert f"{data['fid']:.4f}" in md and f"FID [{spec}]" in md and f"{data['recall']:.4f}" in md
    assert (tmp_path / "q" / "quality.features").is_dir()
    self_out = tmp_path / "self.json"
    assert (
        main([*argv[:4], "--fake", str(real), *argv[6:], "--out", str(self_out), "--num-workers", "0"]) == 0
    )
    same = json.loads(self_out.read_text())
    assert abs(same["fid"]) < 1e-6 and same["precision"] == 1 and same["recall"] == 1
    assert "FID" in capsys.readouterr().out


def test_cli_missing_inception_weights_is_a_one_line_error(
    few_images: Path, tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("RCDM_INCEPTION_WEIGHTS", raising=False)
    argv = ["evaluate", "quality", "--real", str(few_images), "--fake", str(few_images)]
    assert main([*argv, "--out", str(tmp_path / "q.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "weights-inception-2015-12-05-6726825d.pth" in err
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert (
        main([*argv, "--out", str(tmp_path / "q.json"), "--inception-weights", str(tmp_path / "nope.pth")])
        == 2
    )
    assert "nope.pth" in capsys.readouterr().err
    assert not (tmp_path / "q.json").exists()


def test_inception_extractor_with_a_weights_file(tmp_path: Path, monkeypatch):
    """The FID network's plumbing, with random weights of the right shape (the real file is not available)."""
    fid = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from rcdm.errors import RCDMError
    from rcdm.metrics import create_feature_extractor

    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with monkeypatch.context() as m:
        m.setattr(fid.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        net = fid.FeatureExtractorInceptionV3("x", ["2048"], feature_extractor_weights_path=str(empty))
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), weights)
    extractor = create_feature_extractor("inception", weights)
    assert extractor.standard and extractor.has_logits and extractor.name == "inception-v3"
    feats, logits = extractor(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and logits is not None and logits.shape == (2, 1008)
    with pytest.raises(RCDMError, match="not the FID Inception"):
        create_feature_extractor("inception", empty)


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


def _pixels(path: Path) -> torch.Tensor:
    from torchvision.io import read_image

    return read_image(str(path)).int()


def test_cli_generate_is_resumable_and_deterministic(
    tiny_run: Path, few_images: Path, tmp_path: Path, capsys
):
    out = tmp_path / "gen"
    argv = ["evaluate", "generate", "--model", str(tiny_run), "--images", str(few_images), "--steps", "2"]
    argv += ["--batch-size", "2", "--precision", "fp32", "--out", str(out)]  # fp32: batch-size invariant
    assert main([*argv, "--num-samples", "5"]) == 0
    assert "5 samples drawn, 0 already there" in capsys.readouterr().out
    first = _pixels(sample_path(out, 4))
    sample_path(out, 4).unlink()
    assert main([*argv, "--num-samples", "7"]) == 0  # redraws the batch [4, 6) and draws 6
    assert "3 samples drawn, 4 already there" in capsys.readouterr().out
    # Same noise and representation, now in a batch of 2 instead of 1: equal up to float rounding of the kernels.
    again = _pixels(sample_path(out, 4))
    assert (again - first).abs().max() <= 2 and (again - first).abs().float().mean() < 0.05
    assert main([*argv, "--num-samples", "7", "--seed", "1"]) == 2
    assert "seed" in capsys.readouterr().err


def test_generate_splits_between_torchrun_processes_on_cpu(tiny_run: Path, few_images: Path, tmp_path: Path):
    """Two CPU processes (torchrun, gloo) share the batches and draw exactly the images one process draws."""
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("checks the CPU (gloo) process group; on a GPU machine processes take GPUs")
    torchrun = Path(sys.executable).with_name("torchrun")
    args = ["evaluate", "generate", "--model", str(tiny_run), "--images", str(few_images), "--steps", "2"]
    args += ["--batch-size", "2", "--num-samples", "6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both runs on one thread each: the same float kernels
    cli = [sys.executable, "-m", "rcdm.cli", *args]
    one = subprocess.run(
        [*cli, "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=300
    )
    assert one.returncode == 0, one.stderr[-2000:]
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from rcdm.parallel import process_state\n"
        "s = process_state()\n"
        "with s.split_between_processes(list(range(6))) as mine:\n"
        "    print(f'rank {s.process_index} of {s.num_processes}: {mine}', flush=True)\n"
    )
    run = [str(torchrun), "--standalone", "--nproc-per-node", "2"]
    shares = subprocess.run([*run, str(probe)], capture_output=True, text=True, env=env, timeout=300)
    assert "rank 0 of 2: [0, 1, 2]" in shares.stdout and "rank 1 of 2: [3, 4, 5]" in shares.stdout
    two = subprocess.run(
        [*run, "-m", "rcdm.cli", *args, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    for g in range(6):
        assert torch.equal(
            _pixels(sample_path(tmp_path / "one", g)), _pixels(sample_path(tmp_path / "two", g))
        )
