"""rcdm demo: the offline smoke-scale demo (train on bundled images, sample, write index.html)."""

from __future__ import annotations

import argparse

from ..demo import DEMO_ENCODER, run_demo


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="offline demo: a smoke-scale model on bundled images -> OUT/index.html")
    p.add_argument("--out", default="demo-out")
    p.add_argument(
        "--encoder", default=DEMO_ENCODER, help=f"encoder spec (default {DEMO_ENCODER}: no weights)"
    )
    p.add_argument("--steps", type=int, default=800, help="training steps of the smoke-scale model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = run_demo(args.out, encoder=args.encoder, steps=args.steps)
    print(
        f"trained in {result.train_seconds:.0f} s, sampled in {result.sample_seconds:.0f} s; "
        f"rank-1 retrieval {result.rank1:.2f} (chance 0.10); open {result.index}"
    )
    return 0
