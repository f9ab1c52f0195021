"""Condition on the map's mean, or draw from its residual? A side experiment on an `rcdm adapt` map (issue 25).

A map gives the base representation expected from the new one, E[z_base | z_new]: a regression's output, shrunk
towards the mean (held-out R^2 0.61 for the pack's supervised ResNet-20 into the VICReg backbone space), so the
base RCDM is steered by vectors shorter than any it was trained on. Here each test image's mapped vector gets one
draw of Gaussian noise with the covariance of the map's held-out residuals (in the base's standardised space),
times --scale, before the base RCDM samples from it: a linear-Gaussian guess at p(z_base | z_new), whose samples
vary where the new encoder says nothing. --scale 0 is the adapted model itself (the control). --stretch S
multiplies the mapped vector's deviation from the base mean by S first (S > 1 undoes the regression's shrinkage
without noise: the map's test vectors have mean square 0.55 per standardised dimension, true ones 1). Scored as
`benchmarks/adapt.py` scores (1,000 class-balanced test images, one sample each, dpm++ 20, ResNet-56 judge).

    python benchmarks/adapt_posterior.py --run RUN --cifar ~/.cache/rcdm/cifar10 --judge cifar-resnet56:PATH \
        --scale 1 [--guidance 5] [--images 1000]

RUN: an `rcdm adapt` run folder on CIFAR-10's train/ (its cache/ holds both encoders' representations, in the
order of its adapt.json's images; the held-out share is found as `rcdm adapt` chose it).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from rcdm.adaptation import base_targets
from rcdm.devices import cpu_model
from rcdm.diffusion import sampling_preset
from rcdm.encoders import create_encoder
from rcdm.encoders.cache import load_cache
from rcdm.loading import encoder_for, load_model
from rcdm.pack.evaluation import evaluation_images, score_model


class MappedWithResidual:
    """Duck-types the Encoder that `score_model` conditions on: images -> the new encoder -> the adapted model's
    map -> + residual noise (one fixed draw per image, in the base's standardised space) -> the base's raw space.
    Samples are encoded the same way without the noise (the own-space scores are not read)."""

    feature = "backbone"
    classifier = None

    def __init__(self, adapted, base, factor: torch.Tensor, seed: int, stretch: float = 1.0) -> None:
        self.adapted, self.base, self.factor, self.seed, self.stretch = adapted, base, factor, seed, stretch
        self.encoder = encoder_for(adapted)
        self.spec = f"{self.encoder.spec} mapped + residual"

    def _to_base(self, z_new: torch.Tensor, noise: bool) -> torch.Tensor:
        with torch.no_grad():
            z = self.adapted.rep_adapter(base_targets(self.adapted, z_new)).float()
            # noise: the conditioning (encode_files); the samples' own-space encoding is the map's as it is
            if noise:
                z = z * self.stretch
                g = torch.Generator().manual_seed(self.seed)
                z = z + torch.randn(z.shape, generator=g) @ self.factor.T
            return z * self.base.rep_std + self.base.rep_mean

    def encode_files(self, paths, batch_size: int) -> torch.Tensor:
        return self._to_base(self.encoder.encode_files(paths, batch_size).float(), noise=True)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._to_base(self.encoder.encode(images).float(), noise=False)


def residual_factor(run: Path, adapted, base) -> tuple[torch.Tensor, float]:
    """A factor L (L L^T = the covariance of the map's held-out residuals, both views) and the held-out R^2."""
    cfg = json.loads((run / "adapt.json").read_text())
    caches = {}
    for meta_file in (run / "cache").glob("reps-*.json"):
        meta = json.loads(meta_file.read_text())
        caches[meta["encoder"]] = load_cache(meta_file.with_suffix(".safetensors"))
    new, old = caches[adapted.config.encoder], caches[base.config.encoder]
    n = new["representations"].shape[0]
    # as rcdm adapt holds out: the last `holdout` share of a permutation seeded seed + 1
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg["seed"] + 1))
    held = order[n - max(1, round(n * cfg["holdout"])) :]
    x = torch.cat([new["representations"][held], new["flipped"][held]]).float()
    y = base_targets(base, torch.cat([old["representations"][held], old["flipped"][held]]))
    with torch.no_grad():
        r = y - adapted.rep_adapter(base_targets(adapted, x)).float()
    r2 = 1 - float(r.pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    cov = torch.cov((r - r.mean(0)).T)
    vals, vecs = torch.linalg.eigh(cov)
    return vecs * vals.clamp_min(0).sqrt(), r2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--run", required=True, help="an rcdm adapt run folder (RUN/model, RUN/cache, RUN/adapt.json)"
    )
    p.add_argument("--cifar", required=True, help="CIFAR-10 root (test/)")
    p.add_argument("--judge", required=True, help="judge encoder spec, e.g. cifar-resnet56:PATH")
    p.add_argument(
        "--scale", type=float, required=True, help="times the residual's spread (0: the map alone)"
    )
    p.add_argument(
        "--stretch", type=float, default=1.0, help="times the mapped vector's deviation from the base mean"
    )
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="of the residual draws")
    args = p.parse_args()
    run = Path(args.run)
    adapted = load_model(run / "model").eval()
    base = load_model(adapted.config.adapted_from["base_model"]).eval()
    if args.scale:
        factor, r2 = residual_factor(run, adapted, base)
    else:  # no residual drawn: nothing read from RUN/cache (a benchmark run's cache may live elsewhere)
        dim = base.config.representation_dim
        factor, r2 = torch.zeros(dim, dim), None
    cond = MappedWithResidual(adapted, base, args.scale * factor, args.seed, args.stretch)
    images = evaluation_images(args.cifar, args.images)
    judge = create_encoder(args.judge, "backbone")
    t0 = time.perf_counter()
    score = score_model(base, cond, judge, images, replace(sampling_preset("fast"), guidance=args.guidance))
    record = {
        "run": str(run),
        "scale": args.scale,
        "stretch": args.stretch,
        "residual_seed": args.seed,
        "map_r2_heldout_recomputed": None if r2 is None else round(r2, 4),
        "machine": cpu_model(),
        "wall_s": round(time.perf_counter() - t0, 1),
        **{k: v for k, v in score.record().items() if not k.startswith("own")},
    }
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
