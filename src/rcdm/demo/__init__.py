"""The offline demo, in one of two forms.

- The pack demo (`run_pack_demo`): the CIFAR-10 bundle of `rcdm recipe pack` (a VICReg encoder, a supervised one
  and three RCDMs) sampled on its demo inputs: backbone vs projector samples, invariance, interpolation and the
  adversarial comparison, in OUT/index.html. Used when a bundle is installed at rcdm/assets/models or given.
- The smoke-scale demo (`run_demo`): a tiny RCDM trained briefly on the CPU on the ten bundled CIFAR-10 images,
  conditioned on a weight-free representation. It shows the pipeline working; it is not a real model.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..bundle import ROLES, bundled_pack, demo_images, read_bundle
from ..data import list_images
from ..diffusion import SamplingConfig, reuse_samples
from ..errors import RCDMError
from ..figures import Section, grid, html_page, html_table
from ..loading import encoder_for, load_bundled, load_model
from ..metrics.faithfulness import faithfulness_scores
from ..train import TrainConfig, train
from ..visualize import save_visualization, visualize
from .page import (
    PACK_DEMO_PRESETS,
    SECTIONS,
    PackDemoSettings,
    PageContext,
    bundle_section,
    findings_section,
    metrics_section,
    pack_note,
    smoke_notice,
)

__all__ = [
    "PACK_DEMO_PRESETS",
    "DemoResult",
    "PackDemoResult",
    "PackDemoSettings",
    "run_demo",
    "run_pack_demo",
]

DEMO_ENCODER = "pixels:4"  # weight-free: the image average-pooled to 4x4 (48-d); works offline everywhere
# The smoke-scale model's training settings over the TrainConfig defaults (tiny preset, one CPU process).
SMOKE_TRAINING: dict[str, Any] = dict(
    preset="tiny", batch_size=16, lr=3e-3, ema_decay=0.98, num_workers=0, min_scale=1.0
)

# --- the pack demo ----------------------------------------------------------------------------------------


@dataclass
class PackDemoResult:
    """index: OUT/index.html; results: OUT/results.json (`numbers`); seconds: per section and total."""

    index: Path
    results: Path
    smoke: bool
    seconds: dict[str, float]
    numbers: dict = field(default_factory=dict)


def run_pack_demo(
    bundle_dir: str | Path,
    out_dir: str | Path,
    *,
    settings: PackDemoSettings | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    guidance: float | None = None,
) -> PackDemoResult:
    """Sample the bundled RCDMs on the bundle's demo inputs; write OUT/index.html, its PNGs and OUT/results.json.

    Sections (SECTIONS): samples of the VICReg backbone vs projector RCDM (same noise), invariance backbone vs
    projector, an interpolation (backbone RCDM), untargeted PGD on the VICReg vs the supervised backbone, DDIM
    inversion under the backbone and the projector RCDM (what the noise keeps) and, when the bundle ships a
    representation prior of the backbone's encoder, images from representations it samples (Dream).
    Images are in [0, 1] at the models' 32 px. guidance: the classifier-free guidance weight of every sample
    (default: the bundle's, from `rcdm recipe pack --guidance`). Raises RCDMError when BUNDLE is not a complete
    bundle.
    """
    s = settings or PACK_DEMO_PRESETS["cpu"]
    if s.sampling.sampler == "ddpm":
        raise RCDMError("the pack demo needs a deterministic sampler (dpm++ or ddim), not ddpm")
    t_start = time.perf_counter()
    bundle = read_bundle(bundle_dir)
    s = replace(s, sampling=s.sampling.replace(guidance=bundle.guidance if guidance is None else guidance))
    paths = bundle.inputs[: s.max_images]
    if len(paths) < 2:
        raise RCDMError(f"the demo needs at least 2 input images but {str(bundle.folder)!r} has {len(paths)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = {role: load_bundled(bundle, target, device) for role, (target, _) in ROLES.items()}
    ctx = PageContext(bundle, loaded, paths, s, out, progress)
    seconds: dict[str, float] = {"load": time.perf_counter() - t_start}
    intro, models = bundle_section(bundle, ROLES)
    numbers: dict = {
        "bundle": str(bundle.folder),
        "smoke": bundle.smoke,
        "smoke_reasons": bundle.index.get("smoke_reasons", []),
        "images": [p.stem for p in paths],
        "settings": asdict(s),
        "device": str(next(loaded["backbone"][0].parameters()).device),
        "torch_threads": torch.get_num_threads(),
        "models": models,
    }
    sections = [intro]
    with reuse_samples():  # a clean input's samples recur in several sections: each is drawn once
        for key, make in SECTIONS.items():
            t0 = time.perf_counter()
            section = make(ctx)
            if section is None:  # a section the bundle has nothing for (Dream without a prior)
                continue
            sections.append(section)
            numbers[key] = section.numbers
            seconds[key] = time.perf_counter() - t0
    sections.append(findings_section(numbers))
    numbers.update(sections[-1].numbers)
    card_metrics = metrics_section(models)  # after the pictures and the verdicts: numbers for the record
    if card_metrics is not None:
        sections.append(card_metrics)
    seconds["total"] = time.perf_counter() - t_start
    numbers["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    sections.append(
        Section(
            "Settings and timings",
            html_table(
                ["setting", "value"],
                [[k, v] for k, v in asdict(s).items() if k != "sampling"]
                + [[f"sampling.{k}", v] for k, v in s.sampling.record().items()],
            )
            + html_table(["section", "seconds"], [[k, f"{v:.1f}"] for k, v in seconds.items()]),
        )
    )
    title = ("SMOKE TEST - " if bundle.smoke else "") + "rcdm demo: what a CIFAR-10 representation keeps"
    index = out / "index.html"
    index.write_text(html_page(title, sections, notice=smoke_notice(bundle)))
    results = out / "results.json"
    results.write_text(json.dumps(numbers, indent=2))
    return PackDemoResult(index, results, bundle.smoke, seconds, numbers)


# --- the smoke-scale demo ----------------------------------------------------------------------------------


@dataclass
class DemoResult:
    index: Path
    train_seconds: float
    sample_seconds: float
    rank1: float


def run_demo(
    out_dir: str | Path,
    *,
    encoder: str = DEMO_ENCODER,
    steps: int = 800,
    image_size: int = 16,
    num_samples: int = 6,
    sample_steps: int = 50,  # ddpm steps per sample
    progress: bool = True,
) -> DemoResult:
    """Train the smoke-scale model into OUT/run, sample every bundled image, write OUT/index.html."""
    out = Path(out_dir)
    images = list_images(demo_images())
    cfg = TrainConfig(
        data=str(demo_images()),
        encoder=encoder,
        image_size=image_size,
        steps=steps,
        save_every=steps,
        **SMOKE_TRAINING,
    )
    run = out / "run"
    t0 = time.perf_counter()
    if not (run / "model" / "config.json").is_file():
        train(cfg, run, resume=True, progress=progress)
    t1 = time.perf_counter()
    model = load_model(run)
    enc = encoder_for(model)
    sampling = SamplingConfig(sampler="ddpm", steps=sample_steps, seed=0)
    vis = visualize(model, enc, images, num_samples=num_samples, sampling=sampling, progress=progress)
    t2 = time.perf_counter()
    save_visualization(vis, out / "samples")
    # Faithfulness: is each sample's own representation nearest to its source image's?
    sample_reps = enc.encode(vis.samples.flatten(0, 1)).view(len(images), num_samples, -1)
    rank1 = faithfulness_scores(vis.representations, sample_reps, distance="l2").top1
    overview = grid(
        [[o, *s] for o, s in zip(vis.originals, vis.samples, strict=True)],
        row_labels=vis.names,
        col_labels=["original"] + [f"sample {i}" for i in range(num_samples)],
        title=f"smoke-scale RCDM on {encoder}: samples of each image's representation",
        cell=64,
    )
    overview.save(out / "overview.png")
    bundled = bundled_pack() is not None
    numbers = {
        "encoder": encoder,
        "train_steps": steps,
        "train_seconds": round(t1 - t0, 1),
        "sample_seconds": round(t2 - t1, 1),
        "num_images": len(images),
        "samples_per_image": num_samples,
        "rank1_retrieval": rank1,
        "chance": 1 / len(images),
        "cifar10_pack_bundled": bundled,
    }
    (out / "results.json").write_text(json.dumps(numbers, indent=2))
    page = html_page(
        "rcdm demo (smoke scale)",
        [
            Section(
                "What this is",
                "<p>A <b>smoke-scale</b> representation-conditional diffusion model (preset <code>tiny</code>), "
                f"trained for {steps} steps on the {len(images)} bundled CIFAR-10 test images, conditioned on the "
                f"<code>{html.escape(encoder)}</code> representation. Each row: an image, then samples drawn from "
                "its representation alone. What stays constant across a row is what the representation keeps. "
                "It shows the pipeline working offline; it is not a trained research model.</p>",
            ),
            Section("Samples", '<img src="overview.png" alt="originals and samples">'),
            Section(
                "Numbers",
                html_table(["number", "value"], list(numbers.items()))
                + "<p>rank1_retrieval: the fraction of samples whose own representation "
                "is nearest to their source image's among the ten (chance 0.1).</p>",
            ),
        ],
        notice=pack_note(bundled),
    )
    index = out / "index.html"
    index.write_text(page)
    return DemoResult(index, t1 - t0, t2 - t1, rank1)
