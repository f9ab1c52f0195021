"""rcdm recipe ssl|rcdm|status|ab|guidance|pack: the CIFAR-10 demo pack (own SSL encoder, three RCDMs, a bundle); its
measuring stages are in `recipe_stages`. See docs/recipes.md."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path

from ..checks import check_guidance
from ..devices import default_device
from ..diffusion import sampling_preset
from ..encoders import create_encoder
from ..errors import RCDMError
from ..loading import resolve_model_dir, weights_digest
from ..pack.ab import VARIANTS, ABConfig, ab_table, evaluate_variants, train_variants, with_images
from ..pack.cifar10 import cifar10_root
from ..pack.evaluation import (
    Score,
    choose_guidance,
    evaluation_images,
    guidance_table,
    record_model_sampling,
    sampling_record,
)
from ..pack.gates import parse_steps
from ..pack.rcdms import RCDM_PROFILES, RECIPE_KNOBS, TARGETS, RCDMRecipe, budget_table, train_rcdms
from ..pack.ssl import train_encoder
from ..pack.ssl_config import SSLConfig, resolve_config
from ..pack.stages import score_into, tag
from ..pack.write import MAX_BUNDLE_MB, add_to_bundle, pack
from .common import (
    add_command_group,
    add_config_options,
    add_overwrite_arg,
    add_precision_arg,
    add_progress_arg,
    add_standardize_arg,
    positive,
    read_json_object,
)
from .recipe_stages import EPILOGS as STAGE_EPILOGS
from .recipe_stages import add_stage_parsers
from .train import TRAINING_OPTIONS, add_compile_arg

EPILOGS = {
    "recipe": """examples (docs/recipes.md):
  rcdm recipe ssl --data ~/data/cifar10 --out runs/ssl
  rcdm recipe ssl --data ~/data/cifar10 --objective supervised --out runs/supervised
  rcdm recipe rcdm --runs runs --data ~/data/cifar10
  rcdm recipe pack --runs runs --out src/rcdm/assets/models
""",
    "ssl": """examples:
  rcdm recipe ssl --data ~/data/cifar10 --out runs/ssl                 # VICReg, ResNet-20 x2
  rcdm recipe ssl --data ~/data/cifar10 --out runs/ssl --resume        # continue after a stop
""",
    "rcdm": """examples:
  rcdm recipe rcdm --runs runs --data ~/data/cifar10                   # three RCDMs on one GPU
  rcdm recipe rcdm --runs runs --data ~/data/cifar10 --profile cpu --time-budget-s 3600
""",
    "status": """examples (docs/recipes.md, "The CPU pack"):
  rcdm recipe status --runs ~/rcdm-work/runs --steps 11000      # the three RCDMs against 28 CPU hours
  rcdm recipe status --runs ~/rcdm-work/runs --steps 11000 rcdm-cifar10-supervised=22000 --budget-cpu-h 30
""",
    "ab": """examples (docs/recipes.md, "Recipe A/B"):
  rcdm recipe ab --runs ~/rcdm-work/ab --data cifar10-jpeg.tar.gz --variants baseline min-snr
  rcdm recipe ab --runs ~/rcdm-work/ab --data cifar10-jpeg.tar.gz --variants min-snr+v-prediction
""",
    "guidance": """examples (docs/recipes.md, "Sampling that travels with the model"):
  rcdm recipe guidance --model cifar10-vicreg-backbone --data cifar10-jpeg.tar.gz \
      --judge cifar-resnet56:resnet56-4bfd9763.th --guidance 1 2 3 5 --eval-images 1000 --record
