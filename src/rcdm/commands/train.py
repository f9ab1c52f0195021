"""rcdm train: fit an RCDM to an encoder's frozen representations of an image folder."""

from __future__ import annotations

import argparse

from ..model import PRESETS
from ..train import TrainConfig, check_time_budget, train
from ..train_config import saved_config
from ..warm_start import settings_of
from .common import (
    add_command,
    add_config_options,
    add_precision_arg,
    add_standardize_arg,
    settings_from_args,
)

EPILOG = """examples:
  rcdm train --data ~/data/cifar10/train --encoder cifar-resnet20:resnet20.th --preset cifar32-small \\
      --steps 20000 --batch-size 64 --lr 5e-4 --standardize --sample-every 1000 --out runs/r20
  rcdm train --out runs/r20 --resume                  # continue with the settings in runs/r20/run.json
  rcdm train --out runs/r20 --resume --steps 40000    # ... and train longer
"""

# The options that set a TrainConfig field: name -> help; the type, the choices and the default shown come from
# the dataclass (`add_config_options`).
TRAINING_OPTIONS = {
    "feature": "representation level",
    "preset": "UNet size",
    "image_size": "image side in px (default: the preset's)",
    "steps": "optimizer steps in all",
    "batch_size": "global batch, all processes",
    "gradient_accumulation_steps": "micro-batches per step; the global batch stays --batch-size",
    "lr": "AdamW learning rate",
    "loss": "simple: epsilon MSE; hybrid (published): + VLB for the learned variance",
    "prediction": "what the network predicts: epsilon (published) or v_prediction (v = sqrt(abar) eps - "
    "sqrt(1 - abar) x0; Salimans & Ho 2022); recorded in the model",
    "loss_weighting": "weights of the squared error per timestep: none (published) or min-snr (Min-SNR-gamma, "
    "Hang et al. 2023; the VLB term of --loss hybrid stays unweighted)",
    "snr_gamma": "gamma of min-snr",
    "timestep_sampling": "how training timesteps are drawn: uniform (published) or logit-normal over t/T (m 0, "
    "s 1; Esser et al. 2024)",
    "warmup_steps": "linear learning-rate warm-up over this many steps",
    "dropout": "dropout probability in the UNet's residual blocks",
    "cond_drop": "condition dropout probability; > 0 enables guidance",
    "ema_decay": "EMA decay",
    "save_every": "steps between checkpoints",
    "keep_checkpoints": "checkpoints kept (of those every --save-every steps)",
    "save_every_minutes": "also an interim checkpoint after this many minutes without one, kept until the next "
    "(0: none)",
    "seed": "data order, noise and initial weights",
    "init_from": "start from a trained RCDM's weights (any --model source): its UNet, and its conditioning when the "
    "encoder is the same; its preset, image size, loss and prediction become this run's defaults (default: random "
    "weights)",
}
RUN_OPTIONS = {
    "feature_cache": "FILE.safetensors: representations computed once (centre crops + flips); default: none, the "
    "encoder runs on every batch",
    "num_workers": "data loader workers",
    "log_every": "steps per metrics.jsonl record",
    "sample_every": "steps between sample grids of fixed training images in RUN/samples (0: none)",
    "report_to": "accelerate trackers (pip install tensorboard / wandb); RUN/metrics.jsonl is always written",
}


class _CompileFlag(argparse.Action):
    """--compile [default|off] (the sampling commands' vocabulary) -> TrainConfig.compile, a bool."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values != "off")


def add_compile_arg(p: argparse.ArgumentParser) -> None:
    """--compile [default|off] / --no-compile -> args.compile (True, False or None: not given)."""
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", "train an RCDM on a folder of images", EPILOG)
    p.add_argument(
        "--data", default=None, help="image folder (any nesting; jpg, png, webp); required unless --resume"
    )
    p.add_argument(
        "--encoder", default=None, help="encoder spec (README: Encoders); required unless --resume"
    )
    add_config_options(p, TrainConfig, TRAINING_OPTIONS, choices={"preset": list(PRESETS)})
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
    add_compile_arg(p)
    add_standardize_arg(p, "off")
    add_config_options(p, TrainConfig, RUN_OPTIONS)
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
    if base is None and args.init_from:  # its preset, image size, loss and target, unless flags say otherwise
        base = settings_of(args.init_from)
    settings = settings_from_args(args, TrainConfig, base, ("data", "encoder"), "run.json")
    cfg = TrainConfig(**settings)
    budget = args.time_budget_s
    check_time_budget(budget)  # before any work
    result = train(cfg, args.out, resume=args.resume, progress=not args.no_progress, time_budget_s=budget)
    if result.stopped_early:
        print(
            f"stopped by --time-budget-s {budget:g} at the checkpoint of step {result.steps} of {cfg.steps} "
            f"({result.wall_time_s:.0f} s); rcdm sample --model {args.out} uses it, and "
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
