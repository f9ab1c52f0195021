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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .analysis import adversarial, interpolate, invariance
from .analysis.interpolate import Method
from .analysis.report import adversarial_section, interpolation_section, invariance_section, samples_section
from .data import list_images
from .diffusion import SamplingConfig
from .encoders import Encoder
from .encoders.cifar import read_card
from .errors import RCDMError
from .figures import Section, grid, html_page, html_table
from .loading import encoder_for, load_model
from .metrics.faithfulness import faithfulness_scores
from .model import RCDM
from .recipes.bundle import (
    ROLES,
    DemoBundle,
    bundle_section,
    bundled_pack,
    demo_images,
    pack_note,
    read_bundle,
    smoke_notice,
)
from .train import TrainConfig, train
from .visualize import save_visualization, visualize

DEMO_ENCODER = "pixels:4"  # weight-free: the image average-pooled to 4x4 (48-d); works offline everywhere
# The smoke-scale model's training settings over the TrainConfig defaults (tiny preset, one CPU process).
SMOKE_TRAINING: dict[str, Any] = dict(
    preset="tiny", batch_size=16, lr=3e-3, ema_decay=0.98, num_workers=0, min_scale=1.0
)

# --- the pack demo ----------------------------------------------------------------------------------------

# dpm++ 20 steps, 32 images per call (the CPU batch size of docs/recipes.md).
CPU_SAMPLING = SamplingConfig(steps=20, batch_size=32)


@dataclass(frozen=True)
class PackDemoSettings:
    """What the pack demo samples. Every sample uses `sampling` (deterministic: dpm++ or ddim, which the
    interpolation needs); column j of every figure starts from the same noise, so two rows differ only through
    their representations."""

    max_images: int = 8  # demo inputs used by the samples and the adversarial comparison (the first ones)
    num_samples: int = 4  # samples per representation: backbone vs projector
    sampling: SamplingConfig = CPU_SAMPLING
    invariance_images: int = 4  # the first ones of the inputs
    invariance_samples: int = 2
    augmentations: tuple[str, ...] = ("grayscale", "colour_jitter", "random_resized_crop", "hflip")
    interpolation_images: tuple[int, int] = (0, 1)  # indices into the inputs
    interpolation_steps: int = 6  # t values in [0, 1]
    interpolation_methods: tuple[Method, ...] = ("linear", "spherical")
    interpolation_samples: int = 1
    adversarial_samples: int = 2
    eps: float = 4 / 255  # L-infinity radius of the untargeted PGD attack on each encoder's representation
    pgd_steps: int = 10


PACK_DEMO_PRESETS: dict[str, PackDemoSettings] = {
    # The CPU setting: 220 samples x 20 steps of the cifar32-small RCDMs (timings: docs/recipes.md).
    "cpu": PackDemoSettings(),
    # A first look (and the tests): a few samples of a few images, 4 sampling steps.
    "quick": PackDemoSettings(
        max_images=4,
        num_samples=2,
        sampling=CPU_SAMPLING.replace(steps=4),
        invariance_images=2,
        invariance_samples=1,
        augmentations=("grayscale", "hflip"),
        interpolation_steps=3,
        interpolation_methods=("linear",),
        adversarial_samples=1,
        pgd_steps=3,
    ),
}


@dataclass
class PackDemoResult:
    """index: OUT/index.html; results: OUT/results.json (`numbers`); seconds: per section and total."""

    index: Path
    results: Path
    smoke: bool
    seconds: dict[str, float]
    numbers: dict = field(default_factory=dict)


@dataclass
class _Context:
    """What every section needs: the loaded (model, encoder) per role, the inputs, the settings, OUT."""

    bundle: DemoBundle
    loaded: dict[str, tuple[RCDM, Encoder]]
    paths: list[Path]
    settings: PackDemoSettings
    out: Path
    progress: bool

    @property
    def sampling(self) -> dict:
        return dict(sampling=self.settings.sampling, progress=self.progress)

    def compare(self, analysis: Callable, roles: dict[str, str], images: list[Path], **kw) -> dict:
        """key -> analysis(model, encoder, images, label=, **kw) for each key -> role, with the demo's sampling."""
        return {
            key: analysis(*self.loaded[role], images, label=ROLES[role][1], **self.sampling, **kw)
            for key, role in roles.items()
        }


def _samples_section(ctx: _Context) -> Section:
    """Samples of the same inputs from the backbone and the projector representation, with the same noise."""
    return samples_section(
        {role: (ROLES[role][1], *ctx.loaded[role]) for role in ("backbone", "projector")},
        ctx.paths,
        ctx.out,
        ctx.settings.num_samples,
        ctx.settings.sampling,
        note="Each row: a demo input, then samples drawn from its VICReg <b>backbone</b> representation, then "
        "from its <b>projector</b> embedding. Sample j of both starts from the same noise with a deterministic "
        "sampler, so what differs is the representation alone. What stays the same across a row's samples is "
        "what the representation keeps. Faithfulness is judged by the conditioning encoder: is each sample's own "
        f"representation nearest to its source's among the {len(ctx.paths)} inputs?",
        heading="Samples: backbone vs projector",
        progress=ctx.progress,
    )


