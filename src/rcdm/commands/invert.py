"""rcdm invert: the noise from which the model redraws each image under its own representation."""

from __future__ import annotations

import argparse
import json
import logging

from ..checks import check_guidance
from ..data import expand_image_args
from ..errors import RCDMError
from ..files import output_folder
from ..inversion import INVERT_DEFAULTS, invert, save_inversion
from .common import (
    add_command,
    add_folder_output_args,
    add_model_args,
    load_model_and_encoder,
    positive,
)

log = logging.getLogger(__name__)

EPILOG = """examples:
  rcdm invert --model cifar10-vicreg-backbone --images photos/ --out inverted/
  rcdm invert --model runs/r20 --images a.jpg b.jpg --representation-from cat.jpg --out swap/

Writes OUT/<stem>/noise.safetensors, OUT/<stem>/reconstruction.png, OUT/figure.png and OUT/results.json (PSNR of
each reconstruction, and their mean). Inversion is deterministic DDIM (diffusers' DDIMInverseScheduler) at
guidance 1 unless --guidance says otherwise: the model's default sampling guidance is for drawing samples.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "invert", "find the noise that redraws each image under its own representation", EPILOG
    )
    add_model_args(p)
    p.add_argument("--images", nargs="+", required=True, help="image files or folders")
    p.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    p.add_argument(
        "--representation-from",
        default=None,
        metavar="IMAGE",
        help="also decode each image's noise under IMAGE's representation (OUT/<stem>/with-<IMAGE stem>.png; "
        "default: none)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=INVERT_DEFAULTS.steps,
        help=f"DDIM steps (default {INVERT_DEFAULTS.steps})",
    )
    p.add_argument(
        "--guidance", type=float, default=1.0, help="guidance weight of the round trip (default 1)"
    )
    p.add_argument(
        "--batch-size", type=int, default=INVERT_DEFAULTS.batch_size, help="images per network call"
    )
    add_folder_output_args(p, "rcdm invert")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sampling = INVERT_DEFAULTS.replace(
        steps=positive("--steps", args.steps),
        guidance=check_guidance(args.guidance),
        batch_size=positive("--batch-size", args.batch_size),
        precision=args.precision,
    )
    if sampling.steps > 1000:
        raise RCDMError(f"--steps {sampling.steps} is out of range: use 1..1000")
    paths = expand_image_args(args.images)
    other = expand_image_args([args.representation_from]) if args.representation_from else None
    if other is not None and len(other) != 1:
        raise RCDMError(
            f"--representation-from takes one image, not {args.representation_from!r} ({len(other)})"
        )
    with output_folder(
        args.out, overwrite=args.overwrite, marker="results.json", command="rcdm invert"
    ) as out:
        model, encoder = load_model_and_encoder(args)
        redraw = encoder.encode_files(other) if other is not None else None
        inv = invert(model, encoder, paths, sampling, progress=not args.no_progress, redraw=redraw)
        swap = (other[0].stem, inv.redrawn) if other is not None else None
        caption = (
            f"{args.model} ({encoder.spec}, {encoder.feature}); DDIM inversion, {inv.sampling.steps} steps, "
            f"guidance {inv.sampling.guidance:g}"
        )
        record = save_inversion(inv, out, swap, caption)
        results = {
            "model": args.model,
            "sampling": {k: inv.sampling.record()[k] for k in ("sampler", "steps", "guidance", "precision")},
            "representation_from": str(other[0]) if other else None,
            **record,
        }
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print(
        f"inverted {len(paths)} image(s): mean reconstruction PSNR {inv.mean_psnr:.2f} dB "
        f"({sampling.steps} DDIM steps, guidance {sampling.guidance:g}); wrote {args.out}"
    )
    return 0
