"""The prior table (benchmarks/results/prior-cpu-2core.md): images from representations the prior samples
(`rcdm prior`, `rcdm generate`) beside images from real test representations, and the --rep-noise curve.

    python benchmarks/prior.py --data ../shared/data/cifar10/cifar10-jpeg.tar.gz \
        --judge cifar-resnet56:../shared/data/cifar-resnet/resnet56-4bfd9763.th --work ~/rcdm-work/prior \
        --out benchmarks/results/prior-cpu-2core.md

Model: the bundled VICReg backbone RCDM at its default sampling (dpm++ 20, guidance 5). The prior is trained
with `rcdm prior`'s defaults on CIFAR-10's 50,000 training images (resumed when WORK holds a run). Then
--images images each way: from sampled representations, and from the representations of the first --images
class-balanced test images; both judged by the ResNet-56 against those test images (Fréchet distance in its
features, and its class histogram). Last, class agreement and rank-1 of --curve-images test images against
--rep-noise S.
"""

from __future__ import annotations

import argparse
import datetime
import time
from dataclasses import replace
from pathlib import Path

import torch

from rcdm.data import batched, image_tensor
from rcdm.devices import cpu_model
from rcdm.diffusion import resolve_sampling, sample_many, sampling_preset
from rcdm.encoders import create_encoder
from rcdm.loading import encoder_for, load_model
from rcdm.metrics.quality import frechet_distance
from rcdm.pack.cifar10 import cifar10_root
from rcdm.pack.evaluation import evaluation_images, score_model
from rcdm.prior import PriorConfig, load_prior, sample_representations, train_prior

MODEL = "cifar10-vicreg-backbone"


def judged(judge, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, predicted classes) of images (N, 3, H, W) in [0, 1], rounded to 8 bits as PNGs are."""
    feats, classes = [], []
    with torch.no_grad():
        for s, e in batched(images.shape[0], 256):
            x = (images[s:e] * 255).round() / 255
            feats.append(judge.encode(x))
            classes.append(judge.logits(x).argmax(1))
    return torch.cat(feats), torch.cat(classes)


def gaussian(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = f.double()
    return f.mean(0), torch.cov(f.T)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--judge", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--curve-images", type=int, default=200)
    p.add_argument("--rep-noise", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    root = cifar10_root(args.data)
    work = Path(args.work).expanduser()
    run = work / "prior-backbone"
    t0 = time.perf_counter()
    cfg = PriorConfig(model=MODEL, data=str(root / "train"), cache=str(work / "cache"))
    done = (run / "prior" / "prior.json").is_file()
    if not done:
        train_prior(cfg, run, resume=(run / "prior-run.json").is_file(), progress=False)
    prior_s = time.perf_counter() - t0
    prior, record = load_prior(run)
    model = load_model(MODEL)
    enc = encoder_for(model)
    judge = create_encoder(args.judge, "backbone")
    sampling = resolve_sampling(model, sampling_preset("fast"))
    test = evaluation_images(root, args.images)
    real_feats, real_classes = judged(judge, torch.stack([_load(p) for p in test]))

    t = time.perf_counter()
    dreamt = sample_many(model, sample_representations(prior, args.images, seed=0), 1, sampling)[:, 0]
    dream_s = time.perf_counter() - t
    from_test = sample_many(model, enc.encode_files(test), 1, sampling)[:, 0]
    rows = []
    for name, imgs in (("sampled representations (prior)", dreamt), ("test representations", from_test)):
        f, c = judged(judge, imgs)
        fd = frechet_distance(*gaussian(f), *gaussian(real_feats))
        hist = torch.bincount(c, minlength=10).tolist()
        rows.append((name, fd, hist))
        print(name, f"{fd:.2f}", hist, flush=True)
    real_hist = torch.bincount(real_classes, minlength=10).tolist()

    curve_images = evaluation_images(root, args.curve_images)
    curve = []
    for s in args.rep_noise:
        score = score_model(model, enc, judge, curve_images, replace(sampling, rep_noise=s))
        curve.append((s, score))
        print(f"rep-noise {s:g}: {score.class_agreement:.3f} / {score.rank1:.3f}", flush=True)

    lines = [
        "# Representation prior and --rep-noise on the pack",
        "",
        f"Measured {datetime.date.today()} on {cpu_model()}, {torch.get_num_threads()} thread(s), by "
        "`python benchmarks/prior.py` (its docstring has the command). Model: the bundled VICReg backbone RCDM, "
        f"{sampling.sampler} {sampling.steps} at guidance {sampling.guidance:g} (its default sampling).",
        "",
        f"## {args.images} images from sampled representations vs from test representations",
        "",
        f"Prior: `rcdm prior` defaults ({cfg.steps} steps of {cfg.batch_size}, width {cfg.width}, depth "
        f"{cfg.depth}) on the {record['representations']:,} training images; "
        + (
            f"trained in {record['wall_time_s']:.0f} s wall, {record['cpu_time_s']:.0f} CPU s"
            if not done
            else f"training recorded {record['wall_time_s']:.0f} s wall, {record['cpu_time_s']:.0f} CPU s"
        )
        + f" (encoding included in this run's {prior_s:.0f} s). Generating {args.images} images took "
        f"{dream_s:.0f} s. Judge: ResNet-56 (`{Path(args.judge.split(':', 1)[1]).name}`); Fréchet distance in its "
        f"features against the {args.images} test images; class histogram by its predictions "
        "(airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck).",
        "",
        "| images from | Fréchet (ResNet-56) | judge's class histogram |",
        "| --- | ---: | --- |",
        *[f"| {n} | {fd:.2f} | {' '.join(str(h) for h in hist)} |" for n, fd, hist in rows],
        f"| (the test images themselves) | 0 | {' '.join(str(h) for h in real_hist)} |",
        "",
        f"## Class agreement and rank-1 against --rep-noise ({args.curve_images} test images, one sample each)",
        "",
        "| --rep-noise S | class agreement | rank-1 among " + f"{args.curve_images} | Fréchet (ResNet-56) |",
        "| ---: | ---: | ---: | ---: |",
        *[f"| {s:g} | {sc.class_agreement:.3f} | {sc.rank1:.3f} | {sc.frechet:.2f} |" for s, sc in curve],
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def _load(path: Path) -> torch.Tensor:
    return image_tensor(path, 32)


if __name__ == "__main__":
    main()