""",
    "pack": """examples:
  rcdm recipe pack --runs runs --out src/rcdm/assets/models --demo-images src/rcdm/assets/demo-images/*.jpg
  rcdm recipe pack --runs runs --out bundle --prior priors/vicreg --metrics metrics.json
""",
    "add": """examples (docs/beyond.md, docs/adapt.md):
  rcdm prior --model cifar10-vicreg-backbone --data cifar10/train --out priors/vicreg
  rcdm recipe add --bundle src/rcdm/assets/models --prior priors/vicreg --metrics prior-metrics.json
  rcdm adapt --model cifar10-vicreg-backbone --encoder rcdm-cifar:cifar10-supervised-r20w1 \\
      --data cifar10/train --steps 0 --adapter linear --out adapt/sup
  rcdm recipe add --bundle src/rcdm/assets/models --adapter adapt/sup --metrics adapt-metrics.json
""",
    **STAGE_EPILOGS,
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    command = add_command_group(
        sub,
        "recipe",
        "train the CIFAR-10 demo encoder and RCDMs, and bundle them",
        EPILOGS,
        dest="recipe",
        metavar="RECIPE",
    )

    s = command("ssl", "train a small CIFAR-10 encoder (VICReg or supervised) and report k-NN accuracy")
    s.add_argument(
        "--data", required=True, help="CIFAR-10 root (train/ and test/ class folders) or the .tar.gz"
    )
    s.add_argument("--out", required=True, help="run folder; the encoder lands in OUT/encoder")
    s.add_argument("--objective", choices=("vicreg", "supervised"), default=None, help="default: vicreg")
    s.add_argument("--epochs", type=int, default=None, help="default: 30")
    s.add_argument("--batch-size", type=int, default=None, help="default: 512")
    s.add_argument("--lr", type=float, default=None, help="AdamW peak learning rate (default: 2e-3)")
    s.add_argument("--depth", type=int, default=None, help="CIFAR ResNet depth 6n+2 (default: 20)")
    s.add_argument(
        "--width", type=int, default=None, help="channel multiplier (default: 2, a 128-d backbone)"
    )
    s.add_argument(
        "--projector", type=int, nargs="+", default=None, help="VICReg MLP widths (default: 512 512 512)"
    )
    s.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use N images per split (marks the run as a smoke run; default: all)",
    )
    s.add_argument("--smoke", action="store_true", default=None, help="mark the run as a smoke test")
    s.add_argument("--num-workers", type=int, default=None, help="augmentation workers (default: 8)")
    s.add_argument("--seed", type=int, default=None, help="data order and initial weights (default: 0)")
    add_precision_arg(s, dest="mixed_precision")
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --out (an epoch's end, or where a SIGINT or SIGTERM stopped it)",
    )
    add_progress_arg(s)
    s.set_defaults(func=run_ssl)

    r = command("rcdm", "train the demo RCDMs on ROOT/ssl and ROOT/supervised encoders")
    r.add_argument("--runs", required=True, help="ROOT holding ssl/encoder and supervised/encoder")
    r.add_argument(
        "--data", required=True, help="CIFAR-10 root (its train/ split is used) or an image folder"
    )
    r.add_argument("--only", nargs="+", default=None, help="train only these targets (default: all three)")
    r.add_argument(
        "--profile",
        choices=("gpu", "cpu"),
        default="gpu",
        help="named defaults: gpu (one GPU, three runs side by side) or cpu (one core per run; docs/recipes.md)",
    )
    add_standardize_arg(r, "on with --profile cpu")
    r.add_argument(
        "--keep-checkpoints",
        type=int,
        default=None,
        help="checkpoints kept per run, 0: all (default: the profile's: all with --profile cpu, else 2)",
    )
    r.add_argument("--preset", default=None, help="model preset (default: cifar32-small)")
    r.add_argument("--steps", type=int, default=None, help="default: 8000")
    r.add_argument("--batch-size", type=int, default=None, help="default: 128")
    r.add_argument("--lr", type=float, default=None, help="default: 2e-4")
    r.add_argument("--ema-decay", type=float, default=None, help="default: 0.999")
    r.add_argument("--save-every", type=int, default=None, help="default: 500")
    r.add_argument("--num-workers", type=int, default=None, help="default: 4")
    r.add_argument(
        "--init-from",
        default=None,
        metavar="MODEL",
        help="new runs start from this trained RCDM's weights, as `rcdm train --init-from` (with --only: one "
        "target's; default: random weights)",
    )
    # the recipe knobs, as `rcdm train` names them; the CPU profile predicts v under Min-SNR-gamma (the A/B's lead)
    knobs = {n: TRAINING_OPTIONS[n] for n in RECIPE_KNOBS}
    knobs["prediction"] += " (default: v_prediction with --profile cpu, else epsilon)"
    knobs["loss_weighting"] += " (default: min-snr with --profile cpu, else none)"
    add_config_options(r, RCDMRecipe, knobs)
    add_compile_arg(r)
    r.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="stop at the first checkpoint after this many seconds (default: no limit)",
    )
    r.add_argument("--smoke", action="store_true", default=None, help="mark the runs as smoke tests")
    r.add_argument("--resume", action="store_true", help="continue each run from its newest checkpoint")
    add_progress_arg(r)
    r.set_defaults(func=run_rcdm)

    t = command("status", "where each RCDM run stands in steps and CPU hours, against the pack's budget")
    t.add_argument("--runs", required=True, help="ROOT that `rcdm recipe rcdm --runs ROOT` trains into")
    t.add_argument(
        "--steps",
        nargs="+",
        default=[],
        metavar="N|TARGET=N",
        help="the steps of a run not started yet: N for each, TARGET=N for one (default: the CPU profile's "
        f"{RCDM_PROFILES['cpu']['steps']}); a started run plans what its run.json says",
    )
    t.add_argument(
        "--budget-cpu-h",
        type=float,
        default=28.0,
        help="CPU hours the RCDMs may take (default 28: the CPU pack's 14 hours of two cores, docs/recipes.md)",
    )
    t.set_defaults(func=run_status)

    a = command("ab", "train one RCDM under several training-recipe variants for the same number of images")
    a.add_argument("--runs", required=True, help="ROOT: one run folder per variant, ROOT/<variant>")
    a.add_argument("--data", required=True, help="CIFAR-10 root or .tar.gz (its train/ split is used)")
    a.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help=f"variants to train, in order; join names with + to combine them (choices: {', '.join(VARIANTS)}; "
        "default: all)",
    )
    a.add_argument(
        "--images",
        type=int,
        default=None,
        help="images seen per variant (default: 128000; evaluated at 64k too)",
    )
    a.add_argument(
        "--stage",
        choices=("train", "evaluate", "table"),
        default="train",
        help="train the variants (default); evaluate their checkpoints at 64k and 128k images with --judge; "
        "or print the table of the evaluations written so far",
    )
    a.add_argument(
        "--judge",
        default=None,
        help="evaluate: the judge encoder spec, e.g. cifar-resnet56:resnet56-4bfd9763.th (required there)",
    )
    a.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=None,
        help="evaluate: guidance weights to score each checkpoint at; the table keeps the best (default: 3 5)",
    )
    a.add_argument(
        "--eval-images", type=int, default=None, help="evaluate: class-balanced test images (default: 1000)"
    )
    a.add_argument("--encoder", default=None, help="encoder spec (default: the pack's VICReg encoder)")
    a.add_argument("--feature", choices=("backbone", "projector"), default=None, help="default: backbone")
    a.add_argument("--device", default=None, help="evaluate: cpu, cuda, ... (default: cuda when available)")
    add_progress_arg(a)
    a.set_defaults(func=run_ab)

    g = command(
        "guidance",
        "measure faithfulness and diversity against guidance on CIFAR-10 test images; --record keeps the choice",
    )
    g.add_argument(
        "--model", required=True, help="an RCDM trained with condition dropout (any --model source)"
    )
    g.add_argument("--data", required=True, help="CIFAR-10 root or .tar.gz (its test/ split is used)")
    g.add_argument(
        "--judge", required=True, help="judge encoder spec, e.g. cifar-resnet56:resnet56-4bfd9763.th"
    )
    g.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=[1.0, 2.0, 3.0, 5.0],
        help="weights to measure (default: 1 2 3 5)",
    )
    g.add_argument("--eval-images", type=int, default=200, help="class-balanced test images (default: 200)")
    g.add_argument(
        "--num-samples", type=int, default=2, help="samples per image, >= 2 for diversity (default: 2)"
    )
    g.add_argument(
        "--record",
        action="store_true",
        help="write the chosen sampling and the measurements into the model folder's config.json",
    )
    g.add_argument(
        "--scores",
        default=None,
        metavar="DIR",
        help="keep each weight's scores in DIR/guidance[-gW] as they finish and read them back when run again on "
        "the same weights, images and samples: an interrupted sweep resumes (default: nothing kept)",
    )
    g.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    add_progress_arg(g)
    g.set_defaults(func=run_guidance)

    add_stage_parsers(command)

    k = command("pack", "bundle finished runs: fp16 safetensors + model cards, size-checked")
    k.add_argument("--runs", required=True, help="ROOT of `rcdm recipe ssl` / `rcdm recipe rcdm` runs")
    k.add_argument("--out", required=True, help="bundle folder (e.g. src/rcdm/assets/models)")
    k.add_argument("--only", nargs="+", default=None, help="pack only these RCDM targets (default: all)")
    k.add_argument(
        "--metrics",
        default=None,
        help="JSON file: {target name: {labelled metric: value}} for the cards (default: none)",
    )
    k.add_argument(
        "--demo-images", nargs="+", default=(), help="image files copied to OUT/demo-inputs (default: none)"
    )
    k.add_argument("--max-mb", type=float, default=None, help="size limit in MB of 10^6 bytes (default: 30)")
    k.add_argument(
        "--allow-smoke", action="store_true", help="pack undertrained runs, labelled as smoke tests"
    )
    k.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance weight `rcdm demo` samples the bundle with, and each RCDM's default (> 1 "
        "needs RCDMs trained with condition dropout, as --profile cpu does); default: each RCDM keeps the sampling "
        "`rcdm recipe guidance --record` measured for it, and the demo samples all with the VICReg backbone "
        "RCDM's (1 when none has one)",
    )
    k.add_argument(
        "--step",
        action="append",
        default=[],
        metavar="N|TARGET=N",
        help="pack every RCDM at checkpoint step N (models compared on the demo page then share their "
        "training), or one TARGET at N (repeatable; over a plain N); default: each run's final model, else its "
        "newest checkpoint",
    )
    k.add_argument(
        "--prior",
        action="append",
        default=[],
        metavar="PRIOR",
        help="a representation prior (rcdm prior's --out, or a bundled prior) shipped in float16 beside the "
        "encoder it models, for `rcdm generate` and the demo's Dream section (repeatable; default: none)",
    )
    add_overwrite_arg(k, "bundle entries already in --out")
    k.set_defaults(func=run_pack)

    q = command("add", "add a representation prior or an adapter to a finished bundle (size-checked)")
    q.add_argument(
        "--bundle", required=True, help="a bundle of `rcdm recipe pack` (e.g. src/rcdm/assets/models)"
    )
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--prior",
        help="rcdm prior's --out (or its prior/ folder): shipped in float16 beside its encoder (this or --adapter "
        "is required)",
    )
    what.add_argument(
        "--adapter",
        help="rcdm adapt's --out (or its adapter/ folder), made with a bundled encoder onto a bundled RCDM: shipped "
        "as rcdm-<encoder>-via-<base>, which loads over the base beside it (this or --prior is required)",
    )
    q.add_argument(
        "--metrics",
        default=None,
        help="JSON file: {labelled number: value} measured for it, shown on its card and the demo page "
        "(default: none, or what a prior already records)",
    )
    add_overwrite_arg(q, "an entry of the same name already in --bundle")
    q.set_defaults(func=run_add)


def _given(args: argparse.Namespace, names: list[str]) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def run_ssl(args: argparse.Namespace) -> int:
    cfg = resolve_config(
        {"data": args.data, **_given(args, [f.name for f in fields(SSLConfig) if f.name != "data"])}
    )
    result = train_encoder(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    knn = ", ".join(f"{k} {v:.4f}" for k, v in result.knn.items())
    print(
        f"trained {result.epochs} epochs ({result.steps} steps, {result.wall_time_s:.0f} s wall, "
        f"{result.cpu_time_s:.0f} s CPU); "
        f"k-NN accuracy on the test split: {knn}; encoder in {result.encoder_dir}"
    )
    return 0


def run_rcdm(args: argparse.Namespace) -> int:
    given = _given(args, [f.name for f in fields(RCDMRecipe) if f.name != "data"])
    runs = train_rcdms(
        RCDMRecipe(data=args.data, **{**RCDM_PROFILES[args.profile], **given}),
        args.runs,
        only=args.only,
        resume=args.resume,
        progress=not args.no_progress,
    )
    for r in runs:
        note = " (stopped early: time budget)" if r.stopped_early else ""
        cpu = f"{r.cpu_time_s:.0f} s CPU" + (
            f" since step {r.cpu_time_from_step}" if r.cpu_time_from_step else ""
        )
        print(
            f"{r.name}: {r.steps} steps, {r.images_seen} images seen, {r.wall_time_s:.0f} s wall ({cpu}) on "
            f"{r.device}{note}; run in {r.run_dir}"
        )
    return 0


def run_status(args: argparse.Namespace) -> int:
    if not Path(args.runs).is_dir():
        raise RCDMError(
            f"--runs {args.runs!r} is not a folder: give the ROOT of `rcdm recipe rcdm --runs ROOT`"
        )
    if not args.budget_cpu_h > 0:
        raise RCDMError(f"--budget-cpu-h {args.budget_cpu_h} must be a positive number of CPU hours")
    step, steps = parse_steps(args.steps, "--steps")
    names = [t.name for t in TARGETS]
    unknown = sorted(steps.keys() - set(names))
    if unknown:
        raise RCDMError(f"--steps {unknown[0]}=...: no such RCDM; the targets are {', '.join(names)}")
    print(budget_table(args.runs, step or RCDM_PROFILES["cpu"]["steps"], steps, args.budget_cpu_h))
    return 0


def run_ab(args: argparse.Namespace) -> int:
    data = cifar10_root(args.data)
    ab = ABConfig(data=str(data / "train"), **_given(args, ["encoder", "feature"]))
    if args.images is not None:
        ab = with_images(ab, positive("--images", args.images))
    names = args.variants or list(VARIANTS)
    if args.stage == "table":
        print(ab_table(ab, args.runs, args.variants), end="")
        return 0
    if args.stage == "evaluate":
        if not args.judge:
            raise RCDMError("--stage evaluate needs --judge SPEC (e.g. cifar-resnet56:resnet56-4bfd9763.th)")
        for g in args.guidance or ():
            check_guidance(g)
        written = evaluate_variants(
            ab,
            args.runs,
            names,
            args.judge,
            data,
            guidances=tuple(args.guidance or (3.0, 5.0)),
            num_images=positive("--eval-images", args.eval_images or 1000),
            progress=not args.no_progress,
            device=args.device or default_device(),  # checked by cli.main
        )
        print(f"wrote {len(written)} evaluations under {args.runs}")
        print(ab_table(ab, args.runs, names), end="")
        return 0
    results = train_variants(ab, args.runs, names, progress=not args.no_progress)
    for name, r in results.items():
        where = Path(args.runs) / name
        if r is None:
            print(f"{name}: already finished; run in {where}")
        else:
            print(
                f"{name}: {r.steps} steps, {r.wall_time_s:.0f} s wall, {r.cpu_time_s:.0f} s CPU; run in {where}"
            )
    return 0


def run_guidance(args: argparse.Namespace) -> int:
    for w in args.guidance:
        check_guidance(w)
    if positive("--num-samples", args.num_samples) < 2:
        raise RCDMError(f"--num-samples {args.num_samples}: diversity needs at least 2 samples per image")
    folder = resolve_model_dir(args.model)
    device = args.device or default_device()  # checked by cli.main
    judge = create_encoder(args.judge, "backbone").to(device)
    images = evaluation_images(cifar10_root(args.data), positive("--eval-images", args.eval_images))
    # --scores: each weight's scores kept as they finish, for these weights (an interrupted sweep resumes; a
    # retrained model is measured again)
    same = {"weights_sha256": weights_digest(folder)} if args.scores else None
    scores = [
        Score.from_record(
            score_into(
                Path(args.scores) / tag("guidance", w) if args.scores else None,
                folder,
                judge,
                images,
                replace(sampling_preset("fast"), guidance=w),
                extra=same,
                num_samples=args.num_samples,
                device=device,
                progress=not args.no_progress,
            )
        )
        for w in sorted(set(args.guidance))
    ]
    chosen = choose_guidance(scores)
    print(guidance_table(scores, chosen), end="")
    print(f"chosen: guidance {chosen.guidance:g} (the lowest within the slacks of the best; docs/recipes.md)")
    if args.record:
        # the judge by its weights' digest, not this machine's path: the record travels into bundles
        record_model_sampling(folder, sampling_record(scores, chosen, judge.identity))
        print(
            f"recorded in {folder / 'config.json'}: `rcdm sample` now uses guidance {chosen.guidance:g} by default"
        )
    return 0


def run_pack(args: argparse.Namespace) -> int:
    metrics = read_json_object(args.metrics, "--metrics")
    step, steps = parse_steps(args.step)
    result = pack(
        args.runs,
        args.out,
        only=args.only,
        metrics=metrics,
        allow_smoke=args.allow_smoke,
        max_mb=args.max_mb if args.max_mb is not None else MAX_BUNDLE_MB,
        demo_images=[Path(p) for p in args.demo_images],
        overwrite=args.overwrite,
        guidance=args.guidance,
        step=step,
        steps=steps,
        priors=args.prior,
    )
    label = " (SMOKE TEST: undertrained, labelled so)" if result.smoke else ""
    print(
        f"packed {len(result.sizes)} entries, {result.total_bytes / 1e6:.2f} MB, into {result.out_dir}{label}"
    )
    for note in result.notes:
        print(f"note: {note}")
    return 0


def run_add(args: argparse.Namespace) -> int:
    metrics = read_json_object(args.metrics, "--metrics") if args.metrics else None
    entry, size = add_to_bundle(
        args.bundle, prior=args.prior, adapter=args.adapter, metrics=metrics, overwrite=args.overwrite
    )
    print(f"added {entry} ({size / 1e6:.3f} MB) to {args.bundle}")
    return 0
