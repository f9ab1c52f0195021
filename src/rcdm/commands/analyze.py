"""rcdm analyze NAME: the paper's analyses (invariance, adversarial, interpolate, manipulate, variance, report)
and what the noise keeps (noise).

Each writes OUT/figure.png (labelled rows and columns) and OUT/results.json; `report` writes OUT/index.html.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from ..analysis import (
    ATTACKS,
    adversarial,
    adversarial_figure,
    interpolate,
    interpolation_figure,
    invariance,
    invariance_figure,
    list_augmentations,
    manipulate,
    manipulation_figure,
    report,
    variance,
    variance_figure,
)
from ..analysis.adversarial import DEFAULT_EPS
from ..analysis.headline import headline
from ..analysis.interpolate import METHODS, check_num_steps
from ..analysis.noise import noise_figure, noise_keeps
from ..data import expand_image_args
from ..devices import default_device
from ..diffusion import resolve_sampling
from ..errors import RCDMError
from ..figures import with_caption
from ..files import output_folder
from ..inversion import INVERT_DEFAULTS
from ..loading import encoder_for, load_model
from .common import (
    MAX_SAMPLES_PER_IMAGE,
    add_command_group,
    add_model_args,
    add_overwrite_arg,
    add_sampling_args,
    load_model_and_encoder,
    positive,
    sampling_from_args,
)

EPILOGS = {
    "analyze": """examples:
  rcdm analyze invariance --model runs/r20 --images photos/ --out inv/
  rcdm analyze report --model runs/r20 --images photos/ --neighbours data/train --target photos/cat.jpg --out report/
""",
    "invariance": """examples:
  rcdm analyze invariance --model runs/r20 --images photos/ --out inv/
  rcdm analyze invariance --model runs/r20 --images photos/ --augmentations grayscale hflip \\
      --compare runs/r20-projector --out inv/
""",
    "adversarial": """examples:
  rcdm analyze adversarial --model runs/r20 --images photos/ --eps 4/255 --out adv/
  rcdm analyze adversarial --model runs/r20 --images photos/ --attack targeted --compare runs/supervised --out adv-vs/
""",
    "interpolate": """examples:
  rcdm analyze interpolate --model runs/r20 --images a.jpg b.jpg --num-steps 7 --out interp/
""",
    "manipulate": """examples:
  rcdm analyze manipulate --model runs/r20 --images photos/ --neighbours data/train --target photos/dog.jpg --out manip/
""",
    "variance": """examples:
  rcdm analyze variance --model runs/r20 --images photos/ --num-samples 16 --out var/
""",
    "noise": """examples:
  rcdm analyze noise --model cifar10-vicreg-backbone --images photos/ --num-samples 4 --out noise/
""",
    "report": """examples:
  rcdm analyze report --model runs/r20 --images photos/ --neighbours data/train --target photos/cat.jpg \\
      --out report/   # report/index.html
""",
}


EPS_TEXT = f"{round(DEFAULT_EPS * 255):g}/255"


def fraction(text: str) -> float:
    """'4/255' or '0.0157' -> float (argparse type)."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: use e.g. 4/255 or 0.0157") from None


