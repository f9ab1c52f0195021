"""The CPU table (benchmarks/results/cpu-2core.md): what a user of the CPU path gets, per preset, fp32 vs bf16.

    python benchmarks/speed.py --cpu-table --cifar ~/.cache/rcdm/cifar10 \
        --encoder cifar-resnet20:../shared/data/cifar-resnet/resnet20-12fca82f.th \
        --out benchmarks/results/cpu-2core.md

Rows: `rcdm.train.train` itself (the real loop: data decoded once, encoder in the loop, hybrid loss, AdamW,
EMA; img/s over the steps after a warm-up), 8 samples of one representation (dpm++ 20 and ddpm 100, median
of repeats after one warm-up call), and the feature cache of the CIFAR-10 train split (decode into the uint8
cache, then encode centre crops + mirrors). Run it on an otherwise idle machine: the header records the
thread count and the load average at the start.
"""

from __future__ import annotations

import datetime
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rcdm.data import decode_images, list_images
from rcdm.devices import cpu_has_native_bf16, cpu_model
from rcdm.diffusion import SamplingConfig, sample
from rcdm.encoders import create_encoder
from rcdm.encoders.cache import cached_representations
from rcdm.model import PRESETS, RCDM
from rcdm.train import TrainConfig, train

TARGETS = {
    "train cifar32-small bf16 (img/s)": 45.0,
    "8 samples dpm++ 20 (s)": 1.0,
    "feature cache 50k (s)": 180.0,
}


def _subset(root: Path, n: int, out: Path) -> Path:
    """A class-balanced copy of the first n images of root/<class>/ (symlinks)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    per = max(1, n // len(classes))
    for c in classes:
        (out / c.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(c.iterdir())[:per]:
            (out / c.name / f.name).symlink_to(f.resolve())
    return out


def train_rate(
    preset: str, precision: str, data: Path, encoder: str, batch: int, steps: int, warm: int
) -> float:
    stamps: list[float] = []
    cfg = TrainConfig(
        data=str(data),
        encoder=encoder,
        preset=preset,
        steps=warm + steps,
        batch_size=batch,
        save_every=10**9,
        num_workers=0,
        mixed_precision=precision,
    )
    with tempfile.TemporaryDirectory() as run:
        train(cfg, Path(run) / "run", progress=False, on_step=lambda s, _: stamps.append(time.perf_counter()))
    return batch * steps / (stamps[-1] - stamps[warm - 1])


def sample_seconds(preset: str, precision: str, dim: int, sampler: str, steps: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = RCDM.from_preset(preset, representation_dim=dim).eval()
    rep = torch.randn(1, dim).expand(8, -1)
    cfg = SamplingConfig(sampler=sampler, steps=steps, precision=precision)
    sample(model, rep, cfg, progress=False)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sample(model, rep, cfg, progress=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def feature_cache_seconds(train_dir: Path, encoder: str) -> tuple[float, float, int]:
    """(decode s, encode s, images) for the whole folder, from a cold decode cache."""
    files = list_images(train_dir)
    enc = create_encoder(encoder)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        decoded = decode_images(files, cache_dir=Path(tmp), progress=False)
        t1 = time.perf_counter()
        cached_representations(
            enc, files, Path(tmp) / "features.safetensors", flipped=True, decoded=decoded, progress=False
        )
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, len(files)


def cpu_table(args) -> str:
    cifar = Path(args.cifar).expanduser()
    presets = args.cpu_presets
    rows: list[tuple[str, str, str, str]] = []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = [
        "# CPU speed (benchmarks/speed.py --cpu-table)",
        "",
        f"{cpu_model()}, {os.cpu_count()} cores visible, "
        f"{torch.get_num_threads()} torch threads, native bf16: {cpu_has_native_bf16()}; torch {torch.__version__}; "
        f"{datetime.date.today().isoformat()}; 1-min load average at start {load:.2f}"
        + ("; QUICK SMOKE RUN: not a measurement" if args.quick else ""),
        "",
        f"train: `rcdm.train.train` on {args.cpu_train_images} CIFAR-10 train images decoded in memory, encoder "
        f"`{args.encoder.split(':')[0]}` in the loop, hybrid loss, AdamW, EMA, batch {args.cpu_train_batch}; "
        f"img/s over {args.cpu_train_steps} steps after {args.cpu_train_warmup} warm-up steps. sample: 8 samples "
        "of one representation, median of repeats after a warm-up call. Targets (issue 12): "
        + ", ".join(f"{k} {'>=' if 'img/s' in k else '<='} {v:g}" for k, v in TARGETS.items()),
        "",
        "| preset | what | fp32 | bf16 | bf16 / fp32 |",
        "| --- | --- | --- | --- | --- |",
    ]

    def write() -> str:
        text = "\n".join(header + [f"| {' | '.join(r)} |" for r in rows]) + "\n"
        if args.out:
            Path(args.out).write_text(text)
        return text

    with tempfile.TemporaryDirectory() as tmp:
        data = _subset(cifar / "train", args.cpu_train_images, Path(tmp) / "data")
        dim = create_encoder(args.encoder).dim
        for preset in presets:
            if preset not in PRESETS:
                raise SystemExit(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
            r = {
                p: train_rate(
                    preset,
                    p,
                    data,
                    args.encoder,
                    args.cpu_train_batch,
                    args.cpu_train_steps,
                    args.cpu_train_warmup,
                )
                for p in ("fp32", "bf16")
            }
            rows.append(
                (
                    preset,
                    "train img/s",
                    f"{r['fp32']:.1f}",
                    f"{r['bf16']:.1f}",
                    f"{r['bf16'] / r['fp32']:.2f}x",
                )
            )
            write()
            for sampler, steps in (("dpm++", args.dpm_steps), ("ddpm", args.ddpm_steps)):
                s = {
                    p: sample_seconds(preset, p, dim, sampler, steps, args.sample_repeats)
                    for p in ("fp32", "bf16")
                }
                rows.append(
                    (
                        preset,
                        f"8 samples, {sampler} {steps} (s)",
                        f"{s['fp32']:.2f}",
                        f"{s['bf16']:.2f}",
                        f"{s['fp32'] / s['bf16']:.2f}x faster",
                    )
                )
                write()
        train_dir = cifar / "train"
        if args.quick:
            train_dir = _subset(cifar / "train", 200, Path(tmp) / "cache-data")
        dec, enc, n = feature_cache_seconds(train_dir, args.encoder)
        rows.append(
            (
                "-",
                f"feature cache, {n} images: decode (cold) + encode (auto precision)",
                "",
                f"{dec:.1f} s + {enc:.1f} s = {dec + enc:.1f} s ({n / (dec + enc):.0f} img/s)",
                "",
            )
        )
    shutil.rmtree(Path(tmp), ignore_errors=True)
    return write()
