"""rcdm train: fit an RCDM to an encoder's frozen representations of an image folder."""

from __future__ import annotations

import argparse
import math
import time

from ..encoders import FEATURES
from ..errors import RCDMError
from ..losses import LOSS_WEIGHTINGS, TIMESTEP_SAMPLINGS
from ..model import PREDICTION_TYPES, PRESETS
from ..train import TrainConfig, train
from ..train_config import REPORT_TO, saved_config
from .common import add_command, add_precision_arg, add_standardize_arg, settings_from_args

EPILOG = """examples:
  rcdm train --data ~/data/cifar10/train --encoder cifar-resnet20:resnet20.th --preset cifar32-small \\
      --steps 20000 --batch-size 64 --lr 5e-4 --standardize --sample-every 1000 --out runs/r20
  rcdm train --out runs/r20 --resume                  # continue with the settings in runs/r20/run.json
  rcdm train --out runs/r20 --resume --steps 40000    # ... and train longer
"""

D = TrainConfig.__dataclass_fields__  # the defaults shown in --help come from the dataclass


def _default(name: str) -> str:
    return f"default: {D[name].default}"


class _CompileFlag(argparse.Action):
    """--compile [default|off] (the sampling commands' vocabulary) -> TrainConfig.compile, a bool."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values != "off")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", "train an RCDM on a folder of images", EPILOG)
    p.add_argument(
        "--data", default=None, help="image folder (any nesting; jpg, png, webp); required unless --resume"
    )
    p.add_argument(
        "--encoder", default=None, help="encoder spec (README: Encoders); required unless --resume"
    )
    p.add_argument(
        "--feature", choices=FEATURES, default=None, help=f"representation level ({_default('feature')})"
    )
    p.add_argument("--preset", choices=list(PRESETS), default=None, help=f"UNet size ({_default('preset')})")
    p.add_argument("--image-size", type=int, default=None, help="image side in px (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps in all ({_default('steps')})")
    p.add_argument(
        "--batch-size", type=int, default=None, help=f"global batch, all processes ({_default('batch_size')})"
    )
    p.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        default=None,
        help="micro-batches per step; the global batch stays --batch-size (default: 1)",
    )
    p.add_argument("--lr", type=float, default=None, help=f"AdamW learning rate ({_default('lr')})")
    p.add_argument(
        "--loss",
        choices=("simple", "hybrid"),
        default=None,
        help="simple: epsilon MSE; hybrid: + VLB for the learned variance (default: hybrid, published)",
    )
    p.add_argument(
        "--prediction",
        choices=PREDICTION_TYPES,
        default=None,
        help="what the network predicts: epsilon (published) or v_prediction (v = sqrt(abar) eps - "
        f"sqrt(1 - abar) x0; Salimans & Ho 2022); recorded in the model ({_default('prediction')})",
    )
    p.add_argument(
        "--loss-weighting",
        choices=LOSS_WEIGHTINGS,
        default=None,
        help="weights of the squared error per timestep: none (published) or min-snr (Min-SNR-gamma, Hang et "
        f"al. 2023; the VLB term of --loss hybrid stays unweighted) ({_default('loss_weighting')})",
    )
    p.add_argument(
        "--snr-gamma", type=float, default=None, help=f"gamma of min-snr ({_default('snr_gamma')})"
    )
    p.add_argument(
        "--timestep-sampling",
        choices=TIMESTEP_SAMPLINGS,
        default=None,
        help="how training timesteps are drawn: uniform (published) or logit-normal over t/T (m 0, s 1; "
        f"Esser et al. 2024) ({_default('timestep_sampling')})",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help=f"linear learning-rate warm-up over this many steps ({_default('warmup_steps')})",
    )
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help=f"dropout probability in the UNet's residual blocks ({_default('dropout')})",
    )
    p.add_argument(
        "--cond-drop",
        type=float,
        default=None,
        help=f"condition dropout probability; > 0 enables guidance ({_default('cond_drop')})",
    )
    p.add_argument("--ema-decay", type=float, default=None, help=f"EMA decay ({_default('ema_decay')})")
    p.add_argument(
        "--save-every", type=int, default=None, help=f"steps between checkpoints ({_default('save_every')})"
    )
    p.add_argument(
        "--keep-checkpoints",
        type=int,
        default=None,
        help=f"checkpoints kept ({_default('keep_checkpoints')})",
    )
    p.add_argument(
        "--seed", type=int, default=None, help=f"data order, noise and initial weights ({_default('seed')})"
    )
    add_precision_arg(
        p,
        dest="mixed_precision",
        help="bf16 or fp32 training; auto: bf16 on CUDA and on CPUs with native bf16 (AMX or AVX512-BF16), "
        "fp32 elsewhere (default: auto)",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        default=None,
        help="recompute activations in backward (less memory, slower)",
    )
    p.add_argument(
        "--compile",
        action=_CompileFlag,
        nargs="?",
        const="default",
        choices=("default", "off"),
        default=None,
        metavar="MODE",
        help="torch.compile the UNet: --compile (= default, torch.compile's default mode) or --compile off "
        "(default: off; docs/speed.md)",
    )
    p.add_argument(
        "--no-compile", dest="compile", action="store_const", const=False, help="same as --compile off"
    )
    add_standardize_arg(p, "off")
    p.add_argument(
        "--feature-cache",
        default=None,
        help="FILE.safetensors: representations computed once (centre crops + flips); default: none, the "
        "encoder runs on every batch",
    )
    p.add_argument(
        "--num-workers", type=int, default=None, help=f"data loader workers ({_default('num_workers')})"
    )
    p.add_argument(
        "--log-every",
        type=int,
        default=None,
        help=f"steps per metrics.jsonl record ({_default('log_every')})",
    )
    p.add_argument(
        "--sample-every",
        type=int,
        default=None,
        help="steps between sample grids of fixed training images in RUN/samples (default: 0, none)",
    )
    p.add_argument(
        "--report-to",
        choices=REPORT_TO,
        default=None,
        help="accelerate trackers (pip install tensorboard / wandb); RUN/metrics.jsonl is always written "
        "(default: none)",
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="stop at the first checkpoint after this many seconds of this session; the run is usable as it is "
        "(rcdm sample --model RUN reads its newest checkpoint) and --resume continues it (default: no limit)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --out with the settings of its run.json",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Options default to None; run.json (on --resume) and then the dataclass defaults fill the rest (edm2 style).
    base = saved_config(args.out) if args.resume else None
    settings = settings_from_args(args, TrainConfig, base, ("data", "encoder"), "run.json")
    cfg = TrainConfig(**settings)
    budget = args.time_budget_s
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise RCDMError(f"--time-budget-s {budget} must be a positive number of seconds (default: no limit)")
    t0, reached = time.perf_counter(), {}

    def on_step(step: int, loss: float) -> None:
        if budget is not None and step % cfg.save_every == 0 and time.perf_counter() - t0 > budget:
            reached["step"] = step
            raise _TimeUp  # after the checkpoint of `step` was written

    try:
        result = train(cfg, args.out, resume=args.resume, progress=not args.no_progress, on_step=on_step)
    except _TimeUp:
        print(
            f"stopped by --time-budget-s {budget:g} at the checkpoint of step {reached['step']} of {cfg.steps} "
            f"({time.perf_counter() - t0:.0f} s); rcdm sample --model {args.out} uses it, and "
            f"rcdm train --out {args.out} --resume continues"
        )
        return 0
    if not result.history:  # resumed at (or past) its last step: say so, not "last loss nan; 0.0 img/s"
        print(
            f"nothing to train: {args.out} is already at step {result.steps} of {cfg.steps} (pass a larger --steps "
            f"to train longer); model in {result.run_dir / 'model'}"
        )
        return 0
    window = result.history[-cfg.save_every :]
    print(
        f"trained {result.steps} steps; mean loss {sum(window) / len(window):.4f} over the last {len(window)} "
        f"steps; {result.images_per_second:.1f} img/s; "
        f"{result.wall_time_s:.1f} s wall, {result.cpu_time_s:.1f} s CPU; model in {result.run_dir / 'model'}"
    )
    return 0


class _TimeUp(Exception):
    """Raised from the step callback once --time-budget-s has passed at a checkpoint."""
