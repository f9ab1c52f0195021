"""What a training run is: its settings (`TrainConfig`, recorded in RUN_DIR/run.json), the checks that refuse
settings that would crash later or silently train something else, and the comparison with run.json on resume.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from .checks import check_seed
from .devices import Precision, training_precision
from .encoders import Feature
from .errors import RCDMError
from .files import check_writable_dir
from .losses import (
    LOSS_WEIGHTINGS,
    TIMESTEP_SAMPLINGS,
    LossType,
    LossWeighting,
    TimestepSampling,
)
from .model import PREDICTION_TYPES, PRESETS


@dataclass(frozen=True)
class TrainConfig:
    """Run settings (the architecture lives in the model's ConfigMixin). Written to RUN_DIR/run.json."""

    data: str
    encoder: str
    feature: Feature = "backbone"
    preset: str = "cifar32"
    image_size: int | None = None  # None: the preset's sample size
    steps: int = 100_000
    batch_size: int = 64  # global batch, split across processes
    lr: float = 1e-4  # published: AdamW 1e-4, no weight decay
    weight_decay: float = 0.0
    loss: LossType = "hybrid"  # published: epsilon MSE + VLB term for the learned variance
    # What the network predicts (diffusers' words): epsilon (published) or v_prediction (Salimans & Ho 2022).
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    loss_weighting: LossWeighting = "none"  # min-snr: Min-SNR-gamma (Hang et al. 2023); none: published
    snr_gamma: float = 5.0  # gamma of --loss-weighting min-snr (the paper's 5)
    timestep_sampling: TimestepSampling = "uniform"  # uniform (published) or logit-normal over t / T
    warmup_steps: int = 0  # linear learning-rate warm-up from 0 over this many steps; 0: the full lr at once
    dropout: float = 0.0  # dropout in the UNet's residual blocks (the model's config records it)
    cond_drop: float = 0.0  # probability of the learned null representation (> 0 enables guidance)
    ema_decay: float = 0.9999
    grad_clip: float = 1.0  # max grad norm; 0 disables
    seed: int = 0
    # A trained RCDM (any --model source) whose weights a new run starts from: the UNet always, the conditioning
    # when the encoder is the same (rcdm.warm_start); None: random weights. A resumed run reads its checkpoint.
    init_from: str | None = None
    save_every: int = 1000
    # how many of the checkpoints at multiples of save_every are kept (the newest interim one is kept too)
    keep_checkpoints: int = 2
    # Also an interim checkpoint whenever this many minutes have passed since the last save, kept only until the
    # next one: a run killed between two save_every checkpoints (a CPU run's are half an hour apart) loses
    # minutes, not the half hour; 0: none.
    save_every_minutes: float = 10.0
    # The sampling vocabulary (rcdm.devices.Precision); "no" = "fp32" (accelerate's word, kept for old run.json).
    mixed_precision: Precision | Literal["no"] = "auto"
    gradient_checkpointing: bool = False
    # Standardise representations with the training set's per-dimension mean/std (stored in the model): helps
    # where an encoder's features share a large common component (e.g. CIFAR ResNets: mean pairwise cosine 0.8).
    standardize: bool = False
    compile: bool = False  # torch.compile the UNet (in place: checkpoints unchanged); the first steps compile
    feature_cache: str | None = None  # a .safetensors of precomputed representations (centre crops + flips)
    min_scale: float = 0.8  # random crop side as a fraction of the shorter side (1.0 with a feature cache)
    num_workers: int = 2
    log_every: int = 10  # steps per metrics.jsonl record
    # Split each step's batch into this many micro-batches (same global batch, same images and noise: the
    # model equals the one trained without accumulation up to float rounding).
    gradient_accumulation_steps: int = 1
    sample_every: int = 0  # steps between sample grids of fixed training images (RUN_DIR/samples); 0: none
    report_to: Literal["none", "tensorboard", "wandb", "all"] = "none"  # accelerate trackers


class WarmedUp(Protocol):
    """Settings with a learning rate and a linear warm-up (TrainConfig, AdaptConfig)."""

    lr: float
    warmup_steps: int


def learning_rate(cfg: WarmedUp, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warm-up over cfg.warmup_steps, then cfg.lr.

    A pure function of the step, so a resumed run continues the schedule exactly.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


# Settings a resumed run may change; any other difference from run.json is refused (it would be another run).
MUTABLE_ON_RESUME = frozenset(
    {
        "steps",
        "save_every",
        "keep_checkpoints",
        "save_every_minutes",
        "log_every",
        "sample_every",
        "report_to",
        "num_workers",
        "compile",  # how the same steps run (float rounding only), not what they compute
    }
)
REPORT_TO: tuple[str, ...] = ("none", "tensorboard", "wandb", "all")


def saved_fields(path: Path, settings: type) -> dict[str, Any] | None:
    """The fields of the dataclass `settings` recorded in the JSON file `path` (a run's settings), or None when
    there is no such file; a file that is not JSON is one line naming it."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError as e:
        raise RCDMError(f"{str(path)!r} is not valid JSON ({e}): restore it or start a new --out") from None
    names = {f.name for f in fields(settings)}
    return {k: v for k, v in saved.items() if k in names}


def saved_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The TrainConfig fields recorded in RUN_DIR/run.json, or None when there is none."""
    return saved_fields(Path(run_dir) / "run.json", TrainConfig)


def _comparable(name: str, value: Any) -> Any:
    if name == "mixed_precision":
        return training_precision(value)
    return list(value) if isinstance(value, tuple) else value


def setting_changes(
    saved: dict[str, Any],
    now: dict[str, Any],
    mutable: frozenset[str],
    comparable: Callable[[str, Any], Any] = lambda name, value: value,
) -> list[str]:
    """'name old -> new' for each recorded setting that differs now, except the `mutable` ones (a resume's check)."""
    return [
        f"{name} {saved[name]!r} -> {now[name]!r}"
        for name in sorted(now)
        if name in saved
        and name not in mutable
        and comparable(name, saved[name]) != comparable(name, now[name])
    ]


def check_resume_config(cfg: TrainConfig, run_dir: str | Path, image_size: int) -> None:
    """Refuse to resume with settings that differ from RUN_DIR/run.json, except MUTABLE_ON_RESUME."""
    saved = saved_config(run_dir)
    if saved is None:
        return
    now = {**asdict(cfg), "image_size": image_size}
    diffs = setting_changes(saved, now, MUTABLE_ON_RESUME, _comparable)
    if diffs:
        raise RCDMError(
            f"--resume of {str(run_dir)!r} with other settings than its run.json ({'; '.join(diffs)}): "
            "resume with the run's own settings (rcdm train --out RUN --resume needs no other flag), or start a "
            f"new --out; only {', '.join(sorted(MUTABLE_ON_RESUME))} may change"
        )


def validate_config(cfg: TrainConfig) -> None:
    """Refuse settings that would crash later or silently train something else, naming the value and range."""
    whole = {
        "steps": (cfg.steps, 1),
        "batch_size": (cfg.batch_size, 1),
        "save_every": (cfg.save_every, 1),
        "keep_checkpoints": (cfg.keep_checkpoints, 1),
        "log_every": (cfg.log_every, 1),
        "num_workers": (cfg.num_workers, 0),
        "sample_every": (cfg.sample_every, 0),
        "warmup_steps": (cfg.warmup_steps, 0),
    }
    for name, (value, low) in whole.items():
        if not isinstance(value, int) or value < low:
            raise RCDMError(
                f"--{name.replace('_', '-')} {value} is out of range: use a whole number >= {low}"
            )
    if cfg.preset not in PRESETS:
        raise RCDMError(f"unknown preset {cfg.preset!r}: choose one of {', '.join(PRESETS)}")
    div = 2 ** (len(PRESETS[cfg.preset]["block_out_channels"]) - 1)  # the UNet halves the image at each level
    if cfg.image_size is not None and (cfg.image_size < div or cfg.image_size % div):
        raise RCDMError(
            f"--image-size {cfg.image_size} does not fit preset {cfg.preset!r}: use a positive multiple of {div}"
        )
    if not (math.isfinite(cfg.save_every_minutes) and cfg.save_every_minutes >= 0):
        raise RCDMError(
            f"--save-every-minutes {cfg.save_every_minutes} is out of range: use minutes >= 0 (0: no interim "
            "checkpoints)"
        )
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise RCDMError(f"--lr {cfg.lr} must be a positive number (published: 1e-4)")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise RCDMError(f"weight_decay {cfg.weight_decay} must be >= 0")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise RCDMError(
            f"--ema-decay {cfg.ema_decay} is out of range: use a value in [0, 1) (published: 0.9999)"
        )
    if not (math.isfinite(cfg.grad_clip) and cfg.grad_clip >= 0):
        raise RCDMError(f"grad_clip {cfg.grad_clip} must be >= 0 (0 disables clipping)")
    if not 0.0 < cfg.min_scale <= 1.0:
        raise RCDMError(f"min_scale {cfg.min_scale} is out of range: use a fraction in (0, 1]")
    check_seed(cfg.seed)
    if not 0.0 <= cfg.cond_drop < 1.0:
        raise RCDMError(f"--cond-drop {cfg.cond_drop} is out of range: use a probability in [0, 1)")
    if cfg.loss not in ("simple", "hybrid"):
        raise RCDMError(f"unknown loss {cfg.loss!r}: choose simple or hybrid")
    if cfg.prediction not in PREDICTION_TYPES:
        raise RCDMError(
            f"unknown --prediction {cfg.prediction!r}: choose one of {', '.join(PREDICTION_TYPES)}"
        )
    if cfg.loss_weighting not in LOSS_WEIGHTINGS:
        raise RCDMError(
            f"unknown --loss-weighting {cfg.loss_weighting!r}: choose one of {', '.join(LOSS_WEIGHTINGS)}"
        )
    if not (math.isfinite(cfg.snr_gamma) and cfg.snr_gamma > 0):
        raise RCDMError(f"--snr-gamma {cfg.snr_gamma} must be a positive number (Min-SNR's paper: 5)")
    if cfg.timestep_sampling not in TIMESTEP_SAMPLINGS:
        raise RCDMError(
            f"unknown --timestep-sampling {cfg.timestep_sampling!r}: choose one of {', '.join(TIMESTEP_SAMPLINGS)}"
        )
    if not (math.isfinite(cfg.dropout) and 0.0 <= cfg.dropout < 1.0):
        raise RCDMError(f"--dropout {cfg.dropout} is out of range: use a probability in [0, 1)")
    if cfg.report_to not in REPORT_TO:
        raise RCDMError(f"unknown --report-to {cfg.report_to!r}: choose one of {', '.join(REPORT_TO)}")
    if cfg.gradient_accumulation_steps < 1 or cfg.batch_size % cfg.gradient_accumulation_steps:
        raise RCDMError(
            f"--gradient-accumulation-steps {cfg.gradient_accumulation_steps} must be at least 1 and divide the "
            f"batch size {cfg.batch_size} (each micro-batch is batch / steps images)"
        )


def check_output_folder(run_dir: Path) -> None:
    """The run folder must be (or be creatable as) a writable folder, checked before any work starts.

    Beyond `check_writable_dir`, it is created and written once: that also catches what os.access cannot see
    (an immutable folder, a read-only mount, root's permission bypass).
    """
    check_writable_dir(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        test = run_dir / f".write-test-{os.getpid()}"
        test.write_bytes(b"")
        test.unlink()
    except OSError as e:
        raise RCDMError(f"cannot write the run folder {str(run_dir)!r}: {e.strerror or e}") from None
