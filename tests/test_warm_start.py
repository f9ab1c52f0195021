"""rcdm train --init-from: a new run starts from a trained RCDM (rcdm.warm_start)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rcdm.cli import main
from rcdm.model import WEIGHTS_FILE
from rcdm.train import train
from rcdm.weights import sha256_file
from training_for_tests import tiny_argv, tiny_config, weights


@pytest.fixture(scope="module")
def base(few_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pixels:2 RCDM (tests only) with a null representation, trained 2 steps."""
    run = tmp_path_factory.mktemp("base")
    train(tiny_config(few_images, steps=2, save_every=2, cond_drop=0.5), run, progress=False)
    return run


def test_a_run_for_another_encoder_starts_from_the_unet_and_learns_its_own_conditioning(
    base: Path, few_images: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    # lr 1e-12: the one step leaves the weights where they started, so the model shows what the run began with
    cfg = tiny_config(few_images, steps=1, encoder="pixels:4", lr=1e-12, cond_drop=0.5, init_from=str(base))
    train(cfg, run, progress=False)
    src, got = weights(base / "model"), weights(run / "model")
    unet = [k for k in src if k.startswith("unet.")]
    assert unet and all(torch.allclose(src[k], got[k], atol=1e-6) for k in unet)
    assert (
        got["rep_proj.weight"].shape[1] == 48 != src["rep_proj.weight"].shape[1]
    )  # 4x4x3 colours against 2x2x3
    record = json.loads((run / "model" / "config.json").read_text())["initialised_from"]
    assert record["model"] == str(base.resolve()) and record["encoder"] == "pixels:2"
    assert record["weights"] == sha256_file(base / "model" / WEIGHTS_FILE)
    assert set(record["fresh"]) == {"rep_proj.weight", "rep_proj.bias", "null_rep"}
    assert record["copied"] == len(unet)
    # a resume reads its checkpoint, not the model it started from, and keeps the setting from run.json
    assert main(["train", "--out", str(run), "--resume", "--steps", "2", "--no-progress"]) == 0
    assert json.loads((run / "run.json").read_text())["init_from"] == str(base)


def test_the_same_encoder_keeps_the_conditioning_too(base: Path, few_images: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(few_images, steps=1, lr=1e-12, cond_drop=0.5, init_from=str(base)), run, progress=False)
    src, got = weights(base / "model"), weights(run / "model")
    assert all(torch.allclose(src[k], got[k], atol=1e-6) for k in src)
    assert json.loads((run / "model" / "config.json").read_text())["initialised_from"]["fresh"] == []


def test_a_unet_of_another_layout_is_refused_in_one_line(
    base: Path, few_images: Path, tmp_path: Path, capsys
) -> None:
    argv = [*tiny_argv(few_images), "--loss", "simple", "--cond-drop", "0.5", "--steps", "1"]
    assert main([*argv, "--init-from", str(base), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--init-from" in err and "its UNet differs from this run's (unet.conv_out.weight" in err
    assert err.count("\n") == 0


def test_the_model_started_from_sets_the_runs_layout_unless_flags_say_otherwise(
    base: Path, few_images: Path, tmp_path: Path
) -> None:
    # No --preset, --image-size or --loss: the run takes the tiny 16 px hybrid layout of the model it starts from
    # (the dataclass defaults, cifar32 at 32 px, would not fit it); a flag given still wins.
    flags = "--encoder pixels:4 --batch-size 4 --cond-drop 0.5 --steps 1 --num-workers 0 --no-progress"
    argv = ["train", "--data", str(few_images), *flags.split(), "--init-from", str(base)]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (saved["preset"], saved["image_size"], saved["loss"], saved["prediction"]) == (
        "tiny",
        16,
        "hybrid",
        "epsilon",
    )
    assert main([*argv, "--image-size", "32", "--out", str(tmp_path / "wider")]) == 0
    assert json.loads((tmp_path / "wider" / "run.json").read_text())["image_size"] == 32
