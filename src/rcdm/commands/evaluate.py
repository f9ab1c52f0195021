"""rcdm evaluate faithfulness|quality|generate: metrics as FILE.json plus a Markdown table FILE.md beside it."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
from collections.abc import Callable
from pathlib import Path

from ..data import expand_image_args, list_images
from ..devices import process_state
from ..encoders import create_encoder
from ..errors import RCDMError
from ..figures import fmt, write_report
from ..files import check_writable_dir, check_writable_file, output_folder
from ..locks import output_lock
from ..metrics.faithfulness import evaluate_faithfulness, faithfulness_tables
from ..metrics.features import create_feature_extractor
from ..metrics.generate import MANIFEST, generate_samples, sample_files, save_samples
from ..metrics.quality import evaluate_quality, load_reference_stats, quality_tables
from .common import (
    add_command_group,
    add_model_args,
    add_overwrite_arg,
    add_progress_arg,
    add_sampling_args,
    load_model_and_encoder,
    positive,
    sampling_from_args,
)

log = logging.getLogger(__name__)

EPILOGS = {
    "evaluate": """examples:
  rcdm evaluate faithfulness --model runs/r20 --images data/test --out faith.json
  rcdm evaluate generate --model runs/r20 --images data/test --total-samples 10000 --out gen/ --real data/test
""",
    "faithfulness": """examples:
  rcdm evaluate faithfulness --model runs/r20 --images data/test --num-samples 4 --out faith.json
  rcdm evaluate faithfulness --model runs/r20 --images data/test --judge timm:resnet50.a1_in1k --out faith.json
""",
    "quality": """examples:
  rcdm evaluate quality --real data/test --fake gen/ --out quality.json                 # Inception-v3
  rcdm evaluate quality --fake gen/ --real-stats VIRTUAL_imagenet128_labeled.npz --out q.json   # ADM's FID
  rcdm evaluate quality --real data/test --fake gen/ --extractor cifar-resnet56:resnet56.th --out q56.json
""",
    "generate": """examples:
  rcdm evaluate generate --model runs/r20 --images data/test --total-samples 50000 --out fid50k/ --real data/test
  rcdm evaluate generate --model runs/r20 --images data/test --num-samples 5 --out gen/   # 5 per image
  accelerate launch --num_processes 8 -m rcdm.cli evaluate generate --model RUN --images data/val \\
      --total-samples 50000 --out fid50k/ --real-stats VIRTUAL_imagenet128_labeled.npz
