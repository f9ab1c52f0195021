"""Interpolation between two images' representations with the same noise and a deterministic sampler,
so each row changes only with the representation (the paper's finding 4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from PIL import Image

from ..data import load_views
from ..diffusion import SamplingConfig, resolve_sampling, sample_many
from ..encoders import Encoder
from ..errors import RCDMError
from ..figures import grid, number
from ..model import RCDM
from ._common import image_paths

Method = Literal["linear", "spherical"]
METHODS: tuple[str, ...] = ("linear", "spherical")


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """a, b (dim,); t (T,) -> (T, dim): (1 - t) a + t b."""
    return torch.lerp(a[None].float(), b[None].float(), t.float()[:, None])


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """a, b (dim,); t (T,) -> (T, dim): the great-circle path between the directions of a and b, with the norm
    interpolated linearly, so every point has norm (1 - t)|a| + t|b| (constant when |a| = |b|)."""
    na, nb = a.float().norm(), b.float().norm()
    ua, ub = F.normalize(a.float(), dim=0), F.normalize(b.float(), dim=0)
    omega = torch.arccos((ua * ub).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    t = t.float()[:, None]
    if float(omega) < 1e-4:  # (nearly) parallel: the chord is the arc
        direction = F.normalize(torch.lerp(ua[None], ub[None], t), dim=-1)
    else:
        direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / torch.sin(omega)
    return direction * torch.lerp(na, nb, t)


@dataclass
class InterpolationResult:
    """endpoints (2, 3, S, S) in [0, 1]; ts (T,); representations (methods, T, dim);
    samples (methods, T, N, 3, S, S) in [0, 1]: samples[k, :, j] share the starting noise of column j."""

    names: list[str]
    methods: list[str]
    ts: torch.Tensor
    endpoints: torch.Tensor
    representations: torch.Tensor
    samples: torch.Tensor
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        # How much consecutive frames change (mean absolute pixel difference), per method.
        diffs = (self.samples[:, 1:] - self.samples[:, :-1]).abs().mean(dim=(2, 3, 4, 5))
        return {
            "images": self.names,
            "t": [number(t) for t in self.ts],
            "methods": {
                m: {
                    "representation_norm": [number(v) for v in self.representations[k].norm(dim=-1)],
                    "frame_change": [number(v) for v in diffs[k]],
                }
                for k, m in enumerate(self.methods)
            },
            "settings": self.settings,
        }


# Points along one path at most: a figure shows a few dozen; a huge count would fill the memory before the first
# sample.
MAX_POINTS = 1000


def check_num_steps(num_steps: int, what: str = "num_steps") -> int:
    if not 2 <= num_steps <= MAX_POINTS:
        raise RCDMError(f"{what} {num_steps} is out of range: use 2 (t = 0 and t = 1) to {MAX_POINTS} points")
    return num_steps


def interpolate(
    model: RCDM,
    encoder: Encoder,
    images: Sequence[str | Path],
    *,
    num_steps: int = 7,
    methods: Sequence[Method] = METHODS,
    num_samples: int = 2,
    sampling: SamplingConfig | None = None,
    progress: bool = False,
) -> InterpolationResult:
    """Samples from representations mixed between the first two images, t = 0 ... 1 in `num_steps` steps."""
    cfg = resolve_sampling(model, sampling)
    if cfg.sampler == "ddpm":
        raise RCDMError(
            "interpolation needs a deterministic sampler so rows differ only by t: use dpm++ or ddim"
        )
    check_num_steps(num_steps)
    for m in methods:
        if m not in METHODS:
            raise RCDMError(f"unknown interpolation {m!r}: choose from {', '.join(METHODS)}")
    paths = image_paths(images, 2, "interpolation")[:2]
    originals, enc_views = load_views(
        paths, model.config.sample_size, encoder.preprocessing.input_size, encoder.preprocessing.resample
    )
    a, b = encoder.encode(enc_views)
    ts = torch.linspace(0, 1, num_steps)
    reps = torch.stack([lerp(a, b, ts) if m == "linear" else slerp(a, b, ts) for m in methods])
    samples = sample_many(
        model,
        reps.flatten(0, 1),
        num_samples,
        cfg,
        shared_noise=True,
        progress=progress,
        desc="interpolation",
    )
    return InterpolationResult(
        names=[Path(p).stem for p in paths],
        methods=list(methods),
        ts=ts,
        endpoints=originals,
        representations=reps,
        samples=samples.view(len(methods), num_steps, *samples.shape[1:]),
        settings=dict(num_samples=num_samples, **cfg.record()),
    )


def interpolation_figure(res: InterpolationResult) -> Image.Image:
    """Rows: (method, noise j); columns: the first image, t = 0 ... 1, the second image."""
    rows, labels = [], []
    for k, m in enumerate(res.methods):
        for j in range(res.samples.shape[2]):
            rows.append([res.endpoints[0], *res.samples[k, :, j], res.endpoints[1]])
            labels.append(f"{m} noise {j}")
    cols = [res.names[0]] + [f"t={float(t):.2f}" for t in res.ts] + [res.names[1]]
    return grid(
        rows, row_labels=labels, col_labels=cols, title=f"interpolation {res.names[0]} -> {res.names[1]}"
    )
