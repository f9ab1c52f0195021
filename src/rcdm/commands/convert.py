"""rcdm convert: a published RCDM checkpoint (.pt / .safetensors) -> an rcdm model folder (+ a diffusers export)."""

from __future__ import annotations

import argparse
import logging

from ..convert import convert
from ..encoders import FEATURES
from ..export import export_diffusers
from ..files import output_folder
from ..loading import MODELS, encoder_description, published_name_for
from .common import add_command, add_overwrite_arg

log = logging.getLogger(__name__)

EPILOG = """examples:
  rcdm convert rcdm_ema_dino_trunk.pt --out models/dino-backbone   # + models/dino-backbone/unet (plain diffusers)
  rcdm convert my.pt --out models/mine --encoder official:resnet50.simclr_in1k --feature projector --no-diffusers
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "convert", "convert a published RCDM checkpoint into an rcdm model folder", EPILOG)
    p.add_argument("checkpoint", help="published checkpoint, e.g. rcdm_ema_dino_trunk.pt (or .safetensors)")
    p.add_argument("--out", required=True, help="output folder (RCDM.from_pretrained reads it)")
    p.add_argument("--image-size", type=int, default=128, help="training resolution (published: 128)")
    p.add_argument(
        "--num-heads", type=int, default=4, help="attention heads of C/heads channels (published: 4)"
    )
    p.add_argument(
        "--encoder",
        default=None,
        help="encoder spec to record (default: inferred from a published file name, e.g. official:resnet50.dino_in1k)",
    )
    p.add_argument(
        "--feature",
        choices=FEATURES,
        default=None,
        help="representation level (default: inferred with --encoder)",
    )
    p.add_argument(
        "--diffusers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write OUT/unet (UNet2DModel.from_pretrained) and OUT/rep_proj.safetensors",
    )
    add_overwrite_arg(p, "an earlier model folder at --out (one with config.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    encoder = None
    name = published_name_for(args.checkpoint)
    if args.encoder:
        encoder = encoder_description(args.encoder, args.feature or "backbone")
    elif name is not None:
        published = MODELS[name]
        encoder = encoder_description(f"official:{published.encoder}", args.feature or published.feature)
    # --out is checked and locked before the conversion; written beside it and moved into place when complete
    with output_folder(
        args.out, overwrite=args.overwrite, marker="config.json", command="rcdm convert"
    ) as out:
        model = convert(
            args.checkpoint, image_size=args.image_size, num_heads=args.num_heads, encoder=encoder
        )
        model.save_pretrained(out)
        if args.diffusers:
            export_diffusers(model, out)
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    where = (
        f"encoder {cfg.encoder} ({cfg.feature})" if cfg.encoder else "no encoder recorded (pass --encoder)"
    )
    print(
        f"converted {args.checkpoint}: {n:,} parameters, {cfg.representation_dim}-d input, {where} -> {args.out}"
    )
    return 0
