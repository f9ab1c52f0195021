"""The settings of `rcdm recipe ssl` (SSLConfig, written to RUN_DIR/recipe.json) and their checks, which refuse
before any work what would crash later or train something else, as `rcdm train`'s do (train_config.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from ..checks import check_seed
from ..encoders.cifar import MAX_DEPTH, MAX_PROJECTOR_LAYERS, MAX_PROJECTOR_WIDTH, MAX_WIDTH
from ..errors import RCDMError

Objective = Literal["vicreg", "supervised"]
OBJECTIVES: tuple[str, ...] = ("vicreg", "supervised")


@dataclass(frozen=True)
class SSLConfig:
    """Run settings for `train_encoder`; written to RUN_DIR/recipe.json. Defaults: the GPU recipe (docs/recipes.md)."""

    data: str  # CIFAR-10 root with train/<class>/*.jpg and test/<class>/*.jpg, or the cifar10-jpeg.tar.gz
    objective: Objective = "vicreg"
    epochs: int = 30
    batch_size: int = 512
    lr: float = 2e-3  # AdamW peak learning rate (linear warm-up, cosine decay to 0)
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    depth: int = 20
    width: int = 2
    projector: tuple[int, ...] = (512, 512, 512)  # VICReg expander widths (ignored for supervised)
    # VICReg coefficients (paper defaults): invariance, variance, covariance.
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0
    # SSL augmentations (VICReg / SimCLR CIFAR recipe). The supervised objective uses pad-4 crop + flip.
    min_crop: float = 0.2  # RandomResizedCrop scale lower bound
    jitter: float = 0.8  # probability of colour jitter (0.4, 0.4, 0.2, 0.1)
    grayscale: float = 0.2
    solarize: float = 0.1
    blur: float = 0.0  # off by default at 32 px
    knn_k: int = 20
    knn_temperature: float = 0.07
    limit: int | None = None  # use only this many images of each split, class-balanced (tests, smoke runs)
    smoke: bool = False  # a tiny / test run: `rcdm recipe pack` refuses it without --allow-smoke
    seed: int = 0
    num_workers: int = 8
    mixed_precision: Literal["auto", "fp32", "no", "bf16"] = "auto"  # auto: bf16 on GPU and bf16-native CPUs


def resolve_config(given: dict) -> SSLConfig:
    """CLI options (None = unset) -> SSLConfig, checked; a tuple field accepts a list."""
    cfg = SSLConfig(data=given.pop("data"))
    clean = {k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items() if v is not None}
    return validate_ssl_config(replace(cfg, **clean))


def validate_ssl_config(cfg: SSLConfig) -> SSLConfig:
    """Refuse, in one line naming the option, settings that would crash later or train something else (as
    `rcdm train` checks its own): the architecture within the bounds an encoder card may state, counts >= 1,
    rates finite and positive, probabilities in [0, 1]."""
    whole = {
        "epochs": (cfg.epochs, 1, None),
        "batch-size": (cfg.batch_size, 2, None),  # VICReg's variance and covariance need two views or more
        "warmup-epochs": (cfg.warmup_epochs, 0, None),
        "width": (cfg.width, 1, MAX_WIDTH),
        "depth": (cfg.depth, 8, MAX_DEPTH),
        "num-workers": (cfg.num_workers, 0, None),
        "knn-k": (cfg.knn_k, 1, None),
    }
    if cfg.limit is not None:
        whole["limit"] = (cfg.limit, 1, None)
    for name, (value, lo, hi) in whole.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < lo
            or (hi is not None and value > hi)
        ):
            top = f" and <= {hi}" if hi is not None else ""
            raise RCDMError(f"--{name} {value} is out of range: use a whole number >= {lo}{top}")
    if (cfg.depth - 2) % 6:
        raise RCDMError(f"--depth {cfg.depth} is not 6n + 2: use 8, 14, 20, 32, 44, 56, ...")
    if cfg.objective not in OBJECTIVES:
        raise RCDMError(f"unknown --objective {cfg.objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if cfg.objective == "vicreg" and (
        not cfg.projector
        or len(cfg.projector) > MAX_PROJECTOR_LAYERS
        or any(
            isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_PROJECTOR_WIDTH
            for v in cfg.projector
        )
    ):
        raise RCDMError(
            f"--projector {' '.join(map(str, cfg.projector))} is out of range: give 1 to {MAX_PROJECTOR_LAYERS} "
            f"widths, each a whole number 1..{MAX_PROJECTOR_WIDTH} (VICReg's: 8192 8192 8192; ours: 512 512 512)"
        )
    positive = {"lr": cfg.lr, "knn-temperature": cfg.knn_temperature}
    for name, value in positive.items():
        if not (math.isfinite(value) and value > 0):
            raise RCDMError(f"--{name} {value} must be a positive number")
    at_least_zero = {
        "weight-decay": cfg.weight_decay, "sim-coeff": cfg.sim_coeff, "std-coeff": cfg.std_coeff,
        "cov-coeff": cfg.cov_coeff,
    }  # fmt: skip
    for name, value in at_least_zero.items():
        if not (math.isfinite(value) and value >= 0):
            raise RCDMError(f"{name.replace('-', '_')} {value} must be a number >= 0")
    for name, value in {"jitter": cfg.jitter, "grayscale": cfg.grayscale, "solarize": cfg.solarize,
                        "blur": cfg.blur}.items():  # fmt: skip
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise RCDMError(f"{name} {value} is a probability: use a number in [0, 1]")
    if not (math.isfinite(cfg.min_crop) and 0 < cfg.min_crop <= 1):
        raise RCDMError(f"min_crop {cfg.min_crop} is out of range: use a fraction in (0, 1]")
    check_seed(cfg.seed)
    return cfg
