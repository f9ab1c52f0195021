"""The app's views: inputs -> (figure, images at model size, numbers as Markdown). No analysis happens here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from ..errors import RCDMError
from .models import (
    ModelCache,
    Sampling,
    _attack,
    _augment,
    _figures,
    _heat_map,
    _interpolate,
    _pixel_std,
    _samples,
    _sampling,
    _variance,
)

log = logging.getLogger(__name__)

PREVIEW_MAX_SIDE = 1024  # the input preview is never enlarged past this many pixels on its longer side
# the representation shift as the app shows it (one image): absolute, as results.json's `shift`
_ABS_SHIFT = "shift ‖Δrep‖ (absolute: results.json's shift)"

# ============================================================================================================
# Views: inputs -> (figure, images at model size, numbers as Markdown). No analysis happens here.
# ============================================================================================================


@dataclass
class ViewResult:
    figure: Image.Image | None = None
    images: list[tuple[Image.Image, str]] = field(default_factory=list)
    text: str = ""


def _pil(x: torch.Tensor) -> Image.Image:
    return _figures()[1].to_pil(x)


def _stack(figs: Sequence[Image.Image]) -> Image.Image:
    """Figures one under the other on white."""
    width = max(f.width for f in figs)
    canvas = Image.new("RGB", (width, sum(f.height for f in figs)), "white")
    y = 0
    for f in figs:
        canvas.paste(f, (0, y))
        y += f.height
    return canvas


def _f(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _quiet(*args: Any, **kwargs: Any) -> None:
    """The default progress callback: nothing."""


class Views:
    """The page's computations, callable without gradio (the tests and a notebook can use them directly)."""

    def __init__(self, cache: ModelCache, prior: tuple[Any, dict] | None = None):
        self.cache = cache
        self.prior = prior  # (RepresentationPrior, prior.json) for the Dream view, or None

    def _models(self, labels: Sequence[str]) -> list[tuple[str, Any, Any]]:
        if not labels:
            raise RCDMError("pick at least one model")
        return [(label, *self.cache.get(label)) for label in labels]

    def _each(
        self, labels: Sequence[str], progress: Callable, desc: str, run: Callable[[str, Any, Any], Any]
    ) -> list[tuple[str, Any]]:
        """(label, run(label, model, encoder)) per model, telling `progress` "LABEL: desc" before each."""
        models = self._models(labels)
        out = []
        for k, (label, model, enc) in enumerate(models):
            progress((k, len(models)), desc=f"{label}: {desc}")
            out.append((label, run(label, model, enc)))
        return out

    def samples(
        self, labels: Sequence[str], image: Path, s: Sampling, progress: Callable = _quiet
    ) -> ViewResult:
        """Per model: the input and N samples of its representation; sample j of every model: same noise."""
        rows, row_labels, images, stds = [], [], [], []
        runs = self._each(labels, progress, "sampling", lambda _, m, e: _samples(m, e, image, s))
        for label, (original, samples) in runs:
            rows.append([original, *samples])
            row_labels.append(label)
            images += [(_pil(x), f"{label} · sample {j}") for j, x in enumerate(samples)]
            stds.append(float(_pixel_std(samples).mean()) if s.num_samples > 1 else None)
        fig = _figures()[1].grid(
            rows,
            row_labels=row_labels,
            col_labels=["input", *[f"sample {j}" for j in range(s.num_samples)]],
            title="column j: the same starting noise in every row",
        )
        text = _table(
            ["model", "mean pixel std over samples"],
            [[lab, _f(v)] for lab, v in zip(labels, stds, strict=True)],
        )
        return ViewResult(fig, images, text)

    def kept(
        self, labels: Sequence[str], image: Path, s: Sampling, progress: Callable = _quiet
    ) -> ViewResult:
        """Per model: the input, the mean sample and the per-pixel std across samples (one colour scale)."""
        if s.num_samples < 2:
            raise RCDMError("the variance needs at least 2 samples: raise the number of samples")
        results = self._each(labels, progress, "sampling", lambda _, m, e: _variance(m, e, image, s))
        vmax = max(float(r.std.max()) for _, r in results)
        rows, images = [], []
        for label, r in results:
            heat = _heat_map(r.std[0], vmax)
            rows.append([r.originals[0], r.mean_samples[0], heat])
            images += [(_pil(r.mean_samples[0]), f"{label} · mean"), (_pil(heat), f"{label} · pixel std")]
        fig = _figures()[1].grid(
            rows,
            row_labels=[label for label, _ in results],
            col_labels=["input", "mean sample", "pixel std"],
            title=f"what is kept: dark = the same in every sample (std 0 .. {vmax:.3f})",
        )
        text = _table(
            ["model", "mean pixel std (lower: more is kept)"],
            [[label, _f(float(r.mean_pixel_std[0]))] for label, r in results],
        )
        return ViewResult(fig, images, text)

    def augment(
        self,
        labels: Sequence[str],
        image: Path,
        name: str,
        strength: float,
        s: Sampling,
        progress: Callable = _quiet,
    ) -> ViewResult:
        """Samples of rep(x) and rep(aug x) per model, with the representation cosine and the retention score."""

        def run(lab: str, m: Any, e: Any) -> Any:
            return _augment(m, e, image, name, strength, s, lab)

        results = [r for _, r in self._each(labels, progress, name, run)]
        analysis = _figures()[0]
        fig = analysis.invariance_figure(results)
        images = []
        for r in results:
            images.append((_pil(r.augmented[0, 0]), f"{r.label} · {name} input"))
            images += [(_pil(x), f"{r.label} · {name} sample {j}") for j, x in enumerate(r.aug_samples[0, 0])]
        text = _table(
            [
                "model",
                "representation cosine (aug vs clean)",
                _ABS_SHIFT,
                "retention (1 kept, 0 invariant)",
            ],
            [
                [r.label, _f(float(r.cosine[0, 0])), _f(float(r.shift[0, 0])), _f(float(r.retention[0, 0]))]
                for r in results
            ],
        )
        return ViewResult(fig, images, text)

    def interpolate(
        self,
        labels: Sequence[str],
        a: Path,
        b: Path,
        points: int,
        method: str,
        rows: int,
        s: Sampling,
        progress: Callable = _quiet,
    ) -> ViewResult:
        """Samples along the path between two images' representations; each row keeps its starting noise."""
        runs = self._each(
            labels,
            progress,
            "interpolating",
            lambda _, m, e: _interpolate(m, e, a, b, points, method, rows, s),
        )
        figs, images, rows_out = [], [], []
        analysis = _figures()[0]
        for label, r in runs:
            fig = analysis.interpolation_figure(r)
            figs.append(_stack([_caption(label, fig.width), fig]))
            images += [(_pil(r.samples[0, t, 0]), f"{label} · t={float(r.ts[t]):.2f}") for t in range(points)]
            change = r.summary()["methods"][method]["frame_change"]  # the CLI's numbers, from its summary
            rows_out.append([label, " ".join(_f(v) for v in change), _f(max(change) if change else None)])
        text = _table(["model", "frame change (mean |Δpixel| between neighbours)", "largest"], rows_out)
        return ViewResult(_stack(figs), images, text)

    def attack(
        self,
        labels: Sequence[str],
        image: Path,
        eps: float,
        pgd_steps: int,
        s: Sampling,
        progress: Callable = _quiet,
    ) -> ViewResult:
        """Untargeted PGD on each model's encoder; the supervised twin is added when no picked model has labels."""
        labels = list(labels)
        if not any(enc.classifier is not None for _, _, enc in self._models(labels)):
            twins = [c.label for c in self.cache.choices.values() if c.supervised and c.label not in labels]
            labels += twins[:1]
        results = self._each(
            labels, progress, "PGD", lambda lab, m, e: _attack(m, e, image, eps, pgd_steps, s, lab)
        )
        fig = _figures()[0].adversarial_figure([r for _, r in results])
        images = []
        rows = []
        for label, r in results:
            images.append((_pil(r.attacked[0]), f"{label} · attacked input"))
            images += [(_pil(x), f"{label} · attacked sample {j}") for j, x in enumerate(r.adv_samples[0])]
            classes = self.cache.choices[label].classes
            if r.clean_labels is None:
                lab = "no classifier"
            else:
                c, a = int(r.clean_labels[0]), int(r.adv_labels[0])
                lab = f"{_name(classes, c)} → {_name(classes, a)}"
            rows.append([label, _f(float(r.shift[0])), _f(float(r.cosine[0])), lab])
        text = _table(
            [
                "model",
                _ABS_SHIFT,
                "cosine to clean",
                "label before → after",
            ],
            rows,
        )
        text += (
            "\n\n`rcdm analyze adversarial` also gives the shift relative to the typical distance between its "
            "images' representations (relative_shift), which needs two images or more."
        )
        return ViewResult(fig, images, text)

    def invert(
        self,
        labels: Sequence[str],
        image: Path,
        other: Path | None,
        steps: int,
        progress: Callable = _quiet,
    ) -> ViewResult:
        """Per model: the input, its reconstruction from its inverted noise, and (with `other`) that noise decoded
        under the other image's representation: the layout the noise keeps, the content the representation does."""
        from ..inversion import INVERT_DEFAULTS, invert

        if not 1 <= steps <= 200:
            raise RCDMError(f"{steps} inversion steps is out of range: use 1..200")
        cfg = INVERT_DEFAULTS.replace(steps=steps)

        def run(_: str, m: Any, e: Any) -> tuple:
            inv = invert(m, e, [image], cfg, redraw=e.encode_files([other]) if other is not None else None)
            return inv, inv.redrawn

        results = self._each(labels, progress, "inverting", run)
        rows, images, table = [], [], []
        for label, (inv, swap) in results:
            row = [inv.originals[0], inv.reconstructions[0]] + ([swap[0]] if swap is not None else [])
            rows.append(row)
            images.append((_pil(inv.reconstructions[0]), f"{label} · reconstruction"))
            if swap is not None:
                images.append((_pil(swap[0]), f"{label} · its noise, {other.stem}'s representation"))
            table.append([label, f"{float(inv.psnr[0]):.1f} dB"])
        cols = ["input", "reconstruction"] + ([f"rep of {other.stem}"] if other is not None else [])
        fig = _figures()[1].grid(
            rows,
            row_labels=[label for label, _ in results],
            col_labels=cols,
            title=f"DDIM inversion, {steps} steps, guidance 1",
        )
        return ViewResult(fig, images, _table(["model", "reconstruction PSNR"], table))

    def dream(self, labels: Sequence[str], n: int, s: Sampling, progress: Callable = _quiet) -> ViewResult:
        """n representations sampled from the prior (seeded by the page's seed), one image each per model; every
        model draws from the same representations."""
        from ..diffusion import sample_many
        from ..prior import check_prior_matches, sample_representations

        if self.prior is None:
            raise RCDMError("no prior: start the app with --prior FOLDER (from rcdm prior)")
        net, record = self.prior
        reps = sample_representations(net, n, seed=s.config.seed)

        def run(_: str, m: Any, e: Any) -> torch.Tensor:
            check_prior_matches(record, e)
            return sample_many(m, reps.to(next(m.parameters()).device), 1, _sampling(s, m))[:, 0]

        results = self._each(labels, progress, "dreaming", run)
        images = [(_pil(x), f"{label} · dream {j}") for label, imgs in results for j, x in enumerate(imgs)]
        fig = _figures()[1].grid(
            [list(imgs) for _, imgs in results],
            row_labels=[label for label, _ in results],
            col_labels=[f"dream {j}" for j in range(n)],
            title=f"column j: the same sampled representation in every row (seed {s.config.seed})",
        )
        text = _table(
            ["prior", "trained on", "images"],
            [[str(record.get("encoder")), str(record.get("representations")), str(n)]],
        )
        return ViewResult(fig, images, text)


def _name(classes: Sequence[str], k: int) -> str:
    return classes[k] if 0 <= k < len(classes) else f"class {k}"


def _shown(img: Image.Image, least: int = 160) -> Image.Image:
    """An image for the input preview: small ones (CIFAR's 32 px) enlarged with nearest neighbours."""
    k = -(-least // max(1, min(img.size)))
    k = min(k, max(1, PREVIEW_MAX_SIDE // max(img.size)))  # a 20000x1 upload is not enlarged to 3,200,000x160
    return img.resize((img.width * k, img.height * k), Image.NEAREST) if k > 1 else img


def _caption(text: str, width: int) -> Image.Image:
    img = Image.new("RGB", (width, 18), "white")
    ImageDraw.Draw(img).text((2, 3), text, fill="black")
    return img
