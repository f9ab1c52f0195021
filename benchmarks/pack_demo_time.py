"""How long `rcdm demo` takes on a bundle of the real sizes, per guidance weight (target: 60 s on 2 CPU cores).

    python benchmarks/pack_demo_time.py --cifar ~/.cache/rcdm/cifar10 --guidance 1 3 [--preset cpu] [--repeats 2]

Builds a bundle of UNTRAINED models of the pack's sizes (ResNet-20 x1 encoders with the 512-512-512 projector,
three cifar32-small RCDMs with a null representation, one training step each; packed with --allow-smoke), then
times the whole `rcdm demo --bundle` command (Python start, loading and writing included) per guidance weight.
Untrained weights cost the same compute as trained ones; guidance > 1 runs the network on twice the batch.
Run it on an otherwise idle machine: the table records the load average at the start.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rcdm.pack.rcdms import RCDMRecipe, train_rcdms
from rcdm.pack.ssl import SSLConfig, train_encoder
from rcdm.pack.write import pack


def build_bundle(cifar: str, root: Path) -> Path:
    enc = dict(epochs=1, batch_size=20, limit=20, depth=20, width=1, num_workers=0, warmup_epochs=0)
    train_encoder(SSLConfig(data=cifar, **enc), root / "ssl", progress=False)
    train_encoder(SSLConfig(data=cifar, objective="supervised", **enc), root / "supervised", progress=False)
    recipe = RCDMRecipe(
        data=str(Path(cifar) / "test"), steps=1, batch_size=4, save_every=1, num_workers=0, cond_drop=0.1
    )
    train_rcdms(recipe, root, progress=False)
    images = sorted((Path(cifar) / "test").glob("*/0001.jpg"))[:8]
    pack(root, root / "bundle", allow_smoke=True, demo_images=images)
    return root / "bundle"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar", required=True, help="a CIFAR-10 root with train/ and test/ class folders")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = build_bundle(args.cifar, Path(tmp))
        load = os.getloadavg()[0]
        rows = []
        for g in args.guidance:
            times = []
            for r in range(args.repeats):
                out = Path(tmp) / f"demo-{g}-{r}"
                cmd = [sys.executable, "-m", "rcdm.cli", "demo", "--bundle", str(bundle), "--out", str(out)]
                cmd += ["--preset", args.preset, "--guidance", str(g), "--no-progress", "--device", "cpu"]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times.append(time.perf_counter() - t0)
            rows.append((g, times))
    print(
        f"`rcdm demo --preset {args.preset}` on untrained models of the pack's sizes; {os.cpu_count()} CPUs, "
        f"torch threads default; load average {load:.2f} at the start\n"
    )
    print("| guidance | seconds per run |")
    print("| ---: | --- |")
    for g, times in rows:
        print(f"| {g:g} | {', '.join(f'{t:.1f}' for t in times)} |")


if __name__ == "__main__":
    main()
