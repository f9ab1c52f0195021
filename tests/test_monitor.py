"""rcdm.monitor: what a training run shows while it runs (metrics.jsonl, log lines, sample grids, trackers)."""

from __future__ import annotations

import functools
import logging

import pytest
from PIL import Image

from rcdm.train import train
from training_for_tests import records, tiny_config

config = functools.partial(tiny_config, steps=4, log_every=1, mixed_precision="fp32")


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
