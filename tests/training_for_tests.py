"""Tiny training settings and weight comparisons shared by the training tests (test_train.py, test_monitor.py, ...)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rcdm.model import RCDM
from rcdm.train import TrainConfig


def tiny_config(data: Path, **kw) -> TrainConfig:
    """A tiny pixels:2 run on 16 px images: 6 steps of 4 images, a checkpoint every 2 steps; kw override."""
    base = dict(
        data=str(data),
        encoder="pixels:2",
        preset="tiny",
        image_size=16,
        steps=6,
        batch_size=4,
        lr=1e-3,
        ema_decay=0.9,
        save_every=2,
        num_workers=0,
    )
    return TrainConfig(**{**base, **kw})


def tiny_argv(data: Path) -> list[str]:
    """`rcdm train` with tiny_config's settings, less --steps and --out (the CLI spelling of the same run)."""
    flags = "--encoder pixels:2 --preset tiny --image-size 16 --batch-size 4 --lr 1e-3 --ema-decay 0.9"
    return ["train", "--data", str(data), *flags.split(), "--save-every", "2", "--num-workers", "0"]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return RCDM.from_pretrained(folder).state_dict()


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def records(run: Path) -> list[dict]:
    """RUN/metrics.jsonl as a list of records."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
