"""rcdm recipe eval-images|evaluate|samplers|findings|metrics: the pack's measuring stages (rcdm.pack.stages,
rcdm.pack.gates), which scripts/cpu_pack.sh launches. See docs/recipes.md, "The CPU pack"."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from ..bundle import bundled_pack
from ..checks import check_guidance
from ..devices import default_device
from ..diffusion import SAMPLING_PRESETS
from ..encoders import create_encoder
from ..errors import RCDMError
from ..files import write_text_atomic
from ..pack.cifar10 import cifar10_root, copy_test_images
from ..pack.evaluation import evaluation_images
from ..pack.gates import gate_metrics, markdown, parse_steps
from ..pack.rcdms import TARGETS
from ..pack.stages import Evaluation, evaluate_runs, findings, parse_setting, score_samplers
from .common import add_progress_arg, positive

JUDGE_EXAMPLE = "cifar-resnet56:resnet56-4bfd9763.th"
EPILOGS = {
    "eval-images": """examples:
  rcdm recipe eval-images --data cifar10-jpeg.tar.gz --out eval-images --num-images 1000
""",
    "evaluate": f"""examples (docs/recipes.md, "The CPU pack"):
  rcdm recipe evaluate --runs ~/rcdm-work/runs --data cifar10-jpeg.tar.gz --judge {JUDGE_EXAMPLE} \\
      --metrics ~/rcdm-work/metrics --step 11000 --step rcdm-cifar10-supervised=7000
""",
    "samplers": f"""examples:
  rcdm recipe samplers --runs ~/rcdm-work/runs --data cifar10-jpeg.tar.gz --judge {JUDGE_EXAMPLE} \\
      --metrics ~/rcdm-work/metrics --settings fast:1 paired:1 fast:3 fast:5
""",
    "findings": """examples:
  rcdm recipe findings --data cifar10-jpeg.tar.gz --out ~/rcdm-work/findings --num-images 40
  rcdm recipe findings --data cifar10-jpeg.tar.gz --out F --parts invariance   # one part per process
""",
    "metrics": """examples:
  rcdm recipe metrics --metrics-dir ~/rcdm-work/metrics --eval-images 1000 --step 11000 \\
      --step rcdm-cifar10-supervised=7000 > metrics.json
  rcdm recipe metrics --metrics-dir ~/rcdm-work/metrics --eval-images 1000 --markdown   # the README's tables
