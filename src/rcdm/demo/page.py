"""The pack demo's page (`rcdm.demo.run_pack_demo`): what it samples (`PackDemoSettings`, `PACK_DEMO_PRESETS`)
and its sections (`SECTIONS`; "One base, two encoders" only when the bundle ships an adapter, Dream only when
it ships a prior), each built from the analysis report's section builders."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..analysis import adversarial, interpolate, invariance
from ..analysis.adversarial import DEFAULT_EPS
from ..analysis.findings import RETAINED, findings
from ..analysis.interpolate import Method
from ..analysis.report import (
    adversarial_section,
    figure_html,
    interpolation_section,
    invariance_section,
    samples_section,
)
from ..bundle import ROLES, DemoBundle, read_card
from ..diffusion import SamplingConfig, sample_many
from ..encoders import Encoder
from ..errors import RCDMError
from ..figures import Section, fmt, grid, html_table, number
from ..inversion import INVERT_DEFAULTS, invert
from ..loading import load_bundled
from ..metrics.faithfulness import faithfulness_scores
from ..model import RCDM
from ..prior import check_prior_matches, load_prior, sample_representations

# dpm++ 15 steps, 32 images per call: 15 rather than the gates' 20, nearly as faithful and inside the demo's time
# budget on a CPU (the measurements and the batch size: docs/recipes.md, "`rcdm demo`: the pack demo").
CPU_SAMPLING = SamplingConfig(steps=15, batch_size=32)


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
    eps: float = (
        DEFAULT_EPS  # L-infinity radius of the untargeted PGD attack on each encoder's representation
    )
    pgd_steps: int = 10
    inversion_images: int = (
        2  # the first ones of the inputs (two: each redrawn under the other's representation)
    )
    inversion_steps: int = 50  # DDIM steps each way (docs/beyond.md: 30 dB on the pack's test images at 50)
    one_base_images: int = 4  # the first inputs, through the bundle's adapter (when it ships one)
    one_base_samples: int = 2
    dream_images: int = 8  # images from representations the bundle's prior samples (when it ships one)
    prior_steps: int = 50  # DDIM steps of the prior


PACK_DEMO_PRESETS: dict[str, PackDemoSettings] = {
    # The CPU setting: 220 samples x 15 steps of the cifar32-small RCDMs (timings: docs/recipes.md).
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
        inversion_images=2,
        inversion_steps=4,
        one_base_images=2,
        one_base_samples=1,
        dream_images=4,
        prior_steps=10,
    ),
}


@dataclass
class PageContext:
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


def _guidance_source(ctx: PageContext) -> str:
    """Where the page's guidance weight came from, when the bundle says and the demo was not told another."""
    why = ctx.bundle.index.get("guidance_chosen_by")
    return f" (guidance: {why})" if why and ctx.settings.sampling.guidance == ctx.bundle.guidance else ""


def _samples_section(ctx: PageContext) -> Section:
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
        f"representation nearest to its source's among the {len(ctx.paths)} inputs? (Chance is "
        f"1/{len(ctx.paths)}: an easy test; the model cards' retrieval scores, at the end, are among 1,000 images.) "
        f"Sampling: {ctx.settings.sampling.describe()}{_guidance_source(ctx)}; guidance above 1 makes a row's "
        "samples more alike, so every model on this page is drawn with the same guidance.",
        heading="Samples: backbone vs projector",
        progress=ctx.progress,
    )


def _invariance_section(ctx: PageContext) -> Section:
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


def _interpolation_section(ctx: PageContext) -> Section:
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


def _adversarial_section(ctx: PageContext) -> Section:
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
        "backbone representation away from the clean one. One row per image: the input, then for [0] VICReg and "
        "[1] supervised the attacked input x', samples of the clean representation (c) and of the attacked one "
        "(a), column j of each from the same noise; the row label gives each one's relative shift d and the "
        "supervised classifier's label before -> after the attack. Relative "
        "shift: distance moved over the typical distance between the images' representations. The paper found "
        "samples from attacked supervised representations drift to another class while SSL ones stay. The label "
        "flip rate is that of the supervised encoder's own classifier (the VICReg encoder has none).",
        heading="Adversarial: SSL vs supervised",
        class_names=classes,
    )
    section.numbers = {**{key: r.summary() for key, r in adv.items()}, "classes": classes}
    return section


