"""The offline demo: a smoke-scale RCDM trained on the bundled CIFAR-10 images, then sampled.

This is a demonstration of the pipeline, not a real model: ~1 minute of CPU training on ten 32x32 images.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .data import list_images
from .figures import grid, html_page
from .loading import encoder_for, load_model
from .train import TrainConfig, train
from .visualize import save_visualization, visualize

DEMO_ENCODER = "pixels:4"  # weight-free: the image average-pooled to 4x4 (48-d); works offline everywhere


def demo_images() -> Path:
    """The folder of bundled demo inputs (10 CIFAR-10 test images, see its README.md)."""
    return Path(str(resources.files("rcdm") / "assets" / "demo-images"))


@dataclass
class DemoResult:
    index: Path
    train_seconds: float
    sample_seconds: float
    rank1: float


def run_demo(
    out_dir: str | Path,
    *,
    encoder: str = DEMO_ENCODER,
    steps: int = 800,
    image_size: int = 16,
    num_samples: int = 6,
    progress: bool = True,
) -> DemoResult:
    """Train the smoke-scale model into OUT/run, sample every bundled image, write OUT/index.html."""
    import torch

    from .visualize import encode

    out = Path(out_dir)
    images = list_images(demo_images())
    cfg = TrainConfig(
        data=str(demo_images()),
        encoder=encoder,
        preset="tiny",
        image_size=image_size,
        steps=steps,
        batch_size=16,
        lr=3e-3,
        ema_decay=0.98,
        save_every=steps,
        num_workers=0,
        min_scale=1.0,
    )
    run = out / "run"
    t0 = time.perf_counter()
    if not (run / "model" / "config.json").is_file():
        train(cfg, run, resume=True, progress=progress)
    t1 = time.perf_counter()
    model = load_model(run)
    enc = encoder_for(model)
    vis = visualize(
        model, enc, images, num_samples=num_samples, sampler="ddpm", steps=50, seed=0, progress=progress
    )
    t2 = time.perf_counter()
    save_visualization(vis, out / "samples")
    # Faithfulness: is each sample's own representation nearest to its source image's?
    reps = vis.representations
    sample_reps = encode(enc, vis.samples.flatten(0, 1))
    nearest = torch.cdist(sample_reps, reps).argmin(1)
    source = torch.arange(len(images)).repeat_interleave(num_samples)
    rank1 = float((nearest == source).float().mean())
    overview = grid(
        [[o, *s] for o, s in zip(vis.originals, vis.samples, strict=True)],
        row_labels=vis.names,
        col_labels=["original"] + [f"sample {i}" for i in range(num_samples)],
        title=f"smoke-scale RCDM on {encoder}: samples of each image's representation",
        cell=64,
    )
    overview.save(out / "overview.png")
    numbers = {
        "encoder": encoder,
        "train_steps": steps,
        "train_seconds": round(t1 - t0, 1),
        "sample_seconds": round(t2 - t1, 1),
        "num_images": len(images),
        "samples_per_image": num_samples,
        "rank1_retrieval": rank1,
        "chance": 1 / len(images),
    }
    (out / "results.json").write_text(json.dumps(numbers, indent=2))
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in numbers.items()
    )
    page = html_page(
        "rcdm demo (smoke scale)",
        [
            (
                "What this is",
                "<p>A <b>smoke-scale</b> representation-conditional diffusion model (preset <code>tiny</code>), "
                f"trained for {steps} steps on the {len(images)} bundled CIFAR-10 test images, conditioned on the "
                f"<code>{html.escape(encoder)}</code> representation. Each row: an image, then samples drawn from "
                "its representation alone. What stays constant across a row is what the representation keeps. "
                "It shows the pipeline working offline; it is not a trained research model.</p>",
            ),
            ("Samples", '<img src="overview.png" alt="originals and samples">'),
            (
                "Numbers",
                f"<table>{rows}</table><p>rank1_retrieval: the fraction of samples whose own representation "
                "is nearest to their source image's among the ten (chance 0.1).</p>",
            ),
        ],
    )
    index = out / "index.html"
    index.write_text(page)
    return DemoResult(index, t1 - t0, t2 - t1, rank1)