def _invariance_section(ctx: _Context) -> Section:
    """rcdm.analysis.invariance for the backbone and the projector RCDM (the paper's findings 1 and 2)."""
    s = ctx.settings
    inv = ctx.compare(
        invariance,
        {"backbone": "backbone", "projector": "projector"},
        ctx.paths[: s.invariance_images],
        augmentations=list(s.augmentations),
        num_samples=s.invariance_samples,
    )
    section = invariance_section(
        [inv["backbone"], inv["projector"]],
        ctx.out,
        "Per image, rows [0] are the backbone RCDM and rows [1] the projector RCDM: the clean input, then each "
        "augmented input, each followed by samples of its representation. d = how far the augmentation moved the "
        "representation, relative to the typical distance between the images' representations; r = retention "
        "score (1: the samples carry the augmentation, 0: they do not; docs/analysis.md). The paper found "
        "backbones keep the augmentations SSL trains with and projectors largely do not.",
        heading="Invariance: backbone vs projector",
    )
    section.numbers = {role: r.summary() for role, r in inv.items()}
    return section


def _interpolation_section(ctx: _Context) -> Section:
    """rcdm.analysis.interpolate between two inputs' backbone representations."""
    s = ctx.settings
    i, j = s.interpolation_images
    if not (0 <= i < len(ctx.paths) and 0 <= j < len(ctx.paths) and i != j):
        raise RCDMError(
            f"interpolation_images {s.interpolation_images} must be two different indices below {len(ctx.paths)}"
        )
    itp = interpolate(
        *ctx.loaded["backbone"],
        [ctx.paths[i], ctx.paths[j]],
        num_steps=s.interpolation_steps,
        methods=s.interpolation_methods,
        num_samples=s.interpolation_samples,
        **ctx.sampling,
    )
    return interpolation_section(
        itp,
        ctx.out,
        f"Samples of the VICReg backbone RCDM from representations mixed between {html.escape(itp.names[0])} "
        f"(t = 0) and {html.escape(itp.names[1])} (t = 1); each row keeps its starting noise, so only the "
        "representation changes along t. Frame change: mean absolute pixel change from the previous t.",
        heading="Interpolation",
    )


def _adversarial_section(ctx: _Context) -> Section:
    """The same untargeted PGD on the VICReg and the supervised backbone (the paper's finding 3)."""
    s = ctx.settings
    adv = ctx.compare(
        adversarial,
        {"ssl": "backbone", "supervised": "supervised"},
        ctx.paths,
        attack="untargeted",
        eps=s.eps,
        pgd_steps=s.pgd_steps,
        num_samples=s.adversarial_samples,
    )
    bundle = ctx.bundle
    classes = read_card(bundle.folder / bundle.encoder_name(ROLES["supervised"][0])).get("classes") or []
    section = adversarial_section(
        [adv["ssl"], adv["supervised"]],
        ctx.out,
        f"Untargeted L-infinity PGD (eps = {s.eps * 255:.1f}/255, {s.pgd_steps} steps) pushes each encoder's "
        "backbone representation away from the clean one; rows [0] VICReg, rows [1] supervised: the clean input "
        "and samples of its representation, then the attacked input and samples of its representation. Relative "
        "shift: distance moved over the typical distance between the images' representations. The paper found "
        "samples from attacked supervised representations drift to another class while SSL ones stay. The label "
        "flip rate is that of the supervised encoder's own classifier (the VICReg encoder has none).",
        heading="Adversarial: SSL vs supervised",
        class_names=classes,
    )
    section.numbers = {**{key: r.summary() for key, r in adv.items()}, "classes": classes}
    return section


SECTIONS: dict[str, Callable[[_Context], Section]] = {
    "samples": _samples_section,
    "invariance": _invariance_section,
    "interpolation": _interpolation_section,
    "adversarial": _adversarial_section,
}


def run_pack_demo(
    bundle_dir: str | Path,
    out_dir: str | Path,
    *,
    settings: PackDemoSettings | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> PackDemoResult:
    """Sample the bundled RCDMs on the bundle's demo inputs; write OUT/index.html, its PNGs and OUT/results.json.

    Sections (SECTIONS): samples of the VICReg backbone vs projector RCDM (same noise), invariance backbone vs
    projector, an interpolation (backbone RCDM), and untargeted PGD on the VICReg vs the supervised backbone.
    Images are in [0, 1] at the models' 32 px. Raises RCDMError when BUNDLE is not a complete bundle.
    """
    s = settings or PACK_DEMO_PRESETS["cpu"]
    if s.sampling.sampler == "ddpm":
        raise RCDMError("the pack demo needs a deterministic sampler (dpm++ or ddim), not ddpm")
    t_start = time.perf_counter()
    bundle = read_bundle(bundle_dir)
    paths = bundle.inputs[: s.max_images]
    if len(paths) < 2:
        raise RCDMError(f"the demo needs at least 2 input images but {str(bundle.folder)!r} has {len(paths)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = {role: bundle.load(target, device) for role, (target, _) in ROLES.items()}
    ctx = _Context(bundle, loaded, paths, s, out, progress)
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
    for key, make in SECTIONS.items():
        t0 = time.perf_counter()
        section = make(ctx)
        sections.append(section)
        numbers[key] = section.numbers
        seconds[key] = time.perf_counter() - t0
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
    numbers = {
        "encoder": encoder,
        "train_steps": steps,
        "train_seconds": round(t1 - t0, 1),
        "sample_seconds": round(t2 - t1, 1),
        "num_images": len(images),
        "samples_per_image": num_samples,
        "rank1_retrieval": rank1,
        "chance": 1 / len(images),
        "cifar10_pack_bundled": bundled_pack() is not None,
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
        notice=pack_note(),
    )
    index = out / "index.html"
    index.write_text(page)
    return DemoResult(index, t1 - t0, t2 - t1, rank1)