def _inversion_section(ctx: PageContext) -> Section:
    """rcdm.inversion on the first inputs, under the backbone and the projector RCDM: each input redrawn from its
    own inverted noise, and that noise decoded under the next input's representation."""
    s = ctx.settings
    paths = ctx.paths[: s.inversion_images]
    cfg = INVERT_DEFAULTS.replace(steps=s.inversion_steps)
    runs = {}
    for role in ("backbone", "projector"):
        model, encoder = ctx.loaded[role]
        nexts = encoder.encode_files(paths).roll(-1, 0)
        inv = invert(model, encoder, paths, cfg, progress=ctx.progress, redraw=nexts)
        runs[role] = (inv, inv.redrawn)
    first = runs["backbone"][0]
    names = first.names
    rows = [
        [first.originals[i], *(x for inv, swap in runs.values() for x in (inv.reconstructions[i], swap[i]))]
        for i in range(len(names))
    ]
    cols = ["input", *(c for role in runs for c in (f"{role[:4]}: own", f"{role[:4]}: next"))]
    figure = grid(
        rows,
        row_labels=[f"{n} (next: {names[(i + 1) % len(names)]})" for i, n in enumerate(names)],
        col_labels=cols,
        title=f"DDIM inversion, {cfg.steps} steps, guidance 1: redrawn from its own noise, then that noise under the "
        "next input's representation",
    )
    table = html_table(
        ["RCDM", "reconstruction PSNR, mean (dB)", "per image (dB)"],
        [
            [ROLES[role][1], fmt(inv.mean_psnr, 1), ", ".join(fmt(float(p), 1) for p in inv.psnr)]
            for role, (inv, _) in runs.items()
        ],
    )
    note = (
        "Deterministic DDIM inversion finds the noise from which each RCDM redraws the input under the input's own "
        "representation. Decoded under the next input's representation, the same noise keeps the layout and takes "
        "the content of that representation: what the noise keeps against what the representation keeps "
        "(docs/beyond.md; `rcdm invert`, `rcdm analyze noise`)."
    )
    body = f"<p>{note}</p><div class='pair'>{figure_html(ctx.out, 'inversion', figure)}\n<div>{table}</div></div>"
    return Section(
        "Invert: what the noise keeps",
        body,
        {
            role: {"psnr": [number(float(p)) for p in inv.psnr], "mean_psnr": number(inv.mean_psnr)}
            for role, (inv, _) in runs.items()
        },
    )


def _one_base_section(ctx: PageContext) -> Section | None:
    """The supervised encoder through the VICReg backbone RCDM (the bundle's adapter) beside both RCDMs: one
    image prior, two representations (None: the bundle ships no such adapter)."""
    base, supervised = ROLES["backbone"][0], ROLES["supervised"][0]
    name = ctx.bundle.adapter(base, ctx.bundle.encoder_name(supervised))
    if name is None:
        return None
    s = ctx.settings
    adapted = load_bundled(ctx.bundle, name)
    made_on = adapted[0].config.adapted_from
    section = samples_section(
        {
            "vicreg": (ROLES["backbone"][1], *ctx.loaded["backbone"]),
            "supervised": (ROLES["supervised"][1], *ctx.loaded["supervised"]),
            "adapted": ("supervised through the VICReg backbone", *adapted),
        },
        ctx.paths[: s.one_base_images],
        ctx.out,
        s.one_base_samples,
        s.sampling,
        note="Two encoders compared through two RCDMs differ by their representations <i>and</i> by two image "
        "priors trained apart. Here the supervised backbone's representation also steers the VICReg backbone "
        f"RCDM, through a map fitted in closed form (ridge, held-out R² {fmt(made_on.get('map_r2_heldout'), 2)}; "
        "`rcdm adapt`, docs/adapt.md): rows [vicr] and [adap] share one image prior and their noise, so they differ "
        "only through the representation. Faithfulness is judged by each row's conditioning encoder among these "
        "inputs; the measured rows below come from the adapter's card.",
        heading="One base, two encoders",
        progress=ctx.progress,
        figure="one-base",
    )
    card = ctx.bundle.folder / name / "card.json"
    measured = (json.loads(card.read_text()) if card.is_file() else {}).get("metrics") or {}
    if measured:
        section.body += html_table(["measured (the adapter's card)", "value"], list(measured.items()))
    section.numbers = {
        **section.numbers,
        "adapter": name,
        "map_r2_heldout": made_on.get("map_r2_heldout"),
        "measured": measured,
    }
    return section


