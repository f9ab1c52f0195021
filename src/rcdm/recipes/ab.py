"""Training-recipe A/B: one RCDM trained from scratch under each recipe variant for the same number of images.

Every variant starts from the CPU pack's recipe (`BASELINE`) and changes what its entry in `VARIANTS` names, with
the same encoder, seed and data order, so two runs differ only by the variant. Each run is an ordinary
`rcdm.train` run folder, ROOT/<variant>, with a checkpoint every `save_every` steps kept: the evaluation points
(by images seen, so a batch-128 variant is compared with a batch-64 one at equal images) are among them, and so
is the curve against CPU seconds (metrics.jsonl's `cpu_s`) for comparisons at equal CPU time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import RCDMError
from ..runs import latest_checkpoint
from ..train import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)

# The CPU pack's RCDM recipe (`rcdm recipe rcdm --profile cpu`), the A/B's control.
BASELINE: dict[str, Any] = dict(
    preset="cifar32-small",
    batch_size=64,
    lr=5e-4,
    ema_decay=0.999,
    loss="hybrid",
    cond_drop=0.1,
    standardize=True,
    num_workers=0,
)

# name -> TrainConfig changes over BASELINE. Sources: Min-SNR-gamma (Hang et al. 2023), v-prediction (Salimans &
# Ho 2022), logit-normal timesteps (Esser et al. 2024), larger batch with warm-up, UNet dropout 0.1 (Ho et al.
# 2020 used it on CIFAR-10), the wider cifar32 preset (compared at equal CPU time, not equal images).
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "min-snr": dict(loss_weighting="min-snr", snr_gamma=5.0),
    "v-prediction": dict(prediction="v_prediction"),
    "logit-normal": dict(timestep_sampling="logit-normal"),
    "lr1e-3-batch128": dict(lr=1e-3, batch_size=128, warmup_steps=100),
    "dropout": dict(dropout=0.1),
    "cifar32": dict(preset="cifar32"),
}


@dataclass(frozen=True)
class ABConfig:
    """What every variant of one A/B shares."""

    data: str  # the training image folder (CIFAR-10's train/)
    encoder: str = "rcdm-cifar:cifar10-vicreg-r20w1"  # the pack's VICReg encoder
    feature: str = "backbone"
    images: int = 128_000  # images seen by every variant
    eval_images: tuple[int, ...] = (64_000, 128_000)  # evaluation points, in images seen
    save_every_images: int = 16_000  # a checkpoint (kept) every this many images
    seed: int = 0


def variant_config(ab: ABConfig, name: str, extra: dict[str, Any] | None = None) -> TrainConfig:
    """The TrainConfig of variant `name` (a VARIANTS key, or names joined by '+' to combine them)."""
    changes: dict[str, Any] = {}
    for part in name.split("+"):
        if part not in VARIANTS:
            raise RCDMError(f"unknown A/B variant {part!r}: choose from {', '.join(VARIANTS)} (join with +)")
        changes.update(VARIANTS[part])
    settings = {**BASELINE, **changes, **(extra or {})}
    batch = settings["batch_size"]
    for images in (ab.images, *ab.eval_images, ab.save_every_images):
        if images % batch:
            raise RCDMError(
                f"{images} images is not a whole number of batches of {batch} for variant {name!r}: "
                "choose image counts that the batch divides"
            )
    return TrainConfig(
        data=ab.data,
        encoder=ab.encoder,
        feature=ab.feature,  # type: ignore[arg-type]
        steps=ab.images // batch,
        save_every=ab.save_every_images // batch,
        keep_checkpoints=ab.images // ab.save_every_images + 1,
        seed=ab.seed,
        **settings,
    )


def eval_steps(ab: ABConfig, name: str) -> dict[int, int]:
    """{images seen: checkpoint step} of variant `name`'s evaluation points."""
    batch = variant_config(ab, name).batch_size
    return {images: images // batch for images in ab.eval_images}


def train_variants(
    ab: ABConfig, root: str | Path, names: list[str], *, progress: bool = True
) -> dict[str, TrainResult | None]:
    """Train each variant into ROOT/<name>, resuming one that has checkpoints; a finished one is left alone."""
    configs = {name: variant_config(ab, name) for name in names}  # every name checked before any training
    results: dict[str, TrainResult | None] = {}
    for name, cfg in configs.items():
        run_dir = Path(root) / name
        if (run_dir / "model" / "config.json").is_file():
            log.info("%s: finished (%s)", name, run_dir)
            results[name] = None
            continue
        resume = latest_checkpoint(run_dir) is not None
        log.info(
            "%s: %s %d steps of %d images",
            name,
            "resuming" if resume else "training",
            cfg.steps,
            cfg.batch_size,
        )
        results[name] = train(cfg, run_dir, resume=resume, progress=progress)
    return results


def with_images(ab: ABConfig, images: int | None) -> ABConfig:
    """The A/B with another image budget (the evaluation points past it dropped)."""
    if images is None:
        return ab
    return replace(
        ab, images=images, eval_images=tuple(i for i in ab.eval_images if i <= images) or (images,)
    )
