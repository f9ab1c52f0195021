"""Pieces every analysis shares: input paths and the typical distance between representations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import expand_image_args
from ..errors import RCDMError


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
