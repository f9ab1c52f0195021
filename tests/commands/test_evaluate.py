"""rcdm evaluate faithfulness|quality (commands/evaluate.py): files written, reference statistics, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.io import read_image

from metrics.test_features import _offline_inception
from metrics.test_quality import _class_files, _folder
from rcdm.cli import main
from rcdm.metrics.generate import sample_path


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


def test_cli_quality_writes_json_and_markdown(cifar_root: Path, resnet56_path: Path, tmp_path: Path, capsys):
    real = _folder(_class_files(cifar_root, "dog", 0, 40), tmp_path / "real")
    fake = _folder(_class_files(cifar_root, "dog", 40, 40), tmp_path / "fake")
    out = tmp_path / "q" / "quality.json"
    spec = f"cifar-resnet56:{resnet56_path}"
    argv = ["evaluate", "quality", "--real", str(real), "--fake", str(fake), "--extractor", spec]
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


def test_fid_from_real_stats_equals_fid_from_the_real_images(
    cifar_root: Path, resnet56_path: Path, tmp_path: Path, capsys
):
    import numpy as np

    real = _folder(_class_files(cifar_root, "cat", 0, 40), tmp_path / "real")
    fake = _folder(_class_files(cifar_root, "dog", 0, 40), tmp_path / "fake")
    spec = f"cifar-resnet56:{resnet56_path}"
    argv = ["evaluate", "quality", "--fake", str(fake), "--extractor", spec, "--num-workers", "0"]
    assert main([*argv, "--real", str(real), "--out", str(tmp_path / "a.json"), "--kid-subsets", "5"]) == 0
    images = json.loads((tmp_path / "a.json").read_text())
    feats = np.load(Path(images["settings"]["real_store"]) / "features.npy").astype(np.float64)
    # ADM's reference-batch layout: the images (arr_0) beside mu/sigma (and the spatial mu_s/sigma_s).
    stats = tmp_path / "ref.npz"
    np.savez(
        stats,
        arr_0=np.zeros((2, 8, 8, 3), np.uint8),
        mu=feats.mean(0),
        sigma=np.cov(feats, rowvar=False),
        mu_s=np.zeros(3),
        sigma_s=np.eye(3),
    )
    both = ["--real", str(real), "--real-stats", str(stats), "--kid-subsets", "5"]
    assert main([*argv, *both, "--out", str(tmp_path / "b.json")]) == 0
    with_stats = json.loads((tmp_path / "b.json").read_text())
    assert with_stats["fid"] == pytest.approx(images["fid"], rel=1e-6) and images["fid"] > 1
    assert with_stats["fid_reference"] == str(stats) and images["fid_reference"] == "real images"
    assert with_stats["kid"] == images["kid"] and with_stats["precision"] == images["precision"]
    # Statistics alone: FID (and IS, from the fake logits); the scores that need real images are null.
    assert main([*argv, "--real-stats", str(stats), "--out", str(tmp_path / "c.json")]) == 0
    alone = json.loads((tmp_path / "c.json").read_text())
    assert alone["fid"] == pytest.approx(images["fid"], rel=1e-6)
    assert alone["num_real"] is None and alone["kid"] is None and alone["precision"] is None
    assert alone["inception_score"] == pytest.approx(images["inception_score"])
    assert "n/a" in (tmp_path / "c.md").read_text()
    capsys.readouterr()


def test_real_stats_files_are_checked_in_one_line(
    few_images: Path, resnet20_spec: str, tmp_path: Path, capsys
):
    import numpy as np

    def run(stats: Path) -> str:
        argv = ["evaluate", "quality", "--fake", str(few_images), "--extractor", resnet20_spec]
        assert main([*argv, "--real-stats", str(stats), "--out", str(tmp_path / "q.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(stats) in err
        return err

    images_only = tmp_path / "images.npz"
    np.savez(images_only, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    assert "no mu/sigma" in run(images_only) and "arr_0" in run(images_only)
    inception = tmp_path / "inception.npz"
    np.savez(inception, mu=np.zeros(2048), sigma=np.eye(2048))
    assert "2048-d" in run(inception) and "64-d" in run(inception)
    square = tmp_path / "bad-sigma.npz"
    np.savez(square, mu=np.zeros(64), sigma=np.eye(63))
    assert "(63, 63)" in run(square)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(1))
    assert "allow_pickle=False" in run(pickled)  # never unpickled
    assert "No such file" in run(tmp_path / "absent.npz")
    text = tmp_path / "notes.npz"
    text.write_text("hello\n")
    said = run(text)
    assert "not a numpy .npz" in said and "allow_pickle" not in said  # numpy's unsafe advice is never relayed
    assert not (tmp_path / "q.json").exists()
    argv = ["evaluate", "quality", "--fake", str(few_images), "--out", str(tmp_path / "q.json")]
    assert main(argv) == 2 and "--real-stats" in capsys.readouterr().err


def test_cli_missing_inception_weights_is_a_one_line_error(
    few_images: Path, tmp_path: Path, monkeypatch, capsys
):
    url = _offline_inception(monkeypatch, tmp_path)
    argv = ["evaluate", "quality", "--real", str(few_images), "--fake", str(few_images)]
    assert main([*argv, "--out", str(tmp_path / "q.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert url in err and "weights-inception-2015-12-05-6726825d.pth" in err and "--inception-weights" in err
    assert (
        str(tmp_path / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth") in err
    )
    assert (
        main([*argv, "--out", str(tmp_path / "q.json"), "--inception-weights", str(tmp_path / "nope.pth")])
        == 2
    )
    assert "nope.pth" in capsys.readouterr().err
    assert not (tmp_path / "q.json").exists()


def test_a_bad_real_stats_file_is_named_before_the_inception_weights_are_fetched(
    few_images: Path, tmp_path: Path, monkeypatch, capsys
):
    url = _offline_inception(monkeypatch, tmp_path)
    absent = tmp_path / "absent.npz"
    argv = ["evaluate", "quality", "--fake", str(few_images), "--real-stats", str(absent)]
    assert main([*argv, "--out", str(tmp_path / "q.json")]) == 2
    err = capsys.readouterr().err
    assert str(absent) in err and url not in err
