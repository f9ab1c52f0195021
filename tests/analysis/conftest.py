"""Fixtures shared by the analysis tests: the tiny model, two images, synthetic colourful images, fast settings,
and `rcdm analyze` run on the tiny model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import rcdm
from rcdm.cli import main


@pytest.fixture(scope="module")
def tiny(tiny_run: Path):
    model = rcdm.load_model(tiny_run)
    return model, rcdm.encoder_for(model)


@pytest.fixture(scope="module")
def two_images(few_images: Path) -> list[Path]:
    return [few_images / "airplane.jpg", few_images / "cat.jpg"]


@pytest.fixture
def fast() -> dict:
    """Two samples of three steps: enough to check shapes and numbers on the tiny model."""
    return dict(num_samples=2, sampling=rcdm.SamplingConfig(steps=3))


def _colourful(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) images with structure and saturated colours."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, 4, 4), generator=g)
    return torch.nn.functional.interpolate(low, size=size, mode="bilinear").clamp(0, 1)


@pytest.fixture
def colourful() -> Callable[..., torch.Tensor]:
    return _colourful


def _analyze(name: str, tiny_run: Path, images: list[Path], out: Path, *extra: str) -> int:
    """`rcdm analyze NAME` on the tiny run with 2 samples of 3 steps; returns the exit code."""
    return main(
        [
            "analyze",
            name,
            "--model",
            str(tiny_run),
            "--images",
            *map(str, images),
            "--num-samples",
            "2",
            "--steps",
            "3",
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.fixture
def analyze() -> Callable[..., int]:
    return _analyze
