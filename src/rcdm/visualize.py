"""Image -> representation -> many samples: the core RCDM visualisation (the paper's Figure 1) as a Python API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import load_views
from .diffusion import SamplingConfig, sample_many
from .encoders import Encoder
from .errors import RCDMError
from .figures import sample_grid, save_png, with_caption
from .model import RCDM


@dataclass
class Visualization:
    """originals (M, 3, H, W) and samples (M, N, 3, H, W) in [0, 1]; representations (M, dim)."""

    names: list[str]
    originals: torch.Tensor
    representations: torch.Tensor
    samples: torch.Tensor


def visualize(
    model: RCDM,
    encoder: Encoder,
    images: Sequence[str | Path],
    *,
    num_samples: int = 8,
    sampling: SamplingConfig | None = None,
    progress: bool = False,
) -> Visualization:
    """Draw `num_samples` images from the representation of each file in `images`.

    Each file is encoded once; its representation is repeated for its samples. sampling: see
    `rcdm.diffusion.SamplingConfig` (default: dpm++ 20 steps, the fast path on CUDA, eager on the CPU).
    """
    originals, enc_views = load_views(
        images, model.config.sample_size, encoder.preprocessing.input_size, encoder.preprocessing.resample
    )
    reps = encoder.encode(enc_views)
    bad = [str(p) for p, ok in zip(images, torch.isfinite(reps).all(1).tolist(), strict=True) if not ok]
    if bad:
        raise RCDMError(
            f"encoder {encoder.spec!r} gave non-finite representations (NaN or inf) for {len(bad)} image(s), "
            f"first {bad[0]!r}: check the encoder's weights"
        )
    samples = sample_many(model, reps, num_samples, sampling, progress=progress)
    return Visualization([Path(p).stem for p in images], originals, reps, samples)


def unique_names(names: Sequence[str]) -> list[str]:
    """Stems made unique (a.jpg, a.png -> a, a-2) so outputs never overwrite each other."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def save_visualization(vis: Visualization, out_dir: str | Path, caption: str | None = None) -> list[Path]:
    """Write OUT/<stem>/sample_000.png ... and the grid OUT/<stem>.png (original first, `caption` below it: the
    model and the sampling). Returns the grids."""
    out_dir = Path(out_dir)
    grids = []
    for name, original, samples in zip(unique_names(vis.names), vis.originals, vis.samples, strict=True):
        for j, s in enumerate(samples):
            save_png(s, out_dir / name / f"sample_{j:03d}.png")
        path = out_dir / f"{name}.png"
        figure = sample_grid(original, samples, title=name)
        (with_caption(figure, caption) if caption else figure).save(path)
        grids.append(path)
    return grids
