"""rcdm demo: the offline demo -> OUT/index.html.

With a CIFAR-10 pack (installed at rcdm/assets/models, or --bundle DIR): samples, invariance, interpolation and
the adversarial comparison of the bundled models. Without one: the smoke-scale demo (a tiny model trained here).
"""

from __future__ import annotations

import argparse

from ..bundle import bundled_pack
from ..checks import check_guidance
from ..demo import DEMO_ENCODER, PACK_DEMO_PRESETS, run_demo, run_pack_demo
from ..devices import default_device
from ..errors import RCDMError
from .common import add_command, add_progress_arg

EPILOG = """examples:
  rcdm demo                                   # demo-out/index.html
  rcdm demo --bundle packs/cifar10 --preset quick --out demo-quick
  rcdm demo --smoke-scale --steps 200         # the tiny model trained here, even with a pack installed
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "demo",
        "offline demo -> OUT/index.html: the bundled CIFAR-10 pack, or a smoke-scale model when none is",
        EPILOG,
    )
    p.add_argument("--out", default="demo-out", help="output folder")
    p.add_argument(
        "--bundle",
        default=None,
        metavar="DIR",
        help="a bundle folder from `rcdm recipe pack` (default: rcdm/assets/models when installed)",
    )
    p.add_argument(
        "--preset",
        choices=tuple(PACK_DEMO_PRESETS),
        default="cpu",
        help="pack demo: what to sample (cpu: under 2 minutes on 2 cores; quick: a first look)",
    )
    p.add_argument("--device", default=None, help="pack demo: cuda or cpu (default: cuda when available)")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="pack demo: classifier-free guidance weight (default: the bundle's, 1 = none)",
    )
    p.add_argument(
        "--smoke-scale",
        action="store_true",
        help="train and show the smoke-scale model even when a pack is installed",
    )
    p.add_argument(
        "--encoder",
        default=None,
        help=f"smoke-scale demo: encoder spec (default {DEMO_ENCODER}: no weights)",
    )
    p.add_argument("--steps", type=int, default=None, help="smoke-scale demo: training steps (default 800)")
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.bundle is not None and args.smoke_scale:
        raise RCDMError("--bundle and --smoke-scale exclude each other: pass one of them")
    bundle = None if args.smoke_scale else (args.bundle or bundled_pack())
    if bundle is None and args.guidance is not None:
        raise RCDMError("--guidance is a pack demo option; the smoke-scale model has no null representation")
    if bundle is None:
        result = run_demo(
            args.out,
            encoder=args.encoder or DEMO_ENCODER,
            steps=800 if args.steps is None else args.steps,
            progress=progress,
        )
        print(
            f"smoke-scale demo (no CIFAR-10 pack bundled): trained in {result.train_seconds:.0f} s, sampled in "
            f"{result.sample_seconds:.0f} s; rank-1 retrieval {result.rank1:.2f} (chance 0.10); open {result.index}"
        )
        return 0
    if args.guidance is not None:
        check_guidance(args.guidance)
    if args.encoder is not None or args.steps is not None:
        raise RCDMError(
            "--encoder and --steps set the smoke-scale demo's training; the pack demo uses the bundled models "
            "(add --smoke-scale to train one)"
        )
    res = run_pack_demo(
        bundle,
        args.out,
        settings=PACK_DEMO_PRESETS[args.preset],
        device=args.device or default_device(),
        progress=progress,
        guidance=args.guidance,
    )
    smoke = " (SMOKE-TEST bundle: not trained models)" if res.smoke else ""
    print(f"pack demo{smoke} in {res.seconds['total']:.0f} s; open {res.index}")
    return 0
