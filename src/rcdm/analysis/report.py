"""One offline HTML page with every analysis for a set of images: index.html plus its PNGs in the same folder.

The section builders (`variance_section`, `invariance_section`, ...) turn results into a `figures.Section`
(figure saved beside the page, a table, a note); `report` and the pack demo (`rcdm.demo.page`) both use them.
Builders that take a list compare results side by side (e.g. a backbone and a projector RCDM).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from ..data import load_views
from ..diffusion import SamplingConfig, resolve_sampling, sample_many
from ..encoders import Encoder
from ..figures import Section, fmt, grid, html_page, html_table, number
from ..metrics.faithfulness import faithfulness_scores
from ..model import RCDM
from ._common import image_paths
from .adversarial import DEFAULT_EPS, AdversarialResult, adversarial, adversarial_figure
from .interpolate import InterpolationResult, interpolate, interpolation_figure
from .invariance import InvarianceResult, invariance, invariance_figure
from .manipulate import ManipulationResult, manipulate, manipulation_figure
from .variance import VarianceResult, pixel_std, variance, variance_figure


def figure_html(out: Path, name: str, image: Image.Image) -> str:
    """Save OUT/<name>.png and return the tag that shows it on a page in OUT."""
    image.save(out / f"{name}.png")
    return f"<img src='{name}.png' alt='{name}'>"


def _body(note: str, figure: str, *tables: str) -> str:
    """The note, then the figure with its numbers beside it (below it where the page is too narrow)."""
    return (
        f"<p>{note}</p>" if note else ""
    ) + f"<div class='pair'>{figure}\n<div>{''.join(tables)}</div></div>"


def samples_section(
    runs: dict[str, tuple[str, RCDM, Encoder]],
    images: Sequence[Path],
    out: Path,
    num_samples: int,
    sampling: SamplingConfig,
    *,
    note: str = "",
    heading: str = "Samples",
    progress: bool = False,
    figure: str = "samples",  # OUT/<figure>.png
) -> Section:
    """Samples of the same inputs from several RCDMs (key -> (label, model, encoder)), column j sharing its noise.

    Each run's faithfulness (judged by its own encoder, among the inputs) and mean pixel std are tabled; the
    section's numbers are per key. Figure columns are tagged with each key's first four letters.
    """
    n, m = num_samples, len(images)
    samples, faith, stds, views = {}, {}, {}, None
    for key, (label, model, enc) in runs.items():
        prep = enc.preprocessing
        views, enc_views = load_views(images, model.config.sample_size, prep.input_size, prep.resample)
        reps = enc.encode(enc_views)
        samples[key] = sample_many(
            model, reps, n, sampling, shared_noise=True, progress=progress, desc=f"{key} samples"
        )
        faith[key] = faithfulness_scores(
            reps, enc.encode(samples[key].flatten(0, 1)).view(m, n, -1), encoder=label
        )
        stds[key] = pixel_std(samples[key]).mean(dim=(-2, -1)) if n > 1 else None  # (M,) or None
    assert views is not None
    names = [p.stem for p in images]
    fig = grid(
        [[views[i], *(x for key in runs for x in samples[key][i])] for i in range(m)],
        row_labels=names,
        col_labels=["input", *[f"{key[:4]} {j}" for key in runs for j in range(n)]],
        title="samples: "
        + " vs ".join(f"{label} RCDM ({key[:4]})" for key, (label, _, _) in runs.items())
        + "; column j of every run: same noise",
    )
    numbers = {
        key: {
            "faithfulness": {
                k: number(v) if isinstance(v, float) else v for k, v in asdict(faith[key]).items()
            },
            "mean_pixel_std": None if stds[key] is None else number(stds[key].mean()),
            "pixel_std_per_image": None
            if stds[key] is None
            else {name: number(v) for name, v in zip(names, stds[key], strict=True)},
        }
        for key in runs
    }
    table = html_table(
        [
            "RCDM",
            "top-1 retrieval",
            "mean rank (chance)",
            "cosine to condition",
            "mean pixel std over samples",
        ],
        [
            [
                label,
                fmt(faith[key].top1),
                f"{fmt(faith[key].mean_rank)} ({fmt(faith[key].chance_rank)})",
                fmt(faith[key].cosine),
                fmt(numbers[key]["mean_pixel_std"]),
            ]
            for key, (label, _, _) in runs.items()
        ],
    )
    return Section(heading, _body(note, figure_html(out, figure, fig), table), numbers)


def variance_section(res: VarianceResult, out: Path, note: str = "") -> Section:
    table = html_table(
        ["image", "mean pixel std"], [[n, fmt(v)] for n, v in zip(res.names, res.mean_pixel_std, strict=True)]
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

    flips = any(s["label_flip_rate"] is not None for s in sums)  # no classifier anywhere: no n/a column
    summary = html_table(
        [
            "encoder",
            "relative rep. shift",
            "cosine to clean",
            *(["label flip rate (its classifier)"] * flips),
        ],
        [
            [
                s["label"],
                fmt(s["relative_shift"]),
                fmt(s["cosine_to_clean"]),
                *([fmt(s["label_flip_rate"])] * flips),
            ]
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
    labelled = any(v["clean_label"] is not None or v["adv_label"] is not None for v in last.values())
    per_image = html_table(
        ["image", *cols, *(["class (clean -> attacked)"] * labelled)],
        [
            [
                image,
                *(fmt(s["per_image"][image][k]) for s in sums for k in ("relative_shift", "cosine_to_clean")),
                *([f"{name(last[image]['clean_label'])} -> {name(last[image]['adv_label'])}"] * labelled),
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
    eps: float = DEFAULT_EPS,
    pgd_steps: int = 10,
    interpolation_steps: int = 5,
    neighbours: str | Path | None = None,
    target: str | Path | None = None,
    k: int = 20,
    n_common: int = 14,
    threshold: float = 0.0,
    cache: str | Path | None = None,
    progress: bool = False,
) -> Report:
    """Run variance, invariance, adversarial, interpolation (2+ images) and manipulation (with `neighbours` and
    `target`) on `images` and write OUT/index.html, OUT/<analysis>.png and OUT/results.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = image_paths(images)
    cfg = resolve_sampling(model, sampling)
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
    "samples_section",
    "variance_section",
]
