"""rcdm sample: N images from the representation of each input image, as PNGs and one grid per image."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data import expand_image_args
from ..loading import default_device, encoder_for, load_model
from ..visualize import save_visualization, visualize
from .common import add_model_args, add_sampling_args, add_speed_args, positive


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw samples from the representation of each image")
    add_model_args(p)
    p.add_argument("--images", nargs="+", required=True, help="image files or folders")
    add_sampling_args(p)
    add_speed_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    positive("--num-samples", args.num_samples)
    paths = expand_image_args(args.images)
    device = args.device or default_device()
    model = load_model(args.model, weights=args.weights, device=device)
    encoder = encoder_for(model, args.encoder, args.feature).to(device)
    vis = visualize(
        model,
        encoder,
        paths,
        num_samples=args.num_samples,
        steps=args.steps,
        sampler=args.sampler,
        seed=args.seed,
        guidance=args.guidance,
        batch_size=args.batch_size,
        compile=args.compile,
        precision=args.precision,
        progress=True,
    )
    grids = save_visualization(vis, args.out)
    settings = {
        k: getattr(args, k)
        for k in ("model", "num_samples", "steps", "sampler", "seed", "guidance", "compile", "precision")
    }
    (Path(args.out) / "sample.json").write_text(
        json.dumps({**settings, "images": [str(p) for p in paths]}, indent=2)
    )
    print(
        f"wrote {len(grids)} grid(s) and {vis.samples.shape[0] * vis.samples.shape[1]} samples to {args.out}"
    )
    return 0
