"""Pieces every analysis shares: input paths, the typical distance between representations, how far a
perturbation moved them, and the figure that compares clean and perturbed samples across results."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ..data import expand_image_args
from ..encoders import Encoder
from ..errors import RCDMError
from ..figures import grid


def typical_distance(representations: torch.Tensor) -> float:
    """Median Euclidean distance between the representations (M, dim) of different images; NaN if M < 2."""
    m = representations.shape[0]
    if m < 2:
        return math.nan
    d = torch.cdist(representations.float(), representations.float())
    iu = torch.triu_indices(m, m, offset=1)
    return float(d[iu[0], iu[1]].median())


def image_paths(images: Sequence[str | Path], minimum: int = 1, what: str = "this analysis") -> list[Path]:
    paths = expand_image_args(images)
    if len(paths) < minimum:
        raise RCDMError(
            f"{what} needs at least {minimum} images but got {len(paths)}: pass more with --images"
        )
    return paths


def relative_to_typical(shift: torch.Tensor, representations: torch.Tensor) -> torch.Tensor:
    """shift (...) divided by the typical distance between `representations` (M, dim); NaN when M < 2."""
    typical = typical_distance(representations)
    return shift / typical if math.isfinite(typical) else torch.full_like(shift, math.nan)


def representation_shift(
    reps: torch.Tensor, moved: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """reps (M, dim) of the clean images, moved (..., M, dim) of perturbed ones -> shift ||moved - rep||,
    shift relative to the typical distance between `reps` (NaN when M < 2), cosine(moved, rep); each (..., M)."""
    shift = (moved - reps).norm(dim=-1)
    cosine = F.cosine_similarity(moved, reps.expand_as(moved), dim=-1)
    return shift, relative_to_typical(shift, reps), cosine


def result_label(encoder: Encoder, label: str | None) -> str:
    """The name a result carries on figures and tables: `label`, else the encoder's spec and feature."""
    return label or f"{encoder.spec} ({encoder.feature})"


Rows = list[tuple[list[torch.Tensor], str]]


def comparison_figure(results: Sequence[Any], rows: Callable[[Any, int], Rows], title: str) -> Image.Image:
    """One grid of the results' `rows(result, i)` (input, then samples; a row label) per image i, the results
    interleaved and tagged [k] when there are several; the title ends with the results' labels."""
    cells, labels = [], []
    many = len(results) > 1
    for i in range(len(results[0].names)):
        for k, res in enumerate(results):
            for row, label in rows(res, i):
                cells.append(row)
                labels.append(f"[{k}] {label}" if many else label)
    cols = ["input"] + [f"sample {j}" for j in range(results[0].clean_samples.shape[1])]
    title += " vs ".join(f"[{k}] {r.label}" if many else r.label for k, r in enumerate(results))
    return grid(cells, row_labels=labels, col_labels=cols, title=title)
