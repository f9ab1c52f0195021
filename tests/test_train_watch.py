"""Training you can watch and resume: metrics.jsonl, log lines, sample grids, trackers, --resume from run.json,
refusal of changed settings, gradient accumulation."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from rcdm.cli import main
from rcdm.errors import RCDMError
from rcdm.train import train
from training_for_tests import tiny_argv, tiny_config, weights

# test_train's tiny run, shorter, logged every step, in fp32
config = functools.partial(tiny_config, steps=4, log_every=1, mixed_precision="fp32")


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_metrics_jsonl_log_lines_and_sample_grids(few_images, tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="rcdm"):
        train(config(few_images, sample_every=2), run, progress=True)  # stderr is not a terminal here
    recs = records(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs:
        assert {"loss", "mse", "vb", "lr", "images_per_s", "grad_norm", "elapsed_s", "cpu_s"} <= r.keys()
        assert r["cpu_s"] > 0 and r["elapsed_s"] > 0
        assert r["loss"] > 0 and r["images_per_s"] > 0 and r["grad_norm"] > 0 and r["lr"] == 1e-3
        assert abs(r["loss"] - (r["mse"] + r["vb"])) < 1e-3 * r["loss"] + 1e-6
    assert "step 1/4: loss" in caplog.text and "img/s" in caplog.text  # a plain line, not a carriage return
    assert "step 2/4: mean loss" in caplog.text  # one per checkpoint
    grids = sorted((run / "samples").glob("step-*.png"))
    assert [g.name for g in grids] == ["step-00000002.png", "step-00000004.png"]
    with Image.open(grids[0]) as im:
        assert im.width > 5 * 16 and im.height > 4 * 16  # 4 training images x (original + 4 samples)


def test_tensorboard_tracker_gets_the_scalars(few_images, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(config(few_images, steps=2, report_to="tensorboard"), run, progress=False)
    assert list((run / "rcdm").glob("events.out.tfevents.*"))  # the tracker writes under RUN/rcdm
    acc = EventAccumulator(str(run / "rcdm"))
    acc.Reload()
    assert {"loss", "images_per_s"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("loss")] == [1, 2]


def test_resume_reads_run_json_and_refuses_changed_settings(few_images, tmp_path, capsys):
    run = tmp_path / "run"
    argv = tiny_argv(few_images)
    argv += ["--log-every", "1", "--mixed-precision", "fp32", "--no-progress", "--out", str(run)]
    assert main([*argv, "--steps", "2"]) == 0
    # Changed settings are refused, each named with both values; nothing is trained or rewritten.
    before = (run / "run.json").read_text()
    for flag, value, name in [
        ("--lr", "1e-2", "lr"),
        ("--batch-size", "8", "batch_size"),
        ("--seed", "3", "seed"),
    ]:
        assert main(["train", "--out", str(run), "--resume", flag, value]) == 2
        err = capsys.readouterr().err
        assert f"{name} " in err and value.replace("1e-2", "0.01") in err and "run.json" in err
    assert (run / "run.json").read_text() == before
    # No flag but --steps: the run continues with its own settings.
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"]) == 0
    assert json.loads((run / "run.json").read_text())["steps"] == 4
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4]  # each step once
    straight = tmp_path / "straight"
    assert main([*argv[:-1], str(straight), "--steps", "4"]) == 0
    a, b = weights(run / "model"), weights(straight / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_gradient_accumulation_trains_the_same_model_and_resumes_exactly(few_images, tmp_path):
    one = tmp_path / "k1"
    train(config(few_images), one, progress=False)
    two = tmp_path / "k2"
    train(config(few_images, gradient_accumulation_steps=2), two, progress=False)
    a, b = weights(one / "model"), weights(two / "model")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert 0 < worst < 1e-4 or worst == 0, worst  # the same images, noise and mean loss: float rounding only
    part = tmp_path / "k2-resumed"
    train(config(few_images, gradient_accumulation_steps=2, steps=2), part, progress=False)
    train(config(few_images, gradient_accumulation_steps=2), part, resume=True, progress=False)
    c = weights(part / "model")
    assert all(torch.equal(b[k], c[k]) for k in b)
    with pytest.raises(RCDMError, match="gradient-accumulation-steps 3"):
        train(config(few_images, gradient_accumulation_steps=3), tmp_path / "bad", progress=False)
