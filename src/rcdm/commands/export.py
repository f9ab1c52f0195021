"""rcdm export: any rcdm model (run folder, saved folder, hub repo, official:NAME) -> a plain diffusers UNet2DModel
folder plus its representation projection."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import export_diffusers
from ..files import output_folder
from ..loading import load_model
from .common import add_command, add_overwrite_arg

EPILOG = """examples:
  rcdm export runs/r20 --out r20-diffusers            # r20-diffusers/unet + r20-diffusers/rep_proj.safetensors
  rcdm export official:dino-backbone --out dino-diffusers
then, in plain diffusers (docs/official.md, "Export: plain diffusers"):
  unet = UNet2DModel.from_pretrained("r20-diffusers/unet"); proj = load_file("r20-diffusers/rep_proj.safetensors")
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "export", "write a model as a plain diffusers UNet2DModel folder + its projection", EPILOG
    )
    p.add_argument(
        "model", help="run folder, saved model folder, hub repo user/repo[@revision], or official:NAME"
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder (new or empty; see --overwrite): OUT/unet, OUT/rep_proj.safetensors",
    )
    add_overwrite_arg(p, "an earlier `rcdm export` output in --out (never a folder of other files)")
    p.add_argument(
        "--weights",
        default=None,
        help="local checkpoint file for a named model (official:...); default: downloaded once",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # checked and locked before any work; written beside --out and moved into place when complete
    with output_folder(
        args.out, overwrite=args.overwrite, marker="rep_proj.safetensors", command="rcdm export"
    ) as tmp:
        model = load_model(args.model, weights=args.weights)
        export_diffusers(model, tmp, source=str(args.model), name=Path(args.out).name)
    out = args.out
    heads = model.config.attention_num_heads or 1
    print(
        f"wrote {Path(out) / 'unet'} (UNet2DModel.from_pretrained; set heads={heads} on every Attention), "
        f"{Path(out) / 'rep_proj.safetensors'}, {Path(out) / 'scheduler'} and {Path(out) / 'README.md'} (a loop "
        "that draws what rcdm sample draws)"
    )
    return 0