def _dream_section(ctx: PageContext) -> Section | None:
    """Images from representations the bundle's prior samples, drawn by the backbone RCDM (None: no prior)."""
    folder = ctx.bundle.prior(ROLES["backbone"][0])
    if folder is None:
        return None
    s = ctx.settings
    net, record = load_prior(folder)
    model, encoder = ctx.loaded["backbone"]
    check_prior_matches(record, encoder)
    reps = sample_representations(net, s.dream_images, steps=s.prior_steps, seed=s.sampling.seed)
    images = sample_many(model, reps, 1, s.sampling, progress=ctx.progress, desc="dreaming")
    own = encoder.encode(images[:, 0]).unsqueeze(1)  # each image's own representation
    rank1 = faithfulness_scores(reps, own).top1
    figure = grid(
        [list(images[:, 0])],
        col_labels=[f"dream {j}" for j in range(s.dream_images)],
        title=f"VICReg backbone RCDM on {s.dream_images} representations sampled from the prior ({s.prior_steps} "
        f"DDIM steps); {s.sampling.describe()}",
    )
    measured = record.get("metrics") or {}
    live = [
        [
            "prior",
            f"{folder.name} ({record.get('representations')} training images, {record.get('steps')} steps)",
        ],
        [
            f"rank-1 among the {s.dream_images} dreams (chance {1 / s.dream_images:.2f})",
            f"{fmt(rank1, 2)}: is each image's own representation nearest to the one it was drawn from?",
        ],
        *([k, v] for k, v in measured.items()),
    ]
    note = (
        "A representation prior (RCG's design: a small diffusion model trained on the encoder's representations "
        "of the training images) samples representations no image was encoded to; the backbone RCDM draws one "
        "image for each. What appears is what the representation space holds: the classes and the layouts it "
        "spreads its mass over. An image the prior never learned to produce, or the RCDM never learned to draw, "
        "cannot appear. The measured rows come from the prior's card (`rcdm recipe add --metrics`; "
        "docs/beyond.md); `rcdm generate` draws more."
    )
    table = html_table(["number", "value"], live)
    body = f"<p>{note}</p><div class='pair'>{figure_html(ctx.out, 'dream', figure)}\n<div>{table}</div></div>"
    return Section(
        "Dream: images from sampled representations",
        body,
        {"prior": folder.name, "images": s.dream_images, "rank1": number(rank1), "measured": measured},
    )


SECTIONS: dict[str, Callable[[PageContext], Section | None]] = {
    "samples": _samples_section,
    "invariance": _invariance_section,
    "interpolation": _interpolation_section,
    "adversarial": _adversarial_section,
    "inversion": _inversion_section,
    "one_base": _one_base_section,
    "dream": _dream_section,
}


# --- the paper's findings against the numbers ---------------------------------------------------------------


def findings_section(numbers: dict) -> Section:
    rows = findings(numbers)
    return Section(
        "The paper's findings, as this pack shows them",
        html_table(
            ["#", "the paper", "measured here", "agrees"],
            [[r["finding"], r["paper"], r["measured"], r["agrees"]] for r in rows],
        )
        + f"<p>Retention: 1 when the samples carry the augmentation, 0 when they do not (docs/analysis.md); a "
        f"model is said to keep an augmentation at a mean retention of {RETAINED} or more. A few images and "
        "samples make these numbers noisy: read them with the figures above.</p>",
        {"findings": rows},
    )


# HTML: what to do when no bundle is installed
HOW_TO_PACK = (
    "Produce it with <code>scripts/gpu_demo_pack.sh</code> (one GPU) or the three <code>rcdm recipe</code> "
    "commands of <code>docs/recipes.md</code>, then run <code>rcdm demo --bundle BUNDLE</code> (or put the "
    "bundle at <code>src/rcdm/assets/models</code>, where <code>make demo</code> finds it)."
)


# --- what a bundle's cards say, as HTML ------------------------------------------------------------------


def model_cards(bundle: DemoBundle, roles: dict[str, tuple[str, str]]) -> dict[str, dict]:
    """Role -> what the bundle's cards say (roles: role -> (target name, label)) about its RCDM and encoder (training, k-NN accuracy, metrics)."""
    out = {}
    for role, (target, label) in roles.items():
        path = bundle.folder / target / "card.json"
        card = json.loads(path.read_text()) if path.is_file() else {}
        enc = read_card(bundle.folder / bundle.encoder_name(target))
        feature = bundle.index["rcdms"][target].get("feature", card.get("feature"))
        out[role] = {
            "label": label,
            "target": target,
            "feature": feature,
            "preset": card.get("preset"),
            "steps": card.get("steps"),
            "planned_steps": card.get("planned_steps"),
            "images_seen": card.get("images_seen"),
            "wall_time_s": card.get("wall_time_s"),
            "cpu_time_s": card.get("cpu_time_s"),
            "device": card.get("device"),
            "metrics": card.get("metrics") or {},
            "encoder": enc.get("name"),
            "encoder_objective": enc.get("objective"),
            "encoder_epochs": enc.get("epochs"),
            "encoder_knn_accuracy": (enc.get("knn_accuracy") or {}).get(feature),
            "smoke": bool(card.get("smoke") or enc.get("smoke")),
        }
    return out


