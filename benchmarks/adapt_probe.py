"""Does the class survive an `rcdm adapt` map? Linear probes, no sampling (about a minute on one CPU thread).

A linear probe (multinomial logistic regression, L-BFGS) is fitted on the base RCDM's standardised representations
of the run's cached training images (labels from CIFAR-10's class folders) and read on the class-balanced test
images: on the base encoder's true representations, and on the new encoder's representations sent through the
adapted model's map. A second probe on the new encoder's own representations is the ceiling. So the class that a
picture loses splits into what the map loses and what the base RCDM's drawing loses (benchmarks/results/
adapt-cpu-2core.md).

    python benchmarks/adapt_probe.py --run RUN --cifar ~/.cache/rcdm/cifar10 [--images 2000]

RUN: an `rcdm adapt` run folder on CIFAR-10's train/ (its cache/ holds both encoders' representations).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rcdm.adaptation import base_targets
from rcdm.encoders.cache import load_cache
from rcdm.loading import encoder_for, load_model
from rcdm.metrics.probe import fit_linear_probe
from rcdm.pack.evaluation import evaluation_images


def cached(cache: Path) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """encoder spec -> (representations, image paths) of each representation cache in CACHE."""
    out = {}
    for meta_file in cache.glob("reps-*.json"):
        meta = json.loads(meta_file.read_text())
        # the images as they are (an adapt cache also holds their mirror images, under "flipped")
        reps = load_cache(meta_file.with_suffix(".safetensors"))["representations"]
        out[meta["encoder"]] = (reps.float(), meta["paths"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="an rcdm adapt run folder (RUN/model, RUN/cache)")
    p.add_argument("--cifar", required=True, help="CIFAR-10 root (train/ and test/)")
    p.add_argument("--images", type=int, default=2000, help="class-balanced test images (default: 2000)")
    args = p.parse_args()
    torch.manual_seed(0)
    run = Path(args.run)
    adapted = load_model(run / "model").eval()
    base = load_model(adapted.config.adapted_from["base_model"]).eval()
    reps = cached(run / "cache")
    new_tr, paths = reps[adapted.config.encoder]
    base_tr, base_paths = reps[base.config.encoder]
    if paths != base_paths:
        raise SystemExit("the two caches hold different images: point --run at one adapt run's folder")
    classes = sorted({Path(f).parent.name for f in paths})
    y_tr = torch.tensor([classes.index(Path(f).parent.name) for f in paths])
    test = evaluation_images(args.cifar, args.images)
    y_te = torch.tensor([classes.index(Path(f).parent.name) for f in test])
    new_te = encoder_for(adapted).encode_files([Path(f) for f in test], 200).float()
    base_te = encoder_for(base).encode_files([Path(f) for f in test], 200).float()

    # what each model's projection (or the adapter) reads: its representations standardised
    standardised = base_targets
    with torch.no_grad():
        mapped_te = adapted.rep_adapter(standardised(adapted, new_te)).float()
    in_base = fit_linear_probe(standardised(base, base_tr), y_tr, len(classes))
    in_new = fit_linear_probe(standardised(adapted, new_tr), y_tr, len(classes))

    def accuracy(logits, y):
        return round(float((logits.argmax(1) == y).float().mean()), 4)

    print(
        json.dumps(
            {
                "test images": len(test),
                "base probe on the base encoder's test representations": accuracy(
                    in_base(standardised(base, base_te)), y_te
                ),
                "base probe on the mapped new representations": accuracy(in_base(mapped_te), y_te),
                "new encoder's own probe on its representations": accuracy(
                    in_new(standardised(adapted, new_te)), y_te
                ),
                "mean norm, base / mapped (standardised)": [
                    round(float(standardised(base, base_te).norm(dim=1).mean()), 2),
                    round(float(mapped_te.norm(dim=1).mean()), 2),
                ],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