def _common(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--images", nargs="+", required=True, help="image files or folders")
    add_sampling_args(p, num_samples=4)
    p.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    add_overwrite_arg(p, "an earlier output of the same analysis in --out (never a folder of other files)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    command = add_command_group(
        sub,
        "analyze",
        "the paper's analyses: invariance, adversarial, interpolate, ...",
        EPILOGS,
        dest="analysis",
        metavar="ANALYSIS",
    )

    q = command("invariance", "samples from augmented images' representations (findings 1, 2)")
    _common(q)
    q.add_argument(
        "--augmentations",
        nargs="+",
        default=None,
        metavar="NAME[=STRENGTH]",
        help=f"default: all of {', '.join(list_augmentations())}",
    )
    q.add_argument(
        "--compare",
        "--compare-features",  # the earlier spelling
        dest="compare_features",
        default=None,
        metavar="MODEL",
        help="a second model (e.g. the same encoder's projector) shown in the same figure and table, as in "
        "adversarial (default: none)",
    )
    q.set_defaults(func=_in_output_folder(run_invariance))

    q = command("adversarial", "PGD on the input, samples from the attacked representation (finding 3)")
    _common(q)
    q.add_argument("--attack", choices=ATTACKS, default="untargeted", help="PGD objective")
    q.add_argument(
        "--eps", type=fraction, default=DEFAULT_EPS, help=f"L-infinity radius (default {EPS_TEXT})"
    )
    q.add_argument("--pgd-steps", type=int, default=10, help="PGD steps")
    q.add_argument("--step-size", type=fraction, default=None, help="default 2.5 * eps / pgd-steps")
    q.add_argument(
        "--target", nargs="+", default=None, help="targeted attack: target image(s); default next image"
    )
    q.add_argument(
        "--compare",
        default=None,
        metavar="MODEL",
        help="a second model, e.g. supervised vs SSL (default: none)",
    )
    q.set_defaults(func=_in_output_folder(run_adversarial))

    q = command("interpolate", "mix the first two images' representations (finding 4)")
    _common(q)
    q.add_argument("--num-steps", type=int, default=7, help="number of t values in [0, 1]")
    q.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help=f"interpolation paths (default: {' '.join(METHODS)})",
    )
    q.set_defaults(func=_in_output_folder(run_interpolate))

    q = command("manipulate", "zero or transfer the dimensions common to nearest neighbours")
    _common(q)
    _manipulate_args(q, required=True)
    q.set_defaults(func=_in_output_folder(run_manipulate))

    q = command("variance", "per-pixel std over samples of one representation")
    _common(q)
    q.set_defaults(func=_in_output_folder(run_variance))

    q = command("noise", "what the noise keeps: reconstruction from inverted noise vs fresh samples")
    _common(q)
    q.set_defaults(func=_in_output_folder(run_noise))

    q = command("report", "every analysis in one offline index.html")
    _common(q)
    _manipulate_args(q, required=False)
    q.add_argument(
        "--augmentations",
        nargs="+",
        default=None,
        metavar="NAME[=STRENGTH]",
        help=f"invariance section (default: all of {', '.join(list_augmentations())})",
    )
    q.add_argument(
        "--eps",
        type=fraction,
        default=DEFAULT_EPS,
        help=f"adversarial section: L-infinity radius (default {EPS_TEXT})",
    )
    q.add_argument("--pgd-steps", type=int, default=10, help="adversarial section: PGD steps")
    q.set_defaults(func=_in_output_folder(run_report))


def _manipulate_args(q: argparse.ArgumentParser, required: bool) -> None:
    skipped = "" if required else " (default: none: the manipulation section is skipped)"
    q.add_argument(
        "--neighbours", required=required, help=f"folder of images to search neighbours in{skipped}"
    )
    q.add_argument("--target", required=required, help=f"image whose common dimensions are copied{skipped}")
    q.add_argument("--k", type=int, default=20, help="nearest neighbours (default 20)")
    q.add_argument("--n-common", type=int, default=14, help="common = non-zero in more than this many (14)")
    q.add_argument("--threshold", type=float, default=0.0, help="'non-zero' means > threshold (default 0)")
    q.add_argument(
        "--cache",
        default=None,
        help="folder to cache the neighbour folder's representations in (default: none, recomputed)",
    )


