"""How much class agreement can an RCDM reach on a representation at all? Probes, no sampling (minutes, one thread).

Class agreement (the pack's gate metric) is the share of samples that the judge (ResNet-56) puts in the class it
puts their source image in. A sampler sees only the representation, so it can do no better than the best guess
of the judge's class from the representation: a probe fitted to predict the judge's class from each encoder's
(standardised) representations of training images, read on the evaluation test images, estimates that ceiling in
two forms:
- mode: the probe's most likely class is the judge's (what a sampler that always draws the likeliest class, as
  strong guidance tends to, would score);
- posterior: the mean probability the calibrated probe gives to the judge's class (what a sampler that draws
  the class with the posterior's odds, a faithful unguided RCDM, would score).
Probes: linear (softmax regression, `rcdm.metrics.probe`) and a one-hidden-layer MLP, each calibrated by one temperature on held-out
training images. A probe is a lower bound on what the representation holds, so these ceilings are estimates from
below; their use is the gap: a gate above the mode ceiling asks the pictures for class the representation lacks.

    python benchmarks/class_ceiling.py --cifar ~/.cache/rcdm/cifar10 --judge cifar-resnet56:resnet56-4bfd9763.th
    python benchmarks/class_ceiling.py ... --encoders timm:resnet18.a1_in1k:backbone pixels:8   # any encoders

Prints a markdown table (benchmarks/results/class-ceiling-cpu.md). Default encoders: the pack's three.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from rcdm.devices import cpu_model
from rcdm.encoders import create_encoder
from rcdm.metrics.probe import fit_linear_probe
from rcdm.pack.cifar10 import labelled_files
from rcdm.pack.evaluation import evaluation_images

# the pack's conditioning encoders: spec, feature, the RCDM conditioned on it
PACK_ENCODERS = (
    ("rcdm-cifar:cifar10-vicreg-r20w1", "backbone", "rcdm-cifar10-vicreg-backbone"),
    ("rcdm-cifar:cifar10-vicreg-r20w1", "projector", "rcdm-cifar10-vicreg-projector"),
    ("rcdm-cifar:cifar10-supervised-r20w1", "backbone", "rcdm-cifar10-supervised"),
)

Logits = Callable[[torch.Tensor], torch.Tensor]


def fit_mlp(
    x: torch.Tensor, y: torch.Tensor, classes: int, x_val: torch.Tensor, y_val: torch.Tensor, epochs: int = 40
) -> Logits:
    """One hidden layer (512, GELU), Adam; the epoch with the lowest held-out cross-entropy is kept."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 512), torch.nn.GELU(), torch.nn.Linear(512, classes)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    best, kept = float("inf"), None
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(256):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            val = float(F.cross_entropy(net(x_val), y_val))
        if val < best:
            best, kept = val, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(kept)
    net.requires_grad_(False)
    return lambda z: net(z)


def temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The temperature T minimising the cross-entropy of logits / T on (held-out) labels y (a grid search)."""
    grid = torch.exp(torch.linspace(-2.5, 2.5, 201))
    losses = torch.stack([F.cross_entropy(logits / t, y) for t in grid])
    return float(grid[losses.argmin()])


def ceilings(
    train: torch.Tensor, y_train: torch.Tensor, test: torch.Tensor, y_test: torch.Tensor, classes: int = 10
) -> dict[str, dict[str, float]]:
    """{probe: {mode, posterior, held_out}} for linear and MLP probes fitted to predict y from representations
    (standardised with the training representations' statistics); 10% of the training pairs are held out to
    calibrate (and, for the MLP, to stop)."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    train, test = (train - mean) / std, (test - mean) / std
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=g)
    cut = len(train) // 10
    val, fit = order[:cut], order[cut:]
    probes = {
        "linear": fit_linear_probe(train[fit], y_train[fit], classes),
        "mlp": fit_mlp(train[fit], y_train[fit], classes, train[val], y_train[val]),
    }
    out = {}
    for name, logits in probes.items():
        held = logits(train[val])
        t = temperature(held, y_train[val])
        q = (logits(test) / t).softmax(-1)
        out[name] = {
            "mode": float((q.argmax(-1) == y_test).float().mean()),
            "posterior": float(q.gather(1, y_test[:, None]).mean()),
            "held_out": float((held.argmax(-1) == y_train[val]).float().mean()),
            "temperature": t,
        }
    return out


def encoder_list(given: list[str] | None) -> list[tuple[str, str, str]]:
    """(spec, feature, RCDM name or '') of each --encoders entry ('SPEC' or 'SPEC:backbone|projector')."""
    if not given:
        return list(PACK_ENCODERS)
    out = []
    for entry in given:
        spec, _, feature = entry.rpartition(":")
        if feature not in ("backbone", "projector"):
            spec, feature = entry, "backbone"
        out.append((spec, feature, ""))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", required=True, help="CIFAR-10 root (train/ and test/)")
    p.add_argument(
        "--judge", required=True, help="the judge's spec, e.g. cifar-resnet56:resnet56-4bfd9763.th"
    )
    p.add_argument("--train-images", type=int, default=20000, help="class-balanced training images to fit on")
    p.add_argument("--images", type=int, default=1000, help="class-balanced test images (default: 1000)")
    p.add_argument(
        "--encoders",
        nargs="+",
        default=None,
        metavar="SPEC[:backbone|:projector]",
        help="encoder specs (README: Encoders), each optionally ending in its feature (default: the pack's three)",
    )
    args = p.parse_args()
    t0 = time.perf_counter()
    train_files, _, _ = labelled_files(Path(args.cifar) / "train", args.train_images)
    test_files = evaluation_images(args.cifar, args.images)
    judge = create_encoder(args.judge, "backbone")

    def judged(files: list[Path]) -> torch.Tensor:
        with torch.no_grad():
            return judge.classifier(judge.encode_files(files, 256)).argmax(-1)

    y_train, y_test = judged(train_files), judged(test_files)
    rows = []
    for spec, feature, rcdm in encoder_list(args.encoders):
        enc = create_encoder(spec, feature)
        found = ceilings(
            enc.encode_files(train_files, 256), y_train, enc.encode_files(test_files, 256), y_test
        )
        for probe, r in found.items():
            rows.append(
                f"| {rcdm} | {spec} {feature} | {probe} | {r['mode']:.3f} | {r['posterior']:.3f} "
                f"| {r['held_out']:.3f} |"
            )
    print(
        f"{len(train_files):,} training images (the judge's classes as labels), {len(test_files):,} evaluation "
        f"test images; {cpu_model()}, {torch.get_num_threads()} thread(s), {time.perf_counter() - t0:.0f} s\n"
    )
    print("| RCDM | its encoder | probe | mode ceiling | posterior ceiling | held-out accuracy |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
