"""What the noise keeps: how much of an image its representation alone explains.

Each image is drawn twice over from its own representation with DDIM at one guidance (1 by default): once from
its inverted noise (the reconstruction: representation and noise together) and N times from fresh noise (the
representation alone; rcdm's ddim sampler, whose x0 clipping keeps a sample from fresh noise in range, where
the inversion's round trip must run unclipped to be exact). Their pixel distances to the original, beside the distance to the other
images of the set (nothing known), place the representation between the two ends:

    share = (d_other - d_fresh) / (d_other - d_reconstruction)

1 when fresh samples come as close as the reconstruction (the noise keeps nothing), 0 when they are no closer than
another image (the representation keeps nothing the pixels show); NaN where the reconstruction itself is no
closer than another image (a failed round trip: too few steps). Pixel distance is the measure because the
noise keeps layout; a representation that keeps the class but not the layout scores low here and high in
`rcdm evaluate`'s class agreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from ..diffusion import SamplingConfig, sample_many
from ..encoders import Encoder
from ..errors import RCDMError
from ..figures import grid, number
from ..inversion import INVERT_DEFAULTS, invert
from ..model import RCDM
from ._common import image_paths


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root-mean-square pixel distance of images (..., 3, H, W) in [0, 1], over the last three dimensions."""
    return (a.float() - b.float()).pow(2).mean(dim=(-3, -2, -1)).sqrt()


@dataclass
class NoiseKeepsResult:
    """originals, reconstructions (M, 3, H, W) and fresh (M, N, 3, H, W) in [0, 1]; distances (M,) to the
    original: d_reconstruction, d_fresh (mean over the N), d_other (mean over the other M-1 originals);
    share (M,) as in the module's docstring."""

    names: list[str]
    originals: torch.Tensor
    reconstructions: torch.Tensor
    fresh: torch.Tensor
    d_reconstruction: torch.Tensor
    d_fresh: torch.Tensor
    d_other: torch.Tensor
    share: torch.Tensor
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        per_image = {
            n: {
                "d_reconstruction": number(self.d_reconstruction[i]),
                "d_fresh": number(self.d_fresh[i]),
                "d_other": number(self.d_other[i]),
                "share": number(self.share[i]),
            }
            for i, n in enumerate(self.names)
        }
        return {
            "mean_share": number(self.share.nanmean()),
            "mean_d_reconstruction": number(self.d_reconstruction.mean()),
            "mean_d_fresh": number(self.d_fresh.mean()),
            "mean_d_other": number(self.d_other.mean()),
            "images": per_image,
            "settings": self.settings,
        }


def noise_keeps(
    model: RCDM,
    encoder: Encoder,
    images: Sequence[str | Path],
    *,
    num_samples: int = 4,
    sampling: SamplingConfig | None = None,
    progress: bool = False,
) -> NoiseKeepsResult:
    """Invert each image, draw `num_samples` more from fresh noise by the same ODE, and measure both against the
    original. sampling: steps, guidance, seed, precision, batch_size (default `INVERT_DEFAULTS`)."""
    paths = image_paths(images, minimum=2, what="the noise analysis (its baseline is the other images)")
    if num_samples < 1:
        raise RCDMError(f"--num-samples {num_samples} must be at least 1")
    cfg = replace(sampling or INVERT_DEFAULTS, sampler="ddim")
    inv = invert(model, encoder, paths, cfg, progress=progress)
    m = len(paths)
    fresh = sample_many(model, inv.representations, num_samples, cfg)
    d_rec = rms_distance(inv.reconstructions, inv.originals)
    d_fresh = rms_distance(fresh, inv.originals[:, None]).mean(1)
    pair = rms_distance(inv.originals[:, None], inv.originals[None])
    d_other = pair.sum(1) / (m - 1)
    span = d_other - d_rec  # <= 0: the round trip failed (too few steps), and no share can be read
    share = torch.where(
        span > 0, (d_other - d_fresh) / span.clamp_min(1e-8), torch.full_like(span, float("nan"))
    )
    return NoiseKeepsResult(
        inv.names,
        inv.originals,
        inv.reconstructions,
        fresh,
        d_rec,
        d_fresh,
        d_other,
        share,
        settings=dict(
            num_samples=num_samples, **{k: cfg.record()[k] for k in ("sampler", "steps", "guidance", "seed")}
        ),
    )


def noise_figure(res: NoiseKeepsResult, max_samples: int = 4, title: str | None = None) -> Image.Image:
    """Per image: the original, its reconstruction (inverted noise), then fresh-noise samples; each row labelled
    with its distances and share."""
    shown = min(max_samples, res.fresh.shape[1])
    rows = [[res.originals[i], res.reconstructions[i], *res.fresh[i, :shown]] for i in range(len(res.names))]
    labels = [
        f"{n} rec {float(res.d_reconstruction[i]):.3f} fresh {float(res.d_fresh[i]):.3f} "
        f"share {float(res.share[i]):.2f}"
        for i, n in enumerate(res.names)
    ]
    cols = ["original", "inverted noise", *[f"fresh {j}" for j in range(shown)]]
    title = (
        title
        or f"what the noise keeps: mean share {float(res.share.nanmean()):.2f} (1 = the noise keeps nothing)"
    )
    return grid(rows, row_labels=labels, col_labels=cols, title=title)