""",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    command = add_command_group(
        sub, "evaluate", "faithfulness and sample-quality metrics", EPILOGS, dest="metric", metavar="METRIC"
    )

    f = command("faithfulness", "rank / cosine of samples' representations to their condition")
    add_model_args(f)
    f.add_argument("--images", nargs="+", required=True, help="reference image files or folders")
    add_sampling_args(f, 4, "samples per reference image")
    f.add_argument(
        "--judge",
        action="append",
        default=[],
        metavar="SPEC",
        help="an independent encoder (repeatable; default: none, the model's own encoder only)",
    )
    f.add_argument(
        "--distance", choices=("cosine", "l2"), default="cosine", help="for ranks (docs/metrics.md)"
    )
    f.add_argument("--out", required=True, help="FILE.json (FILE.md is written beside it)")
    f.add_argument(
        "--save-samples",
        default=None,
        metavar="DIR",
        help="also write the samples, in `evaluate generate`'s layout (sample g of DIR/references.txt line "
        "g // --num-samples), so that `evaluate quality --fake DIR` scores them without drawing them again "
        "(a new or empty folder; default: none, only representations are kept)",
    )
    add_overwrite_arg(f, "an earlier result in --out")
    f.set_defaults(func=_locked(run_faithfulness))

    q = command("quality", "FID, KID, IS, precision/recall, density/coverage of a fake folder")
    q.add_argument(
        "--real",
        default=None,
        help="folder of real images (needed for KID, precision/recall, density/coverage; FID too without "
        "--real-stats; default: none, then --real-stats is required)",
    )
    q.add_argument(
        "--fake", required=True, help="folder of generated images (any folder, or a generate --out)"
    )
    _quality_args(q)
    add_progress_arg(q)
    q.add_argument("--out", required=True, help="FILE.json (FILE.md is written beside it)")
    add_overwrite_arg(q, "an earlier result in --out")
    q.set_defaults(func=_locked(run_quality))

    g = command("generate", "draw many samples into a resumable folder (multi-GPU: accelerate launch)")
    add_model_args(g)
    g.add_argument("--images", nargs="+", required=True, help="reference images to condition on (cycled)")
    add_sampling_args(g, None, "samples per reference image (the total is that times the number of images)")
    g.add_argument(
        "--total-samples",
        type=int,
        default=None,
        help="samples in all, cycling through the reference images (default: 50000 unless --num-samples)",
    )
    g.add_argument("--out", required=True, help="output folder (rerun with the same settings to resume)")
    g.add_argument(
        "--real",
        default=None,
        help="then score the samples against this folder (OUT/quality.json; also done with --real-stats alone; "
        "default: none, no scoring)",
    )
    _quality_args(g)
    g.set_defaults(func=run_generate)


def _quality_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--extractor",
        default="inception",
        metavar="SPEC",
        help="feature network of the metrics: 'inception' (the FID Inception-v3) or an encoder spec, e.g. timm:NAME",
    )
    p.add_argument(
        "--features", dest="extractor", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )  # old name
    p.add_argument(
        "--real-stats",
        default=None,
        metavar="FILE.npz",
        help="FID against these reference statistics (keys mu, sigma of the --extractor's features, as in ADM's "
        "reference batches and clean-fid's stats) instead of the real images' features (default: none)",
    )
    p.add_argument(
        "--inception-weights",
        default=None,
        help="path to weights-inception-2015-12-05-6726825d.pth (default: $RCDM_INCEPTION_WEIGHTS, else the "
        "torch hub cache, downloaded there on first use)",
    )
    p.add_argument(
        "--cache", default=None, help="feature store folder (default: beside --out); reused on rerun"
    )
    p.add_argument(
        "--image-size", type=int, default=None, help="common side before the extractor (default: real's)"
    )
    p.add_argument("--feature-batch-size", type=int, default=100, help="images per extractor call")
    p.add_argument("--num-workers", type=int, default=4, help="image decoding workers")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID: random subsets averaged")
    p.add_argument(
        "--kid-subset-size", type=int, default=1000, help="KID: images per subset (capped at the set size)"
    )
    p.add_argument(
        "--manifold-samples",
        type=int,
        default=10_000,
        help="rows used for precision/recall, density/coverage",
    )


def _json_out(path: str) -> Path:
    if not path.endswith(".json"):
        raise RCDMError(f"--out {path!r} must end with .json (the Markdown table goes beside it as .md)")
    return check_writable_file(path)  # before any work


def _locked(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`run` with --out checked (.json, writable; an existing file replaced only with --overwrite) and locked
    against a second rcdm writing it, before any work. The files themselves are written whole (write_report)."""

    def guarded(args: argparse.Namespace) -> int:
        out = _json_out(args.out)
        for existing in (out, out.with_suffix(".md")):
            if existing.exists() and not args.overwrite:
                raise RCDMError(
                    f"--out {str(out)!r}: {existing.name} already exists: pass --overwrite to replace it, or choose "
                    "a new --out"
                )
        with output_lock(out, command=f"rcdm evaluate {args.metric}"):
            return run(args)

    return guarded


def run_faithfulness(args: argparse.Namespace) -> int:
    out = _json_out(args.out)
    sampling = sampling_from_args(args)
    paths = expand_image_args(args.images)
    with contextlib.ExitStack() as stack:
        saved = None
        if args.save_samples is not None:
            saved = stack.enter_context(
                output_folder(
                    args.save_samples,
                    marker="references.txt",
                    flag="--save-samples",
                    command="rcdm evaluate faithfulness",
                )
            )
        model, encoder = load_model_and_encoder(args)
        judges = [create_encoder(spec, "backbone").to(encoder.device) for spec in args.judge]
        result = evaluate_faithfulness(
            model,
            encoder,
            paths,
            num_samples=args.num_samples,
            judges=judges,
            distance=args.distance,
            sampling=sampling,
            progress=not args.no_progress,
            on_samples=None if saved is None else functools.partial(save_samples, saved),
        )
        if saved is not None:
            (saved / "references.txt").write_text("".join(f"{p}\n" for p in paths))
    data = {**result.to_dict(), "model": args.model}
    notes = [
        f"Model `{args.model}`; {len(paths)} reference images x {args.num_samples} samples; "
        f"ranks by {args.distance} distance among the references (1 = best; see docs/metrics.md)."
    ]
    _, md = write_report(data, out, "Faithfulness", faithfulness_tables(data), notes)
    for s in result.scores:
        print(
            f"{s.role} {s.encoder}: cosine {s.cosine:.4f}, mean rank {s.mean_rank:.2f} / {s.num_references}, "
            f"top-1 {s.top1:.3f}, top-5 {s.top5:.3f}"
            + (f", class agreement {s.class_agreement:.3f}" if s.class_agreement is not None else "")
        )
    print(f"wrote {out} and {md}" + (f"; samples in {args.save_samples}" if args.save_samples else ""))
    return 0


