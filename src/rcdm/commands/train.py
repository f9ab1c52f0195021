"""rcdm train: fit an RCDM to an encoder's frozen representations of an image folder."""

from __future__ import annotations

import argparse
import dataclasses

from ..encoders import FEATURES
from ..model import PRESETS
from ..train import TrainConfig, train


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an RCDM on a folder of images")
    p.add_argument("--data", required=True, help="image folder (any nesting; jpg, png, webp)")
    p.add_argument("--encoder", required=True, help="encoder spec")
    p.add_argument("--feature", choices=FEATURES, default=None)
    p.add_argument("--preset", choices=list(PRESETS), default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="global batch size")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--loss", choices=("simple", "hybrid"), default=None)
    p.add_argument(
        "--cond-drop", type=float, default=None, help="condition dropout probability (enables guidance)"
    )
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--mixed-precision",
        choices=("auto", "fp32", "bf16", "no"),
        default=None,
        help="auto: bf16 on CUDA and on CPUs with native bf16 (AMX or AVX512-BF16), fp32 elsewhere; no = fp32",
    )
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile the UNet (docs/speed.md)"
    )
    p.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="standardise representations with the training set's per-dimension mean/std (default: off)",
    )
    p.add_argument("--feature-cache", default=None, help="FILE.safetensors: precompute representations once")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Options default to None; the dataclass defaults fill the rest (edm2 style).
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    cfg = TrainConfig(**given)
    result = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    print(
        f"trained {result.steps} steps; last loss {result.last_loss:.4f}; {result.images_per_second:.1f} img/s; "
        f"model in {result.run_dir / 'model'}"
    )
    return 0
