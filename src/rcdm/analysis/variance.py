"""Variance: where the samples of one representation disagree. The per-pixel standard deviation over N samples
is what the representation leaves open; low-variance regions are what it pins down."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..diffusion import SamplingConfig, resolve_sampling
from ..encoders import Encoder
from ..figures import grid, number
from ..model import RCDM
from ..visualize import visualize
from ._common import image_paths

# A black -> purple -> orange -> yellow ramp (inferno-like), 5 anchors interpolated linearly.
_RAMP = torch.tensor(
    [[0.0, 0.0, 0.02], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04], [0.99, 1.0, 0.64]]
)


def pixel_std(samples: torch.Tensor) -> torch.Tensor:
    """samples (..., N, 3, H, W) in [0, 1] -> (..., H, W): std over the N samples, averaged over channels."""
    return samples.float().std(dim=-4, unbiased=False).mean(dim=-3)


def heat_map(values: torch.Tensor, vmax: float) -> torch.Tensor:
    """(H, W) >= 0 -> (3, H, W) in [0, 1] coloured by the ramp, 0 black, vmax (and above) yellow-white."""
    x = (values.float() / max(vmax, 1e-8)).clamp(0, 1) * (len(_RAMP) - 1)
    lo = x.floor().long().clamp(max=len(_RAMP) - 2)
    frac = (x - lo)[..., None]
    rgb = _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac
    return rgb.permute(2, 0, 1)


@dataclass
class VarianceResult:
    """originals (M, 3, S, S) and mean_samples (M, 3, S, S) in [0, 1]; std (M, S, S) in [0, 0.5];
    mean_pixel_std (M,) its spatial mean (the scalar summary, results.json's `mean_pixel_std`); samples
    (M, N, 3, S, S)."""

    names: list[str]
    originals: torch.Tensor
    samples: torch.Tensor
    mean_samples: torch.Tensor
    std: torch.Tensor
    mean_pixel_std: torch.Tensor
    settings: dict = field(default_factory=dict)

    @property
    def mean_std(self) -> torch.Tensor:
        """The earlier name of `mean_pixel_std`, kept for scripts."""
        return self.mean_pixel_std

    def summary(self) -> dict:
        return {
            "mean_pixel_std": {n: number(v) for n, v in zip(self.names, self.mean_pixel_std, strict=True)},
            "heat_map_max": number(self.std.max()),
            "settings": self.settings,
        }


def variance(
    model: RCDM,
    encoder: Encoder,
    images: Sequence[str | Path],
    *,
    num_samples: int = 8,
    sampling: SamplingConfig | None = None,
    progress: bool = False,
) -> VarianceResult:
    """N samples per image and their per-pixel standard deviation."""
    cfg = resolve_sampling(model, sampling)
    vis = visualize(
        model, encoder, image_paths(images), num_samples=num_samples, sampling=cfg, progress=progress
    )
    samples = vis.samples
    std = pixel_std(samples)
    return VarianceResult(
        names=vis.names,
        originals=vis.originals,
        samples=samples,
        mean_samples=samples.mean(1),
        std=std,
        mean_pixel_std=std.mean(dim=(-2, -1)),
        settings=dict(num_samples=num_samples, **cfg.record()),
    )


def variance_figure(res: VarianceResult, max_samples: int = 4) -> Image.Image:
    """Per image: original, mean sample, std heat map (one colour scale for all rows), a few samples."""
    vmax = float(res.std.max())
    shown = min(max_samples, res.samples.shape[1])
    rows = [
        [res.originals[i], res.mean_samples[i], heat_map(res.std[i], vmax), *res.samples[i, :shown]]
        for i in range(len(res.names))
    ]
    labels = [f"{n} std={float(v):.3f}" for n, v in zip(res.names, res.mean_pixel_std, strict=True)]
    cols = ["original", "mean", "pixel std", *[f"sample {j}" for j in range(shown)]]
    return grid(rows, row_labels=labels, col_labels=cols, title=f"per-pixel std (heat map 0..{vmax:.3f})")