def _in_output_folder(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`run` with sample's rules for --out: new or empty, or this analysis' own earlier output with --overwrite;
    locked; written into a temporary folder that becomes --out only when the analysis completes."""

    def guarded(args: argparse.Namespace) -> int:
        marker = "index.html" if args.analysis == "report" else "results.json"
        final = args.out
        with output_folder(
            final, overwrite=args.overwrite, marker=marker, command=f"rcdm analyze {args.analysis}"
        ) as tmp:
            args.out, args.final_out = str(tmp), final
            try:
                return run(args)
            finally:
                args.out = final

    return guarded


def _setup(args: argparse.Namespace, model_source: str | None = None):
    """The model of --model and its encoder; or `model_source` (a comparison) with the encoder it records."""
    positive("--num-samples", args.num_samples, MAX_SAMPLES_PER_IMAGE)
    sampling_from_args(args)  # its settings are checked before any work
    if model_source is None:
        model, encoder = load_model_and_encoder(args)
        args.sampling_used = resolve_sampling(model, sampling_from_args(args))
        args.caption = f"{args.model} ({encoder.spec}, {encoder.feature}); {args.sampling_used.describe()}"
        return model, encoder
    device = args.device or default_device()
    model = load_model(model_source, device=device)
    return model, encoder_for(model, trust_remote_code=args.trust_remote_code).to(device)


def _sampling(args: argparse.Namespace) -> dict:
    return dict(
        num_samples=args.num_samples, sampling=sampling_from_args(args), progress=not args.no_progress
    )


def _write(args: argparse.Namespace, figure, results: dict) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    caption = getattr(args, "caption", None)  # the model and the sampling, on the figure itself
    (with_caption(figure, caption) if caption else figure).save(out / "figure.png")
    results = {"analysis": args.analysis, "model": args.model, **results}
    if getattr(args, "sampling_used", None) is not None:
        results["sampling"] = args.sampling_used.record()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    final = Path(getattr(args, "final_out", args.out))
    for line in headline(results):
        print(f"  {line}")
    print(f"wrote {final / 'figure.png'} and {final / 'results.json'}")
    return 0


def run_invariance(args: argparse.Namespace) -> int:
    paths = expand_image_args(args.images)
    model, encoder = _setup(args)
    runs = [invariance(model, encoder, paths, augmentations=args.augmentations, **_sampling(args))]
    if args.compare_features:
        model2, encoder2 = _setup(args, args.compare_features)
        label = f"{args.compare_features}: {encoder2.spec} ({encoder2.feature})"
        runs.append(
            invariance(
                model2, encoder2, paths, augmentations=args.augmentations, label=label, **_sampling(args)
            )
        )
    return _write(args, invariance_figure(runs), {"results": [r.summary() for r in runs]})


def run_adversarial(args: argparse.Namespace) -> int:
    positive("--pgd-steps", args.pgd_steps)
    if not 0 < args.eps <= 1:
        raise RCDMError(
            f"--eps {args.eps:g} is out of range: it is an L-infinity radius on pixels in [0, 1], so use a number "
            f"in (0, 1], e.g. 2/255 for two grey levels (default {EPS_TEXT})"
        )
    paths = expand_image_args(args.images)
    attack = dict(attack=args.attack, eps=args.eps, pgd_steps=args.pgd_steps, step_size=args.step_size)
    targets = expand_image_args(args.target) if args.target else None
    model, encoder = _setup(args)
    runs = [adversarial(model, encoder, paths, targets=targets, **attack, **_sampling(args))]
    if args.compare:
        model2, encoder2 = _setup(args, args.compare)
        label = f"{args.compare}: {encoder2.spec} ({encoder2.feature})"
        runs.append(
            adversarial(model2, encoder2, paths, targets=targets, label=label, **attack, **_sampling(args))
        )
    return _write(args, adversarial_figure(runs), {"results": [r.summary() for r in runs]})


def run_interpolate(args: argparse.Namespace) -> int:
    paths = expand_image_args(args.images)
    if len(paths) < 2:
        raise RCDMError(f"interpolate needs two images but got {len(paths)}: pass --images A B")
    check_num_steps(args.num_steps, "--num-steps")
    model, encoder = _setup(args)
    res = interpolate(
        model, encoder, paths[:2], num_steps=args.num_steps, methods=args.methods, **_sampling(args)
    )
    return _write(args, interpolation_figure(res), res.summary())


def run_manipulate(args: argparse.Namespace) -> int:
    if not math.isfinite(args.threshold):
        raise RCDMError(
            f"--threshold {args.threshold} must be a finite number ('non-zero' means > threshold)"
        )
    paths = expand_image_args(args.images)
    model, encoder = _setup(args)
    res = manipulate(
        model,
        encoder,
        paths[0],
        args.target,
        args.neighbours,
        k=args.k,
        n_common=args.n_common,
        threshold=args.threshold,
        cache=args.cache,
        **_sampling(args),
    )
    return _write(args, manipulation_figure(res), res.summary())


def run_variance(args: argparse.Namespace) -> int:
    paths = expand_image_args(args.images)
    model, encoder = _setup(args)
    res = variance(model, encoder, paths, **_sampling(args))
    return _write(args, variance_figure(res), res.summary())


def run_noise(args: argparse.Namespace) -> int:
    paths = expand_image_args(args.images)
    model, encoder = _setup(args)
    # inversion's defaults (ddim 50, guidance 1), not the model's sampling default: see rcdm.inversion
    sampling = INVERT_DEFAULTS.replace(
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        precision=args.precision,
        batch_size=args.batch_size,
    )
    res = noise_keeps(
        model, encoder, paths, num_samples=args.num_samples, sampling=sampling, progress=not args.no_progress
    )
    return _write(args, noise_figure(res, title=f"{args.model}: what the noise keeps"), res.summary())


def run_report(args: argparse.Namespace) -> int:
    paths = expand_image_args(args.images)
    if (args.neighbours is None) != (args.target is None):
        raise RCDMError("the report's manipulation needs both --neighbours DIR and --target IMG (or neither)")
    model, encoder = _setup(args)
    rep = report(
        model,
        encoder,
        paths,
        args.out,
        augmentations=args.augmentations,
        eps=args.eps,
        pgd_steps=args.pgd_steps,
        neighbours=args.neighbours,
        target=args.target,
        k=args.k,
        n_common=args.n_common,
        threshold=args.threshold,
        cache=args.cache,
        **_sampling(args),
    )
    print(f"wrote {Path(args.final_out) / rep.index.name} with {len(rep.figures)} figures")
    return 0
