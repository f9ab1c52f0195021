"""Pieces every analysis shares: sampling with shared noise, loading views, distances, JSON-ready numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import expand_image_args
from ..diffusion import Sampler, batched, sample, sample_generators
from ..errors import RCDMError
from ..model import RCDM


def shared_noise(model: RCDM, num_samples: int, seed: int) -> torch.Tensor:
    """(num_samples, 3, S, S) standard normal: column j's starting noise, seeded by (seed, j)."""
    size = model.config.sample_size
    return torch.cat(
        [torch.randn((1, 3, size, size), generator=g) for g in sample_generators(seed, 0, num_samples)]
    )


@torch.no_grad()
def sample_shared_noise(
    model: RCDM,
    representations: torch.Tensor,
    num_samples: int,
    *,
    seed: int = 0,
    steps: int | None = None,
    sampler: Sampler = "dpm++",
    guidance: float = 1.0,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "sampling",
) -> torch.Tensor:
    """representations (R, dim) -> samples (R, num_samples, 3, S, S) in [0, 1].

    Sample j of EVERY row starts from the same noise (column j), so two rows differ only through their
    representations: with a deterministic sampler (dpm++, ddim) the pairing is exact.
    """
    from tqdm.auto import tqdm

    r = representations.shape[0]
    noise = shared_noise(model, num_samples, seed).repeat(r, 1, 1, 1)
    flat = representations.float().repeat_interleave(num_samples, dim=0)
    out = []
    for s, e in tqdm(list(batched(flat.shape[0], batch_size)), disable=not progress, desc=desc):
        out.append(
            sample(
                model,
                flat[s:e],
                noise=noise[s:e],
                steps=steps,
                sampler=sampler,
                seed=seed,
                first_index=s,
                guidance=guidance,
            )
        )
    imgs = torch.cat(out)
    return imgs.view(r, num_samples, *imgs.shape[1:])


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


def number(x: float | torch.Tensor) -> float | None:
    """A JSON-safe float (NaN/inf -> None)."""
    v = float(x)
    return v if math.isfinite(v) else None


def fmt(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.2f}"
