"""rcdm prior: a small diffusion model of an RCDM encoder's representations (RCG), for rcdm generate."""

from __future__ import annotations

import argparse

from ..prior import PriorConfig, train_prior
from .common import add_command, add_progress_arg

EPILOG = """examples:
  rcdm prior --model cifar10-vicreg-backbone --data ~/data/cifar10/train --out priors/vicreg
  rcdm prior --model cifar10-vicreg-backbone --data ~/data/cifar10/train --out priors/vicreg --resume
  rcdm generate --model cifar10-vicreg-backbone --prior priors/vicreg --num-images 64 --out dreams/
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "prior", "train a diffusion model on the representations of a folder of images", EPILOG
    )
    p.add_argument(
        "--model", required=True, help="the RCDM (folder or name) whose encoder's representations to model"
    )
    p.add_argument("--data", required=True, help="folder of training images (any nesting)")
    p.add_argument(
        "--out", required=True, help="run folder (new or empty; see --resume); the prior lands in OUT/prior"
    )
    d = PriorConfig(model="", data="")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr:g})")
    p.add_argument("--width", type=int, default=d.width, help=f"MLP width (default {d.width})")
    p.add_argument("--depth", type=int, default=d.depth, help=f"residual blocks (default {d.depth})")
    p.add_argument(
        "--save-every", type=int, default=d.save_every, help=f"checkpoint every N steps ({d.save_every})"
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help="seed of the weights and of every batch (default 0)"
    )
    p.add_argument("--cache", default=None, help="representation cache folder (default OUT/cache)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = PriorConfig(
        model=args.model,
        data=args.data,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        width=args.width,
        depth=args.depth,
        save_every=args.save_every,
        seed=args.seed,
        cache=args.cache,
    )
    folder = train_prior(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    print(
        f"wrote the prior to {folder}; draw from it with: rcdm generate --model {args.model} --prior {args.out}"
    )
    return 0
