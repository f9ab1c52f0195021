"""rcdm encode: representations of images, saved as safetensors."""

from __future__ import annotations

import argparse
import json

from safetensors.torch import save_file

from ..data import expand_image_args
from ..devices import default_device
from ..encoders import FEATURES, create_encoder
from ..errors import RCDMError
from ..files import atomic_file, check_writable_file
from ..locks import output_lock
from .common import add_command, add_overwrite_arg, add_progress_arg

EPILOG = """examples:
  rcdm encode --encoder cifar-resnet20:resnet20.th --images data/test --out reps.safetensors
  rcdm encode --encoder official:resnet50.dino_in1k --feature projector --images my.jpg --out dino.safetensors
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "encode", "save the representations of images", EPILOG)
    p.add_argument("--encoder", required=True, help="encoder spec, e.g. cifar-resnet20:PATH or timm:NAME")
    p.add_argument("--feature", choices=FEATURES, default="backbone", help="representation level")
    p.add_argument("--images", nargs="+", required=True, help="image files or folders")
    p.add_argument("--out", required=True, help="FILE.safetensors")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    add_overwrite_arg(p, "an existing --out file")
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.out.endswith(".safetensors"):
        raise RCDMError(f"--out {args.out!r} must end with .safetensors")
    out = check_writable_file(args.out)  # before any work
    if out.exists() and not args.overwrite:
        raise RCDMError(f"--out {args.out!r} exists: pass --overwrite to replace it, or another --out")
    paths = expand_image_args(args.images)
    with output_lock(out, command="rcdm encode"):
        encoder = create_encoder(args.encoder, args.feature).to(args.device or default_device())
        reps = encoder.encode_files(paths, progress=not args.no_progress)
        meta = {
            **{k: str(v) for k, v in encoder.describe().items()},
            "files": json.dumps([str(p) for p in paths]),
        }
        meta["preprocessing"] = json.dumps(encoder.preprocessing.to_dict())
        with atomic_file(out) as tmp:
            save_file({"representations": reps.contiguous()}, str(tmp), metadata=meta)
    print(f"wrote {tuple(reps.shape)} representations to {args.out}")
    return 0
