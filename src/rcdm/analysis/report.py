"""One offline HTML page with every analysis for a set of images: index.html plus its PNGs in the same folder."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..diffusion import Sampler
from ..encoders import Encoder
from ..figures import html_page
from ..model import RCDM
from ._common import fmt, image_paths
from .adversarial import adversarial, adversarial_figure
from .interpolate import interpolate, interpolation_figure
from .invariance import invariance, invariance_figure
from .manipulate import manipulate, manipulation_figure
from .variance import variance, variance_figure


def html_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _num(v: float | None) -> str:
    return "n/a" if v is None else fmt(v)


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
    steps: int | None = None,
    sampler: Sampler = "dpm++",
    seed: int = 0,
    guidance: float = 1.0,
    batch_size: int = 64,
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
) -> Report:
    """Run variance, invariance, adversarial, interpolation (2+ images) and manipulation (with `neighbours` and
    `target`) on `images` and write OUT/index.html, OUT/<analysis>.png and OUT/results.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = image_paths(images)
    common = dict(
        steps=steps, sampler=sampler, seed=seed, guidance=guidance, batch_size=batch_size, progress=progress
    )
    figures: dict[str, Path] = {}
    results: dict[str, dict] = {}
    sections: list[tuple[str, str]] = []

    def add(name: str, heading: str, figure, summary: dict, table: str, note: str = "") -> None:
        path = out / f"{name}.png"
        figure.save(path)
        figures[name] = path
        results[name] = summary
        text = f"<p>{html.escape(note)}</p>" if note else ""
        sections.append((heading, f"{text}<img src='{path.name}' alt='{name}'>\n{table}"))

    var = variance(model, encoder, paths, num_samples=max(2, num_samples), **common)
    add(
        "variance",
        "Samples and their per-pixel variance",
        variance_figure(var),
        var.summary(),
        html_table(
            ["image", "mean pixel std"],
            [[n, fmt(float(v))] for n, v in zip(var.names, var.mean_std, strict=True)],
        ),
        "What stays the same across samples is what the representation keeps.",
    )
    inv = invariance(model, encoder, paths, augmentations=augmentations, num_samples=num_samples, **common)
    inv_sum = inv.summary()
    add(
        "invariance",
        "Invariance to augmentations",
        invariance_figure([inv]),
        inv_sum,
        html_table(
            ["augmentation", "strength", "relative rep. shift", "retention (1 = kept)"],
            [
                [r["augmentation"], r["strength"], _num(r["relative_shift"]), _num(r["retention"])]
                for r in inv_sum["augmentations"]
            ],
        ),
        "Rows: the clean image, then each augmentation; d = representation shift relative to the typical "
        "distance between the images, r = retention score (docs/analysis.md).",
    )
    adv = adversarial(model, encoder, paths, eps=eps, pgd_steps=pgd_steps, num_samples=num_samples, **common)
    adv_sum = adv.summary()
    add(
        "adversarial",
        "Adversarial robustness (untargeted PGD)",
        adversarial_figure([adv]),
        adv_sum,
        html_table(
            ["image", "relative rep. shift", "cosine to clean", "clean label", "attacked label"],
            [
                [n, _num(v["relative_shift"]), _num(v["cosine_to_clean"]), v["clean_label"], v["adv_label"]]
                for n, v in adv_sum["per_image"].items()
            ],
        ),
        f"eps = {eps * 255:.1f}/255, {pgd_steps} steps; label flip rate {_num(adv_sum['label_flip_rate'])}.",
    )
    if len(paths) >= 2:
        itp = interpolate(
            model,
            encoder,
            paths[:2],
            num_steps=interpolation_steps,
            num_samples=min(2, num_samples),
            **{**common, "sampler": "ddim" if sampler == "ddpm" else sampler},
        )
        itp_sum = itp.summary()
        add(
            "interpolation",
            "Interpolation between the first two images",
            interpolation_figure(itp),
            itp_sum,
            html_table(
                ["t", *[f"{m} norm" for m in itp.methods]],
                [
                    [
                        fmt(float(t)),
                        *[_num(itp_sum["methods"][m]["representation_norm"][i]) for m in itp.methods],
                    ]
                    for i, t in enumerate(itp.ts)
                ],
            ),
            "Each row keeps its starting noise; only the representation changes along t.",
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
        man_sum = man.summary()
        add(
            "manipulation",
            "Manipulation by common dimensions",
            manipulation_figure(man),
            man_sum,
            html_table(["neighbour", "cosine"], [[Path(f).name, fmt(c)] for f, c in man.neighbours]),
            f"{man_sum['num_common']} dimensions are non-zero in more than {n_common} of the {k} nearest neighbours.",
        )
    page = html_page(f"rcdm analysis of {len(paths)} image(s)", sections)
    index = out / "index.html"
    index.write_text(page)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return Report(index, figures, results)
