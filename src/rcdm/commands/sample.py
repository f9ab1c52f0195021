"""rcdm sample: N images from the representation of each input image, as PNGs and one grid per image."""

from __future__ import annotations

import argparse
import json

from ..data import expand_image_args
from ..diffusion import resolve_sampling
from ..files import output_folder
from ..visualize import save_visualization, visualize
from .common import (
    add_command,
    add_model_args,
    add_overwrite_arg,
    add_sampling_args,
    load_model_and_encoder,
    sampling_from_args,
)

EPILOG = """examples:
  rcdm sample --model runs/r20 --images photos/ --num-samples 8 --out samples/
  rcdm sample --model official:dino-backbone --images my.jpg --sampling published --out figure1/
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "sample", "draw samples from the representation of each image", EPILOG)
    add_model_args(p)
    p.add_argument("--images", nargs="+", required=True, help="image files or folders")
    add_sampling_args(p)
    p.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    add_overwrite_arg(p, "an earlier `rcdm sample` output in --out (never a folder of other files)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sampling = sampling_from_args(args)
    paths = expand_image_args(args.images)
    # checked and locked before any work; written beside --out and moved into place when complete
    with output_folder(
        args.out, overwrite=args.overwrite, marker="sample.json", command="rcdm sample"
    ) as out:
        model, encoder = load_model_and_encoder(args)
        sampling = resolve_sampling(model, sampling)  # the model's default where the flags leave it open
        vis = visualize(
            model,
            encoder,
            paths,
            num_samples=args.num_samples,
            sampling=sampling,
            progress=not args.no_progress,
        )
        caption = f"{args.model} ({encoder.spec}, {encoder.feature}); {sampling.describe()}"
        grids = save_visualization(vis, out, caption)
        settings = {"model": args.model, "num_samples": args.num_samples, **sampling.record()}
        (out / "sample.json").write_text(
            json.dumps({**settings, "images": [str(p) for p in paths]}, indent=2)
        )
    print(
        f"wrote {len(grids)} grid(s) and {vis.samples.shape[0] * vis.samples.shape[1]} samples to {args.out}"
    )
    return 0
