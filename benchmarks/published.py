"""Wall time of the README's published-models command, end to end, on this machine; one table.

    python benchmarks/published.py                          # dpm++ 20 steps and ddpm 100 steps, 8 samples
    python benchmarks/published.py --samplers dpm++ --num-samples 2 --out published.md

The real checkpoints cannot be downloaded everywhere (and are 1.7 GB), so this builds files with the published
layouts and random weights, which cost the same arithmetic: an RCDM checkpoint with the 494 keys and shapes of
`rcdm_ema_dino_trunk.pt` (`any_trunk` in ../shared/official-rcdm/rcdm-128-state-dict-layout.json), passed with `--weights`, and a DINO ResNet-50 checkpoint with the published nesting, put
where the download would land (`$RCDM_CACHE/official`, a temporary folder). Then it runs

    rcdm sample --model official:dino-backbone --weights FILE --images photo.png --num-samples N --sampler S

in a fresh process per row and times it from the outside. A first row times the one-time conversion into the
cache (a fresh process that only loads the named model); the sampler rows then reuse the converted model, as a
user's later calls would, so a first call costs the conversion row plus its sampler row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LAYOUT = Path(__file__).resolve().parents[2] / "shared" / "official-rcdm" / "rcdm-128-state-dict-layout.json"


def published_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the key layout of the published DINO-trunk checkpoint (norms at 1, the rest N(0, 0.02))."""
    if not LAYOUT.is_file():
        raise SystemExit(f"needs {LAYOUT} (the published key layout)")
    shapes = json.loads(LAYOUT.read_text())["models"]["any_trunk"]["keys"]
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in shapes.items():
        norm = len(shape) == 1 and any(p in k for p in ("in_layers.0", "out_layers.0", "norm", "out.0"))
        if norm and k.endswith("weight"):
            state[k] = torch.ones(shape)
        else:
            state[k] = torch.randn(shape, generator=g) * 0.02
    return state


def dino_checkpoint() -> dict:
    """A DINO ResNet-50 full checkpoint with the published nesting (teacher, module./backbone./head. prefixes)."""
    from rcdm.encoders.published import PUBLISHED, build_projector, resnet50_trunk

    trunk = resnet50_trunk().state_dict()
    head = build_projector(PUBLISHED["resnet50.dino_in1k"].method).state_dict()
    teacher = {f"module.backbone.{k}": v for k, v in trunk.items()}
    teacher |= {f"module.head.mlp.{k}": v for k, v in head.items()}
    teacher["module.head.last_layer.weight_g"] = torch.ones(60000, 1)
    return {"teacher": teacher, "epoch": 100}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samplers", nargs="+", default=["dpm++", "ddpm"], choices=["dpm++", "ddim", "ddpm"])
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--device", default=None, help="passed to rcdm sample (default: its own)")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here too")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rcdm-published-bench-"))  # about 3.3 GB; removed at the end
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    from PIL import Image

    from rcdm.encoders.published import PUBLISHED

    env = dict(os.environ, RCDM_CACHE=str(tmp / "cache"))
    official = tmp / "cache" / "official"
    official.mkdir(parents=True)
    torch.save(dino_checkpoint(), official / PUBLISHED["resnet50.dino_in1k"].weights.filename)
    weights = tmp / "rcdm_ema_dino_trunk.pt"
    torch.save(published_state(), weights)
    photo = tmp / "photo.png"
    pixels = torch.randint(
        0, 256, (300, 400, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    Image.fromarray(pixels.numpy()).save(photo)

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    threads = torch.get_num_threads()
    lines = [
        f"card: {card}, {threads} torch threads; torch {torch.__version__}; {datetime.date.today()}",
        "command: rcdm sample --model official:dino-backbone --weights FILE --images photo.png "
        f"--num-samples {args.num_samples} --sampler S (random weights, published layouts; fresh process per row)",
        "",
        "| sampler | steps | samples | wall time (s) | per sample (s) | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    steps = {"dpm++": 20, "ddim": 50, "ddpm": 100}
    load = (
        f"from rcdm.loading import load_model; load_model('official:dino-backbone', weights={str(weights)!r})"
    )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", load], env=env, check=True)
    row = (
        f"| (first use: conversion into the cache) | | | {time.perf_counter() - t0:.1f} | | once per model |"
    )
    print(row, flush=True)
    lines.append(row)
    for sampler in args.samplers:
        cmd = [sys.executable, "-m", "rcdm.cli", "sample", "--model", "official:dino-backbone"]
        cmd += ["--weights", str(weights), "--images", str(photo), "--num-samples", str(args.num_samples)]
        cmd += ["--sampler", sampler, "--out", str(tmp / f"out-{sampler}")]
        cmd += ["--device", args.device] if args.device else []
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        wall = time.perf_counter() - t0
        per = wall / args.num_samples
        row = (
            f"| {sampler} | {steps[sampler]} | {args.num_samples} | {wall:.1f} | {per:.1f} | from the cache |"
        )
        print(row, flush=True)
        lines.append(row)
        if args.out:
            args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
