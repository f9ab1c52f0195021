"""One offline HTML page with every analysis for a set of images: index.html plus its PNGs in the same folder.

The section builders (`variance_section`, `invariance_section`, ...) turn results into a `figures.Section`
(figure saved beside the page, a table, a note); `report` and the pack demo (`rcdm.demo`) both use them.
Builders that take a list compare results side by side (e.g. a backbone and a projector RCDM).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..diffusion import SamplingConfig, sampling_config
from ..encoders import Encoder
from ..figures import Section, fmt, html_page, html_table
from ..model import RCDM
from ._common import image_paths
from .adversarial import AdversarialResult, adversarial, adversarial_figure
from .interpolate import InterpolationResult, interpolate, interpolation_figure
from .invariance import InvarianceResult, invariance, invariance_figure
from .manipulate import ManipulationResult, manipulate, manipulation_figure
from .variance import VarianceResult, variance, variance_figure


def figure_html(out: Path, name: str, image: Image.Image) -> str:
    """Save OUT/<name>.png and return the tag that shows it on a page in OUT."""
    image.save(out / f"{name}.png")
    return f"<img src='{name}.png' alt='{name}'>"


def _body(note: str, figure: str, *tables: str) -> str:
    return (f"<p>{note}</p>" if note else "") + figure + "\n" + "".join(tables)


def variance_section(res: VarianceResult, out: Path, note: str = "") -> Section:
    table = html_table(
        ["image", "mean pixel std"], [[n, fmt(v)] for n, v in zip(res.names, res.mean_std, strict=True)]
    )
    fig = figure_html(out, "variance", variance_figure(res))
    return Section("Samples and their per-pixel variance", _body(note, fig, table), res.summary())


def invariance_section(
    results: Sequence[InvarianceResult],
    out: Path,
    note: str = "",
    heading: str = "Invariance to augmentations",
) -> Section:
    """One row per augmentation; with several results, a shift and a retention column per result."""
    sums = [r.summary() for r in results]
    many = len(results) > 1
    shift_cols = [f"rel. shift: {r.label}" for r in results] if many else ["relative rep. shift"]
    ret_cols = [f"retention: {r.label}" for r in results] if many else ["retention (1 = kept)"]
    rows = [
        [aug, strength, *(fmt(s["augmentations"][a]["relative_shift"]) for s in sums)]
        + [fmt(s["augmentations"][a]["retention"]) for s in sums]
        for a, (aug, strength) in enumerate(results[0].augmentations)
    ]
    table = html_table(["augmentation", "strength", *shift_cols, *ret_cols], rows)
    fig = figure_html(out, "invariance", invariance_figure(results))
    return Section(heading, _body(note, fig, table), sums[0] if not many else {"results": sums})


def adversarial_section(
    results: Sequence[AdversarialResult],
    out: Path,
    note: str = "",
    heading: str = "Adversarial robustness (untargeted PGD)",
    class_names: Sequence[str] = (),
) -> Section:
    """A summary row per result, then per image each result's shift and cosine and the last result's labels."""
    sums = [r.summary() for r in results]

    def name(k: int | None) -> str:
        return "n/a" if k is None else (class_names[k] if 0 <= k < len(class_names) else str(k))

    summary = html_table(
        ["encoder", "relative rep. shift", "cosine to clean", "label flip rate (its classifier)"],
        [
            [s["label"], fmt(s["relative_shift"]), fmt(s["cosine_to_clean"]), fmt(s["label_flip_rate"])]
            for s in sums
        ],
    )
    many = len(results) > 1
    cols = [
        c
        for r in results
        for c in (
            (f"{r.label}: rel. shift", f"{r.label}: cosine")
            if many
            else ("relative rep. shift", "cosine to clean")
        )
    ]
    last = sums[-1]["per_image"]
    per_image = html_table(
        ["image", *cols, "class (clean -> attacked)"],
        [
            [
                image,
                *(fmt(s["per_image"][image][k]) for s in sums for k in ("relative_shift", "cosine_to_clean")),
                f"{name(last[image]['clean_label'])} -> {name(last[image]['adv_label'])}",
            ]
            for image in sums[0]["per_image"]
        ],
    )
    fig = figure_html(out, "adversarial", adversarial_figure(results))
    return Section(heading, _body(note, fig, summary, per_image), sums[0] if not many else {"results": sums})


def interpolation_section(
    res: InterpolationResult,
    out: Path,
    note: str = "",
    heading: str = "Interpolation between the first two images",
) -> Section:
    """Per t: each method's frame change (from the previous t) and representation norm."""
    sums = res.summary()
    methods = sums["methods"]
    table = html_table(
        ["t", *[f"{m}: frame change" for m in res.methods], *[f"{m}: rep. norm" for m in res.methods]],
        [
            [
                fmt(float(t)),
                *[fmt(([None] + methods[m]["frame_change"])[k]) for m in res.methods],
                *[fmt(methods[m]["representation_norm"][k]) for m in res.methods],
            ]
            for k, t in enumerate(res.ts)
        ],
    )
    fig = figure_html(out, "interpolation", interpolation_figure(res))
    return Section(heading, _body(note, fig, table), sums)


