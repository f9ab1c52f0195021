"""The inversion table (benchmarks/results/invert-cpu-2core.md): how well `rcdm invert` redraws real images, and what
the noise keeps, on the bundled pack.

    python benchmarks/invert.py --data ../shared/data/cifar10/cifar10-jpeg.tar.gz --images 50 \
        --out benchmarks/results/invert-cpu-2core.md

Images: the first --images class-balanced CIFAR-10 test images (no RCDM trained on them). Table 1: mean
reconstruction PSNR per pack RCDM against the number of DDIM steps (guidance 1, the default precision), with the
seconds each round trip took. Table 2: `rcdm analyze noise` on the backbone and projector RCDMs (50 steps,
--fresh samples from fresh noise): pixel RMS distance to the original of the reconstruction, of the fresh
samples, and of the other images, and the representation's share.
"""

from __future__ import annotations

import argparse
import datetime
import time
from dataclasses import replace
from pathlib import Path

import torch

from rcdm.analysis.noise import noise_keeps
from rcdm.devices import cpu_model
from rcdm.inversion import INVERT_DEFAULTS, invert
from rcdm.loading import encoder_for, load_model
from rcdm.pack.cifar10 import cifar10_root
from rcdm.pack.evaluation import evaluation_images

MODELS = ("cifar10-vicreg-backbone", "cifar10-vicreg-projector", "cifar10-supervised")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="CIFAR-10 root or .tar.gz")
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--fresh", type=int, default=4, help="fresh samples per image in the noise analysis")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    images = evaluation_images(cifar10_root(args.data), args.images)
    lines = [
        "# Inversion on the pack (`rcdm invert`, `rcdm analyze noise`)",
        "",
        f"Measured {datetime.date.today()} on {cpu_model()}, {torch.get_num_threads()} thread(s), by "
        f"`python benchmarks/invert.py --images {args.images}`: the first {args.images} class-balanced CIFAR-10 "
        "test images, guidance 1, precision auto (bf16 autocast on this CPU).",
        "",
        "## Reconstruction PSNR (dB) against DDIM steps",
        "",
        "| model | " + " | ".join(f"{s} steps" for s in args.steps) + " |",
        "| --- | " + " | ".join("---:" for _ in args.steps) + " |",
    ]
    for name in MODELS:
        model = load_model(name)
        enc = encoder_for(model)
        cells = []
        for steps in args.steps:
            t = time.perf_counter()
            inv = invert(model, enc, images, replace(INVERT_DEFAULTS, steps=steps))
            cells.append(
                f"{inv.mean_psnr:.2f} (min {float(inv.psnr.min()):.1f}; {time.perf_counter() - t:.0f} s)"
            )
            print(name, steps, cells[-1], flush=True)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "(mean; the worst image and the seconds for the whole round trip of all images in brackets)",
        "",
        f"## What the noise keeps ({INVERT_DEFAULTS.steps} steps, {args.fresh} fresh samples per image)",
        "",
        "Pixel RMS distance to the original, in [0, 1] units; share = (other - fresh) / (other - reconstruction): "
        "1 if the representation alone redraws the image as closely as the inverted noise does, 0 if its samples "
        "are no closer than another test image.",
        "",
        "| model | reconstruction | fresh samples | other images | share (mean) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in MODELS[:2]:
        model = load_model(name)
        res = noise_keeps(model, encoder_for(model), images, num_samples=args.fresh)
        s = res.summary()
        row = (
            f"| {name} | {s['mean_d_reconstruction']:.4f} | {s['mean_d_fresh']:.4f} | {s['mean_d_other']:.4f} "
            f"| {s['mean_share']:.3f} |"
        )
        print(row, flush=True)
        lines.append(row)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