def _score(
    args: argparse.Namespace, real: list[Path] | None, fake: list[Path], out: Path, cache: Path
) -> int:
    state = process_state()
    extractor = create_feature_extractor(args.extractor, args.inception_weights).to(state.device)
    result = evaluate_quality(
        real,
        fake,
        extractor,
        cache,
        real_stats=args.real_stats,
        image_size=args.image_size,
        batch_size=positive("--feature-batch-size", args.feature_batch_size),
        num_workers=args.num_workers,
        progress=not args.no_progress,
        kid_subsets=positive("--kid-subsets", args.kid_subsets),
        kid_subset_size=positive("--kid-subset-size", args.kid_subset_size),
        manifold_samples=positive("--manifold-samples", args.manifold_samples),
    )
    if not state.is_main_process:
        return 0
    data = {
        **result.to_dict(),
        "real": str(args.real) if args.real else None,
        "fake": str(getattr(args, "fake", None) or args.out),
    }
    real_text = f"{result.num_real} real images" if args.real else "no real images"
    if args.real_stats:
        real_text += f" (FID against the statistics in {args.real_stats})"
    notes = [
        f"{result.num_fake} fake vs {real_text}; features: {result.features}"
        + ("" if result.standard else " (non-standard: not comparable with published Inception scores)")
        + f". IS: {result.inception_score_note}. KID over {result.settings['kid_subsets']} subsets of "
        f"{result.settings['kid_subset_size']}; precision/recall k=3, density/coverage k=5 on "
        f"{result.settings['manifold_samples_real']} real / {result.settings['manifold_samples_fake']} fake images."
        if args.real
        else ". KID, precision/recall and density/coverage need real images (--real)."
    ]
    _, md = write_report(data, out, "Sample quality", quality_tables(data), notes)
    tag = "" if result.standard else f" [{result.features}]"
    r = result
    print(
        f"FID{tag} {fmt(r.fid, 3)}  KID {fmt(r.kid, 5)}  IS {fmt(r.inception_score, 3)}  "
        f"precision {fmt(r.precision, 3)}  recall {fmt(r.recall, 3)}  density {fmt(r.density, 3)}  "
        f"coverage {fmt(r.coverage, 3)}"
    )
    print(f"wrote {out} and {md}")
    return 0


def _fake_files(folder: str) -> list[Path]:
    return sample_files(folder) if (Path(folder) / MANIFEST).is_file() else list_images(folder)


def run_quality(args: argparse.Namespace) -> int:
    out = _json_out(args.out)
    if args.real is None and args.real_stats is None:
        raise RCDMError("pass --real FOLDER (real images) and/or --real-stats FILE.npz (reference mu/sigma)")
    if args.real_stats:  # a wrong file fails before the extractor is fetched or any image is read
        load_reference_stats(args.real_stats, None)
    real = list_images(args.real) if args.real else None
    fake = _fake_files(args.fake)
    cache = Path(args.cache) if args.cache else out.with_name(out.stem + ".features")
    return _score(args, real, fake, out, cache)


# Images one generation run writes at most (50,000 is the FID standard): one file each.
MAX_GENERATED = 1_000_000


def _total_samples(args: argparse.Namespace, num_refs: int) -> int:
    """--num-samples per reference image, or --total-samples in all (default 50,000)."""
    if args.num_samples is not None and args.total_samples is not None:
        raise RCDMError(
            f"--num-samples {args.num_samples} (per reference image) and --total-samples {args.total_samples} "
            "(in all): give one of the two"
        )
    if args.num_samples is not None:
        total = args.num_samples * num_refs
        if args.num_samples >= 1000:
            log.warning(
                "--num-samples %d is per reference image: %d x %d images = %d samples (for a total, use "
                "--total-samples)",
                args.num_samples,
                args.num_samples,
                num_refs,
                total,
            )
        return total
    total = args.total_samples if args.total_samples is not None else 50_000
    return positive("--total-samples", total, MAX_GENERATED)


def run_generate(args: argparse.Namespace) -> int:
    sampling = sampling_from_args(args)
    if args.real_stats:  # a wrong file fails before hours of sampling, not after
        load_reference_stats(args.real_stats, None)
    state = process_state()
    device = args.device if args.device and state.num_processes == 1 else state.device
    refs = expand_image_args(args.images)
    check_writable_dir(args.out)  # before any work (a folder of earlier samples is resumed, by design)
    total = _total_samples(args, len(refs))
    model, encoder = load_model_and_encoder(args, device)
    result = generate_samples(
        model,
        encoder,
        refs,
        args.out,
        num_samples=total,
        sampling=sampling,
        model_name=str(args.model),
        device=device,
        progress=not args.no_progress,
    )
    if state.is_main_process:
        print(
            f"{result.generated} samples drawn, {result.skipped} already there, in {result.out_dir / 'samples'}"
        )
    if args.real is None and args.real_stats is None:
        return 0
    out_dir = Path(args.out)
    fake = sample_files(out_dir, total)
    cache = Path(args.cache) if args.cache else out_dir / "features"
    real = list_images(args.real) if args.real else None
    return _score(args, real, fake, out_dir / "quality.json", cache)
