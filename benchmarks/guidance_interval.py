"""Guidance at every step against guidance in a noise-level interval (`--guidance-interval`): faithfulness,
picture quality, diversity and time on CIFAR-10 test images (docs/beyond.md, "Guide some steps only").

    python benchmarks/guidance_interval.py --model cifar10-vicreg-backbone --cifar ~/.cache/rcdm/cifar10 \\
        --judge cifar-resnet56:../shared/data/cifar-resnet/resnet56-4bfd9763.th --images 200 --steps 15 \\
        --settings 1 3 3@0.28,5.42 5 5@0.28,10 5@0.28,5.42

Each setting is a guidance weight W, or W@LOW,HIGH for guidance only at noise levels sigma in (LOW, HIGH]. Every
setting samples the same images from the same noise (two samples each, for diversity) with dpm++; one Markdown row
per setting, printed as it finishes. Run it on an otherwise idle machine: the wall times are compared.
"""

from __future__ import annotations

import argparse

from rcdm import create_encoder, encoder_for, load_model
from rcdm.diffusion import SamplingConfig
from rcdm.pack.evaluation import evaluation_images, score_model


def setting(text: str) -> tuple[float, tuple[float, float] | None]:
    weight, _, interval = text.partition("@")
    low_high = tuple(float(v) for v in interval.split(",")) if interval else None
    if low_high is not None and len(low_high) != 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give W or W@LOW,HIGH")
    return float(weight), low_high


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cifar10-vicreg-backbone", help="an RCDM with a null representation")
    ap.add_argument("--cifar", required=True, help="CIFAR-10 root (its test/ split is used)")
    ap.add_argument("--judge", required=True, help="judge encoder spec (no RCDM should be conditioned on it)")
    ap.add_argument("--images", type=int, default=200, help="class-balanced test images")
    ap.add_argument("--steps", type=int, default=15, help="dpm++ steps")
    ap.add_argument("--settings", type=setting, nargs="+", default=[setting("5"), setting("5@0.28,5.42")])
    args = ap.parse_args()
    model = load_model(args.model)
    encoder, judge = encoder_for(model), create_encoder(args.judge)
    images = evaluation_images(args.cifar, args.images)
    print(
        "| guidance | interval | class agreement | rank-1 | mean rank | Fréchet (judge) | diversity (judge cosine) "
        "| pixel spread | wall s |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        flush=True,
    )
    for weight, interval in args.settings:
        cfg = SamplingConfig(sampler="dpm++", steps=args.steps, guidance=weight, guidance_interval=interval)
        s = score_model(model, encoder, judge, images, cfg, num_samples=2)
        where = "every step" if interval is None else f"({interval[0]:g}, {interval[1]:g}]"
        print(
            f"| {weight:g} | {where if weight != 1 else ''} | {s.class_agreement:.3f} | {s.rank1:.3f} | "
            f"{s.mean_rank:.2f} | {s.frechet:.2f} | {s.diversity:.4f} | {s.pixel_spread:.4f} | {s.wall_s:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