""",
}
TARGET_NAMES = [t.name for t in TARGETS]


def _step_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--step",
        action="append",
        default=[],
        metavar="N|TARGET=N",
        help=f"{what} every RCDM at checkpoint step N, or one TARGET at N (repeatable), as `recipe pack --step`; "
        "default: each one's final model, else its newest checkpoint",
    )


def _scoring_args(p: argparse.ArgumentParser, images: int) -> None:
    p.add_argument("--runs", required=True, help="ROOT of the `rcdm recipe rcdm` runs (ROOT/<target>)")
    p.add_argument("--data", required=True, help="CIFAR-10 root or .tar.gz (its test/ split is used)")
    p.add_argument("--judge", required=True, help=f"judge encoder spec, e.g. {JUDGE_EXAMPLE}")
    p.add_argument("--metrics", required=True, help="METRICS folder: METRICS/<target>/<tag>/score.json")
    p.add_argument(
        "--eval-images",
        type=int,
        default=images,
        help=f"class-balanced test images, one sample each (default: {images})",
    )
    p.add_argument("--only", nargs="+", choices=TARGET_NAMES, default=None, help="these RCDMs (default: all)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    add_progress_arg(p)


def add_stage_parsers(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    i = command(
        "eval-images", "copy N class-balanced CIFAR-10 test images flat into a folder (<class>-<file>)"
    )
    i.add_argument("--data", required=True, help="CIFAR-10 root or .tar.gz (its test/ split is used)")
    i.add_argument(
        "--out", required=True, help="folder to copy into (created; images already there are kept)"
    )
    i.add_argument("--num-images", type=int, required=True, help="how many (a class-balanced prefix)")
    i.set_defaults(func=run_eval_images)

    e = command("evaluate", "score the pack's RCDM runs and their checkpoints (the gates and the curves)")
    _scoring_args(e, 1000)
    for flag, what in (("--guidance", "the model the bundle holds"), ("--curve-guidance", "the curve")):
        e.add_argument(
            flag, type=float, nargs="+", default=[1.0, 5.0], help=f"weights for {what} (default: 1 5)"
        )
    e.add_argument(
        "--curve-every",
        type=int,
        default=2000,
        help="steps between curve checkpoints; 0: no curve (default 2000)",
    )
    _step_arg(e, "score")
    e.set_defaults(func=run_evaluate)

    s = command("samplers", "score each sampling setting on the newest model of each RCDM run, with its time")
    _scoring_args(s, 200)
    s.add_argument(
        "--settings",
        nargs="+",
        default=["fast:1", "paired:1", "published:1", "fast:3", "fast:5", "fast:8"],
        metavar="PRESET:GUIDANCE",
        help="sampling presets and guidance weights (default: fast:1 paired:1 published:1 fast:3 fast:5 fast:8)",
    )
    s.set_defaults(func=run_samplers)

    f = command("findings", "the paper's findings 1-3 on an installed pack, with standard errors")
    f.add_argument("--data", required=True, help="CIFAR-10 root or .tar.gz (its test/ split is used)")
    f.add_argument("--out", required=True, help="folder: OUT/invariance, OUT/adversarial, OUT/tables.md")
    f.add_argument("--pack", default=None, help="the pack's folder (default: the installed one)")
    f.add_argument("--num-images", type=int, default=40, help="class-balanced test images (default: 40)")
    f.add_argument("--num-samples", type=int, default=2, help="samples per image (default: 2)")
    f.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance weight of every model (default: the bundle's: the VICReg backbone RCDM's measured default)",
    )
    f.add_argument(
        "--parts",
        nargs="+",
        choices=("invariance", "adversarial", "table"),
        default=["invariance", "adversarial", "table"],
        help="what to run (default: all; `table` needs the other two's results in OUT)",
    )
    f.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    add_progress_arg(f)
    f.set_defaults(func=run_findings)

    m = command(
        "metrics", "the pack's gate metrics from its evaluation folders, as JSON for `recipe pack --metrics`"
    )
    m.add_argument("--metrics-dir", required=True, help="METRICS/<target>/<tag>/ of `rcdm recipe evaluate`")
    m.add_argument("--eval-images", type=int, required=True, help="how many test images each evaluation used")
    _step_arg(m, "read")
    m.add_argument(
        "--markdown",
        action="store_true",
        help="print the README's tables instead (gates at each model's own default, curves, samplers)",
    )
    m.set_defaults(func=run_metrics)


def run_eval_images(args: argparse.Namespace) -> int:
    n = positive("--num-images", args.num_images)
    copied = copy_test_images(cifar10_root(args.data) / "test", args.out, n)
    print(f"{len(copied)} class-balanced test images in {args.out}")
    return 0


def _scoring(args: argparse.Namespace) -> dict:
    """The arguments `evaluate_runs` and `score_samplers` share, from the options of `_scoring_args`."""
    device = args.device or default_device()
    return dict(
        runs=args.runs,
        metrics=args.metrics,
        images=evaluation_images(cifar10_root(args.data), positive("--eval-images", args.eval_images)),
        judge=create_encoder(args.judge, "backbone").to(device),
        only=args.only,
        device=device,
        progress=not args.no_progress,
    )


def _print_metrics(metrics: Path, n: int, step: int | None, steps: dict[str, int]) -> None:
    text = json.dumps(gate_metrics(metrics, str(n), step, steps), indent=1)
    write_text_atomic(metrics.parent / f"{metrics.name}.json", text + "\n")
    print(text)
    print(f"wrote {metrics.parent / f'{metrics.name}.json'} (for `rcdm recipe pack --metrics`)")


def run_evaluate(args: argparse.Namespace) -> int:
    step, steps = parse_steps(args.step)
    for g in [*args.guidance, *args.curve_guidance]:
        check_guidance(g)
    if args.curve_every < 0:
        raise RCDMError(f"--curve-every {args.curve_every} must be 0 (no curve) or a number of steps")
    plan = Evaluation(
        guidance=tuple(args.guidance), curve_guidance=tuple(args.curve_guidance), curve_every=args.curve_every
    )
    common = _scoring(args)
    scored = evaluate_runs(**common, plan=plan, step=step, steps=steps)
    print(f"{len(scored)} evaluations under {args.metrics}")
    _print_metrics(Path(args.metrics), len(common["images"]), step, steps)
    return 0


def run_samplers(args: argparse.Namespace) -> int:
    settings = [parse_setting(s) for s in args.settings]
    for _, g in settings:
        check_guidance(g)
    common = _scoring(args)
    scored = score_samplers(**common, settings=settings)
    print(f"{len(scored)} sampler evaluations under {args.metrics}")
    _print_metrics(Path(args.metrics), len(common["images"]), None, {})
    return 0


def run_findings(args: argparse.Namespace) -> int:
    if args.guidance is not None:
        check_guidance(args.guidance)
    positive("--num-samples", args.num_samples)
    pack = args.pack or bundled_pack()
    if pack is None:
        raise RCDMError("no pack is installed: give --pack BUNDLE (a folder written by `rcdm recipe pack`)")
    images = evaluation_images(cifar10_root(args.data), positive("--num-images", args.num_images))
    sampling = SAMPLING_PRESETS["fast"].replace(guidance=args.guidance)
    table = findings(
        pack,
        images,
        args.out,
        sampling=sampling,
        num_samples=args.num_samples,
        parts=args.parts,
        device=args.device or default_device(),
        progress=not args.no_progress,
    )
    if table is not None:
        print(table.read_text(), end="")
        print(f"wrote {table}")
    else:
        print(f"wrote {', '.join(str(Path(args.out) / p) for p in args.parts)}")
    return 0


def run_metrics(args: argparse.Namespace) -> int:
    step, steps = parse_steps(args.step)
    folder = Path(args.metrics_dir)
    if not folder.is_dir():
        raise RCDMError(
            f"--metrics-dir {args.metrics_dir!r} is not a folder: run `rcdm recipe evaluate` first"
        )
    positive("--eval-images", args.eval_images)
    if args.markdown:
        print(markdown(folder, step, steps) or f"nothing scored under {folder} yet\n", end="")
    else:
        print(json.dumps(gate_metrics(folder, str(args.eval_images), step, steps), indent=1))
    return 0
