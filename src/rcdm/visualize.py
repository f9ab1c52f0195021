"""Image -> representation -> many samples: the core RCDM visualisation as a Python API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import Resample, image_tensor, load_image, published_center_crop, resize
from .diffusion import Compile, Precision, Sampler, autocast_for, batched, sample_many
from .encoders import Encoder
from .figures import sample_grid, save_png
from .model import RCDM


@torch.no_grad()
def encode(encoder: Encoder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """images (N, 3, H, W) in [0, 1] -> representations (N, dim) float32 on CPU (bf16 autocast on GPU)."""
    device = encoder.device
    out = []
    for s, e in batched(images.shape[0], batch_size):
        x = images[s:e].to(device)
        with autocast_for(device):
            out.append(encoder(x).float().cpu())
    return torch.cat(out)


def load_views(
    paths: Sequence[str | Path], image_size: int, encoder_size: int, resample: Resample = "antialias"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Files -> (diffusion views (N, 3, image_size, image_size), encoder views (N, 3, encoder_size, ...)) in [0, 1].

    Both come from the same centre square crop of each file (the published protocol); `resample="published"`
    resizes as the published code did (see data.published_center_crop).
    """
    if resample == "published":  # each file decoded once, cut at both sizes
        files = [load_image(p) for p in paths]
        return (
            torch.stack([published_center_crop(im, image_size) for im in files]),
            torch.stack([published_center_crop(im, encoder_size) for im in files]),
        )
    squares = [image_tensor(p) for p in paths]
    return (
        torch.stack([resize(x, image_size) for x in squares]),
        torch.stack([resize(x, encoder_size) for x in squares]),
    )


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
    steps: int | None = None,
    sampler: Sampler = "dpm++",
    seed: int = 0,
    guidance: float = 1.0,
    batch_size: int = 64,
    compile: Compile = "auto",
    precision: Precision = "auto",
    progress: bool = False,
) -> Visualization:
    """Draw `num_samples` images from the representation of each file in `images`.

    Each file is encoded once; its representation is repeated for its samples. compile / precision: see
    `rcdm.diffusion.sample` (default: the fast path on CUDA, eager fp32 on the CPU).
    """
    originals, enc_views = load_views(
        images, model.config.sample_size, encoder.preprocessing.input_size, encoder.preprocessing.resample
    )
    reps = encode(encoder, enc_views)
    samples = sample_many(
        model,
        reps,
        num_samples,
        batch_size=batch_size,
        seed=seed,
        steps=steps,
        sampler=sampler,
        guidance=guidance,
        compile=compile,
        precision=precision,
        progress=progress,
    )
    return Visualization([Path(p).stem for p in images], originals, reps, samples)


def unique_names(names: Sequence[str]) -> list[str]:
    """Stems made unique (a.jpg, a.png -> a, a-2) so outputs never overwrite each other."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def save_visualization(vis: Visualization, out_dir: str | Path) -> list[Path]:
    """Write OUT/<stem>/sample_000.png ... and the grid OUT/<stem>.png (original first). Returns the grids."""
    out_dir = Path(out_dir)
    grids = []
    for name, original, samples in zip(unique_names(vis.names), vis.originals, vis.samples, strict=True):
        for j, s in enumerate(samples):
            save_png(s, out_dir / name / f"sample_{j:03d}.png")
        path = out_dir / f"{name}.png"
        sample_grid(original, samples, title=name).save(path)
        grids.append(path)
    return grids