def manipulation_section(res: ManipulationResult, out: Path, note: str = "") -> Section:
    table = html_table(["neighbour", "cosine"], [[Path(f).name, fmt(c)] for f, c in res.neighbours])
    fig = figure_html(out, "manipulation", manipulation_figure(res))
    return Section("Manipulation by common dimensions", _body(note, fig, table), res.summary())


@dataclass
class Report:
    """index: the page; figures: analysis name -> PNG next to it; results: analysis name -> summary dict."""

    index: Path
    figures: dict[str, Path]
    results: dict[str, dict]


def report(
    model: RCDM,
    encoder: Encoder,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    num_samples: int = 4,
    sampling: SamplingConfig | None = None,
    augmentations: Sequence[str] | None = None,
    eps: float = 4 / 255,
    pgd_steps: int = 10,
    interpolation_steps: int = 5,
    neighbours: str | Path | None = None,
    target: str | Path | None = None,
    k: int = 20,
    n_common: int = 14,
    threshold: float = 0.0,
    cache: str | Path | None = None,
    progress: bool = False,
    **settings,
) -> Report:
    """Run variance, invariance, adversarial, interpolation (2+ images) and manipulation (with `neighbours` and
    `target`) on `images` and write OUT/index.html, OUT/<analysis>.png and OUT/results.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = image_paths(images)
    cfg = sampling_config(sampling, **settings)
    common = dict(sampling=cfg, progress=progress)
    sections: dict[str, Section] = {}

    var = variance(model, encoder, paths, num_samples=max(2, num_samples), **common)
    sections["variance"] = variance_section(
        var, out, "What stays the same across samples is what the representation keeps."
    )
    inv = invariance(model, encoder, paths, augmentations=augmentations, num_samples=num_samples, **common)
    sections["invariance"] = invariance_section(
        [inv],
        out,
        "Rows: the clean image, then each augmentation; d = representation shift relative to the typical "
        "distance between the images, r = retention score (docs/analysis.md).",
    )
    adv = adversarial(model, encoder, paths, eps=eps, pgd_steps=pgd_steps, num_samples=num_samples, **common)
    sections["adversarial"] = adversarial_section(
        [adv],
        out,
        f"eps = {eps * 255:.1f}/255, {pgd_steps} steps; label flip rate {fmt(adv.label_flip_rate)}.",
    )
    if len(paths) >= 2:
        itp = interpolate(
            model,
            encoder,
            paths[:2],
            num_steps=interpolation_steps,
            num_samples=min(2, num_samples),
            sampling=cfg.replace(sampler="ddim") if cfg.sampler == "ddpm" else cfg,  # deterministic
            progress=progress,
        )
        sections["interpolation"] = interpolation_section(
            itp, out, "Each row keeps its starting noise; only the representation changes along t."
        )
    if neighbours is not None and target is not None:
        man = manipulate(
            model,
            encoder,
            paths[0],
            target,
            neighbours,
            k=k,
            n_common=n_common,
            threshold=threshold,
            cache=cache,
            num_samples=num_samples,
            **common,
        )
        sections["manipulation"] = manipulation_section(
            man,
            out,
            f"{int(man.common.sum())} dimensions are non-zero in more than {n_common} of the {k} nearest neighbours.",
        )
    page = html_page(f"rcdm analysis of {len(paths)} image(s)", list(sections.values()))
    index = out / "index.html"
    index.write_text(page)
    results = {name: s.numbers for name, s in sections.items()}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return Report(index, {name: out / f"{name}.png" for name in sections}, results)


__all__ = [
    "Report",
    "adversarial_section",
    "figure_html",
    "interpolation_section",
    "invariance_section",
    "manipulation_section",
    "report",
    "variance_section",
]
