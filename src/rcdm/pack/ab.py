"""Training-recipe A/B: one RCDM trained from scratch under each recipe variant for the same number of images.

Every variant starts from the CPU pack's recipe (`BASELINE`) and changes what its entry in `VARIANTS` names, with
the same encoder, seed and data order, so two runs differ only by the variant. Each run is an ordinary
`rcdm.train` run folder, ROOT/<variant>, with a checkpoint every `save_every` steps kept: the evaluation points
(by images seen, so a batch-128 variant is compared with a batch-64 one at equal images) are among them, and so
is the curve against CPU seconds (metrics.jsonl's `cpu_s`) for comparisons at equal CPU time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..devices import cpu_model, device_name
from ..diffusion import sampling_preset
from ..encoders import create_encoder
from ..errors import RCDMError
from ..files import write_text_atomic
from ..loading import encoder_for, load_model
from ..runs import Checkpoints
from ..train import TrainConfig, TrainResult, train
from .evaluation import evaluation_images, score_model
from .rcdms import training_sessions

log = logging.getLogger(__name__)

# The CPU pack's RCDM recipe before the A/B (`rcdm recipe rcdm --profile cpu --prediction epsilon`), its control.
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
    ab: ABConfig,
    root: str | Path,
    names: list[str],
    *,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, TrainResult | None]:
    """Train each variant into ROOT/<name>, resuming one that has checkpoints; one that has seen `ab.images` is
    left alone. A run trained to an earlier budget (`with_images`, as `scripts/cpu_ab.sh` does to score the 64k
    point before going on) goes on to this one: the steps may grow on resume and the learning rate does not depend
    on them. extra: settings over the variant's (a tiny preset in tests)."""
    # every name checked before any training
    configs = {name: variant_config(ab, name, extra) for name in names}
    results: dict[str, TrainResult | None] = {}
    for name, cfg in configs.items():
        run_dir = Path(root) / name
        ckpts = Checkpoints(run_dir)
        latest = ckpts.latest()
        reached = ckpts.state(latest, "step")["step"] if latest is not None else 0
        if (run_dir / "model" / "config.json").is_file() and reached >= cfg.steps:
            log.info("%s: finished (%s)", name, run_dir)
            results[name] = None
            continue
        resume = latest is not None
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


def eval_path(root: str | Path, name: str, images: int, guidance: float) -> Path:
    return Path(root) / name / "eval" / f"{images}-g{guidance:g}.json"


def evaluate_variants(
    ab: ABConfig,
    root: str | Path,
    names: list[str],
    judge: str,
    cifar_root: str | Path,
    *,
    guidances: Sequence[float] = (3.0, 5.0),
    num_images: int = 1000,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> list[Path]:
    """Score each variant's checkpoint at each evaluation point and guidance (`evaluation.score_model`) into
    ROOT/<name>/eval/<images>-g<guidance>.json; a score already written is kept, a missing checkpoint skipped."""
    for name in names:
        variant_config(ab, name)  # every name checked before any work
    images = evaluation_images(cifar_root, num_images)
    judge_enc = create_encoder(judge, "backbone").to(device)
    written = []
    for name in names:
        for seen, step in eval_steps(ab, name).items():
            ckpt = Path(root) / name / "checkpoints" / f"step-{step:08d}"
            todo = [g for g in guidances if not eval_path(root, name, seen, g).is_file()]
            if not todo:
                continue
            if not (ckpt / "state.json").is_file():
                log.info("%s: no checkpoint at step %d (%d images) yet", name, step, seen)
                continue
            model = load_model(ckpt / "ema", device=device)
            enc = encoder_for(model).to(device)
            for g in todo:
                score = score_model(
                    model,
                    enc,
                    judge_enc,
                    images,
                    replace(sampling_preset("fast"), guidance=g),
                    progress=progress,
                )
                path = eval_path(root, name, seen, g)
                path.parent.mkdir(parents=True, exist_ok=True)
                record = {
                    "variant": name,
                    "images_seen": seen,
                    "step": step,
                    "judge": judge,
                    "judge_identity": judge_enc.identity,  # its weights' digest: the path above is this machine's
                    # the record stands alone once the run folder is gone (docs/recipes.md keeps the records)
                    "training_cpu_s": _cpu_seconds_at(Path(root) / name, step),
                    "machine": cpu_model(),
                    "device": device_name(torch.device(device)),  # where the sampling ran
                    **score.record(),
                }
                write_text_atomic(path, json.dumps(record, indent=2))
                log.info("%s at %d images, guidance %g: %s", name, seen, g, score)
                written.append(path)
    return written


def _cpu_seconds_at(run_dir: Path, step: int) -> float | None:
    """CPU seconds the run spent up to checkpoint `step`, summed over its sessions; None when unknown."""
    total, reached = 0.0, False
    for session in training_sessions(run_dir):
        done = [r for r in session if r["step"] <= step]
        if done:
            if "cpu_s" not in done[-1]:
                return None
            total += float(done[-1]["cpu_s"])
            reached = reached or done[-1]["step"] == step
    return total if reached else None


def ab_table(ab: ABConfig, root: str | Path, names: list[str] | None = None) -> str:
    """A markdown table: each variant at each point it was scored at (its eval/ records: the A/B's evaluation
    points, or others, such as cifar32's at equal CPU time), at its best guidance (highest class agreement, then
    rank-1), with the CPU seconds its training took to get there."""
    names = names or sorted(p.name for p in Path(root).iterdir() if (p / "eval").is_dir())
    header = (
        "| variant | images seen | best guidance | class agreement | rank-1 | mean rank | Fréchet (ResNet-56) "
        "| other guidance (agreement / rank-1) | training CPU s |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
    )
    lines = [header]
    for name in names:
        batch = variant_config(ab, name).batch_size
        scored: dict[int, list[dict]] = {}  # images seen -> its records (eval_path's names: IMAGES-gG.json)
        for p in sorted((Path(root) / name / "eval").glob("*-g*.json")):
            scored.setdefault(int(p.name.split("-g")[0]), []).append(json.loads(p.read_text()))
        for seen, rows in sorted(scored.items()):
            step = seen // batch
            rows.sort(key=lambda r: (r["class_agreement"] or 0.0, r["rank1"]), reverse=True)
            best, others = rows[0], rows[1:]
            cpu = best.get("training_cpu_s", _cpu_seconds_at(Path(root) / name, step))
            lines.append(
                f"| {name} | {seen:,} | {best['guidance']:g} | {best['class_agreement']:.3f} | {best['rank1']:.3f} "
                f"| {best['mean_rank']:.1f} | {best['frechet']:.2f} | "
                + ", ".join(
                    f"g{r['guidance']:g}: {r['class_agreement']:.3f} / {r['rank1']:.3f}" for r in others
                )
                + f" | {'' if cpu is None else f'{cpu:,.0f}'} |"
            )
    return "\n".join(lines) + "\n"