def bundle_section(bundle: DemoBundle, roles: dict[str, tuple[str, str]]) -> tuple[Section, dict[str, dict]]:
    """The demo page's first section (what the bundle holds, its model cards as a table) and the cards."""
    models = model_cards(bundle, roles)
    intro = (
        "<p>Representation-conditional diffusion models (RCDM, Bordes et al. 2022) trained on CIFAR-10, "
        "conditioned on a small VICReg encoder (its backbone and its projector) and on a supervised one, from "
        f"the bundle <code>{html.escape(str(bundle.folder))}</code> (<code>rcdm recipe pack</code>, "
        "docs/recipes.md). Inputs: the bundle's CIFAR-10 test images.</p>"
    )
    return Section("What this is", intro + models_html(models)), models


def models_html(models: dict[str, dict]) -> str:
    rows = [
        [
            m["label"],
            m["target"],
            f"{m['encoder']} ({m['encoder_objective']}, {m['encoder_epochs']} epochs)",
            fmt(m["encoder_knn_accuracy"]),
            f"{m['preset']}, {m['steps']} steps"
            + (
                f" of {m['planned_steps']} planned"
                if (m.get("planned_steps") or 0) > (m["steps"] or 0)
                else ""
            )
            + f", {m['images_seen']} images",
            "n/a" if m["wall_time_s"] is None else f"{m['wall_time_s']:.0f} s on {m['device']}",
            "n/a" if m.get("cpu_time_s") is None else f"{m['cpu_time_s']:.0f} s",
            "YES" if m["smoke"] else "no",
        ]
        for m in models.values()
    ]
    text = html_table(
        [
            "RCDM",
            "bundle entry",
            "encoder",
            "k-NN accuracy of the feature",
            "training",
            "wall time",
            "CPU time",
            "smoke",
        ],
        rows,
    )
    return text


def _rounded(value: object) -> str:
    """A card metric for people: 3 significant digits (0.019, 200), whole numbers as they are."""
    if isinstance(value, bool) or not isinstance(value, float):
        return fmt(value)
    return fmt(value) if not math.isfinite(value) else f"{value:.3g}"


def metrics_section(models: dict[str, dict]) -> Section | None:
    """The model cards' recorded metrics, rounded, after the pictures (None when the cards record none)."""
    rows = [[m["label"], k, _rounded(v)] for m in models.values() for k, v in m["metrics"].items()]
    if not rows:
        return None
    return Section(
        "Metrics recorded in the model cards",
        "<p>Measured when the pack was made (docs/metrics.md). Each metric's name says on how many CIFAR-10 test "
        "images and with which sampling; rank-1 retrieval among 1,000 images has chance 0.001.</p>"
        + html_table(["RCDM", "metric", "value"], rows),
    )


def smoke_notice(bundle: DemoBundle) -> str | None:
    if not bundle.smoke:
        return None
    reasons = (
        "; ".join(str(r) for r in bundle.index.get("smoke_reasons", [])) or "marked smoke in bundle.json"
    )
    return (
        "<b>SMOKE TEST: these are NOT trained models.</b> This bundle was packed with <code>--allow-smoke</code> "
        f"({html.escape(reasons)}). The pictures and numbers below only show that the pipeline runs; they say "
        "nothing about what a VICReg or a supervised representation keeps. " + HOW_TO_PACK
    )


def pack_note(bundled: bool) -> str:
    """HTML for the smoke-scale demo page: whether this install bundles the CIFAR-10 pack, and what to do."""
    if not bundled:
        return (
            "<b>The real CIFAR-10 pack (a VICReg encoder, a supervised one and three RCDMs) is not bundled with "
            "this install yet</b>, so this page shows the smoke-scale stand-in below: a tiny model, not a research "
            "model. " + HOW_TO_PACK
        )
    return (
        "This install bundles the CIFAR-10 pack: run <code>rcdm demo</code> without <code>--smoke-scale</code> "
        "to see backbone vs projector samples, invariance, interpolation and the adversarial comparison."
    )
