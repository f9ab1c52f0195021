"""`rcdm app`: a gradio page to drop in a photo and see what each representation keeps.

The page holds no analysis code: every view calls the library functions the CLI calls (the adapter section
below is the only place that does), then lays their tensors and figures out. gradio is imported lazily, so the
core install and `import rcdm` work without it (`pip install 'rcdm[app]'` adds it).

Images shown are in [0, 1] at each model's sample size; labelled figures come from the analyses' own figure
functions (rcdm.analysis.*_figure, rcdm.figures.grid), as in `rcdm analyze`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import analysis, figures
from .analysis import adversarial, interpolate, invariance, list_augmentations, pixel_std, variance
from .analysis.variance import heat_map
from .data import list_images, load_image
from .demo import ROLES
from .devices import default_device
from .diffusion import SamplingConfig
from .encoders.cifar import read_card
from .errors import RCDMError
from .loading import MODELS, encoder_for, load_model, resolve_model_dir
from .recipes.bundle import bundled_pack, demo_images, read_bundle
from .visualize import visualize
from .weights import official_cache

log = logging.getLogger(__name__)

INSTALL_HINT = "rcdm app needs gradio: pip install 'rcdm[app]'"

# ============================================================================================================
# Adapter: every call into the rest of the library. When the library's signatures change (e.g. a sampling
# settings dataclass), re-point these functions and nothing else.
# ============================================================================================================


@dataclass(frozen=True)
class Sampling:
    """What every view samples with. steps None: the sampler's default; guidance 1 = none."""

    num_samples: int = 8
    sampler: str = "dpm++"
    steps: int | None = None
    seed: int = 0
    guidance: float = 1.0
    batch_size: int = 4  # small batches: the progress bar moves (8 samples of a 32 px model: ~the same time)


def _supports_guidance(model: Any) -> bool:
    """Whether the model was trained with a null representation (condition dropout), which guidance needs."""
    return model.null_rep is not None


def _sampling(s: Sampling, model: Any) -> SamplingConfig:
    """The library's sampling settings for a view; guidance only for models that support it (1 for others)."""
    guidance = s.guidance if _supports_guidance(model) else 1.0
    return SamplingConfig(
        sampler=s.sampler, steps=s.steps, seed=s.seed, guidance=guidance, batch_size=s.batch_size
    )  # type: ignore[arg-type]


def _load_source(source: str, device: torch.device, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """A run folder, saved model folder or official:NAME -> (RCDM in eval mode, its encoder) on `device`."""
    model = load_model(source, device=device)
    return model, encoder_for(model, trust_remote_code=trust_remote_code).to(device)


def _load_bundled(folder: Path, target: str, device: torch.device) -> tuple[Any, Any]:
    return read_bundle(folder).load(target, device)


def _check_image(path: str | Path) -> Image.Image:
    """Decode a file as the library does (RCDMError with a readable message when it is not an image)."""
    return load_image(path)


def _samples(model: Any, encoder: Any, image: Path, s: Sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """-> original (3, S, S), samples (N, 3, S, S) in [0, 1]; sample j starts from noise (seed, j) in every model."""
    vis = visualize(
        model, encoder, [image], num_samples=s.num_samples, sampling=_sampling(s, model), progress=True
    )
    return vis.originals[0], vis.samples[0]


def _variance(model: Any, encoder: Any, image: Path, s: Sampling) -> Any:
    return variance(
        model, encoder, [image], num_samples=s.num_samples, sampling=_sampling(s, model), progress=True
    )


def _augment(
    model: Any, encoder: Any, image: Path, name: str, strength: float, s: Sampling, label: str
) -> Any:
    return invariance(
        model,
        encoder,
        [image],
        augmentations=[f"{name}={strength}"],
        num_samples=s.num_samples,
        label=label,
        sampling=_sampling(s, model),
        progress=True,
    )


def _interpolate(
    model: Any, encoder: Any, a: Path, b: Path, points: int, method: str, rows: int, s: Sampling
) -> Any:
    return interpolate(
        model,
        encoder,
        [a, b],
        num_steps=points,
        methods=[method],
        num_samples=rows,
        sampling=_sampling(s, model),
        progress=True,
    )


def _attack(
    model: Any, encoder: Any, image: Path, eps: float, pgd_steps: int, s: Sampling, label: str
) -> Any:
    return adversarial(
        model,
        encoder,
        [image],
        attack="untargeted",
        eps=eps,
        pgd_steps=pgd_steps,
        num_samples=s.num_samples,
        label=label,
        sampling=_sampling(s, model),
        progress=True,
    )


def _pixel_std(samples: torch.Tensor) -> torch.Tensor:
    return pixel_std(samples)


def _heat_map(std: torch.Tensor, vmax: float) -> torch.Tensor:
    return heat_map(std, vmax)


def _augmentations() -> dict[str, Any]:
    return list_augmentations()


def _figures() -> Any:
    return analysis, figures


def _demo_images() -> list[Path]:
    return list_images(demo_images())


def _bundled_pack() -> tuple[Path, dict] | None:
    """(bundle folder, {role: (target, label)}) of the installed CIFAR-10 pack, or None."""
    folder = bundled_pack()
    return None if folder is None else (folder, ROLES)


def _pack_classes(folder: Path, target: str) -> list[str]:
    bundle = read_bundle(folder)
    return list(read_card(bundle.folder / bundle.encoder_name(target)).get("classes") or [])


def _check_source(source: str) -> None:
    """RCDMError unless `source` names a model: a model or run folder, or a known official:NAME (no download)."""
    if source.startswith("official:"):
        if source.removeprefix("official:") not in MODELS:
            raise RCDMError(f"unknown official model {source!r}: choose one of {', '.join(MODELS)}")
        return
    resolve_model_dir(source)


def _is_model(path: Path) -> bool:
    try:
        _check_source(str(path))
    except RCDMError:
        return False
    return True


def _cached_official() -> list[str]:
    """official:NAME models whose weights (published checkpoint or converted folder) are in the cache."""
    root = official_cache()
    return [
        f"official:{name}"
        for name, m in MODELS.items()
        if (root / "models" / name / "config.json").is_file() or (root / m.checkpoint.filename).is_file()
    ]


def _default_device() -> torch.device:
    return default_device()


# ============================================================================================================
# Models offered by the page, loaded once per process.
# ============================================================================================================

# name -> (sampler, steps): what the "sampling" dropdown offers; the steps slider overrides the steps.
SAMPLING_PRESETS: dict[str, tuple[str, int]] = {
    "fast (dpm++, 10 steps)": ("dpm++", 10),
    "default (dpm++, 20 steps)": ("dpm++", 20),
    "ddim, 50 steps": ("ddim", 50),
    "published (ddpm, 100 steps)": ("ddpm", 100),
}
DEFAULT_PRESET = "default (dpm++, 20 steps)"


@dataclass(frozen=True)
class ModelChoice:
    """One model the page offers. classes: class names for its encoder's classifier, when known.
    supervised: its encoder was trained with labels (the SSL models' 'supervised twin' in the Attack view)."""

    label: str
    source: str
    load: Callable[[torch.device], tuple[Any, Any]]
    classes: tuple[str, ...] = ()
    supervised: bool = False


def discover_models(
    models: Sequence[str] = (), runs: Sequence[str] = (), *, trust_remote_code: bool = False
) -> list[ModelChoice]:
    """The models to offer: `models` (run folders, saved models, official:NAME) when given; else the installed
    CIFAR-10 pack's, the models in the `runs` folders (each folder, or its sub-folders) and the official:NAME
    models whose weights are in the cache. Raises RCDMError when there is nothing to offer. trust_remote_code:
    allow encoders whose spec in a model's config runs code (hub:, module:)."""
    out: list[ModelChoice] = []
    if models:
        for m in models:
            _check_source(m)
        out = [_source_choice(m, trust_remote_code) for m in models]
    else:
        pack = _bundled_pack()
        if pack is not None:
            folder, roles = pack
            for role, (target, label) in roles.items():
                out.append(
                    ModelChoice(
                        label,
                        f"bundled pack: {target}",
                        lambda d, t=target: _load_bundled(folder, t, d),
                        classes=tuple(_pack_classes(folder, target)) if role == "supervised" else (),
                        supervised=role == "supervised",
                    )
                )
        for r in runs:
            root = Path(r).expanduser()
            if not root.is_dir():
                raise RCDMError(f"--runs {r!r} is not a folder: pass a folder of `rcdm train` run folders")
            found = [root] if _is_model(root) else [p for p in sorted(root.iterdir()) if _is_model(p)]
            if not found:
                raise RCDMError(f"no model in {r!r} or its sub-folders: pass a folder of run folders")
            out += [_source_choice(str(p), trust_remote_code) for p in found]
        out += [_source_choice(m) for m in _cached_official()]
    if not out:
        raise RCDMError(
            "no models to offer: pass --model RUN_FOLDER (or official:NAME) or --runs FOLDER, "
            "or install the CIFAR-10 pack (docs/recipes.md)"
        )
    labels = [c.label for c in out]
    return [
        c if labels.count(c.label) == 1 else ModelChoice(c.source, c.source, c.load, c.classes, c.supervised)
        for c in out
    ]


def _source_choice(source: str, trust_remote_code: bool = False) -> ModelChoice:
    label = (
        source if source.startswith("official:") else Path(os.path.abspath(Path(source).expanduser())).name
    )
    return ModelChoice(label, source, lambda d, s=source: _load_source(s, d, trust_remote_code))


class ModelCache:
    """label -> (model, encoder), loaded on first use and kept for the life of the process."""

    def __init__(self, choices: Sequence[ModelChoice], device: str | torch.device):
        self.choices = {c.label: c for c in choices}
        self.device = torch.device(device)
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def get(self, label: str) -> tuple[Any, Any]:
        if label not in self.choices:
            raise RCDMError(f"unknown model {label!r}: choose from {', '.join(self.choices)}")
        with self._lock:
            if label not in self._loaded:
                log.info("loading %s (%s)", label, self.choices[label].source)
                self._loaded[label] = self.choices[label].load(self.device)
            return self._loaded[label]


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

    def __init__(self, cache: ModelCache):
        self.cache = cache

    def _models(self, labels: Sequence[str]) -> list[tuple[str, Any, Any]]:
        if not labels:
            raise RCDMError("pick at least one model")
        return [(label, *self.cache.get(label)) for label in labels]

    def samples(
        self, labels: Sequence[str], image: Path, s: Sampling, progress: Callable = _quiet
    ) -> ViewResult:
        """Per model: the input and N samples of its representation; sample j of every model: same noise."""
        rows, row_labels, images, stds = [], [], [], []
        models = self._models(labels)
        for k, (label, model, enc) in enumerate(models):
            progress((k, len(models)), desc=f"{label}: sampling")
            original, samples = _samples(model, enc, image, s)
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
        models = self._models(labels)
        results = []
        for k, (label, model, enc) in enumerate(models):
            progress((k, len(models)), desc=f"{label}: sampling")
            results.append((label, _variance(model, enc, image, s)))
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
            [[label, _f(float(r.mean_std[0]))] for label, r in results],
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
        models = self._models(labels)
        results = []
        for k, (label, model, enc) in enumerate(models):
            progress((k, len(models)), desc=f"{label}: {name}")
            results.append(_augment(model, enc, image, name, strength, s, label))
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
                "shift ‖Δrep‖",
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
        models = self._models(labels)
        figs, images = [], []
        analysis = _figures()[0]
        for k, (label, model, enc) in enumerate(models):
            progress((k, len(models)), desc=f"{label}: interpolating")
            r = _interpolate(model, enc, a, b, points, method, rows, s)
            fig = analysis.interpolation_figure(r)
            figs.append(_stack([_caption(label, fig.width), fig]))
            images += [(_pil(r.samples[0, t, 0]), f"{label} · t={float(r.ts[t]):.2f}") for t in range(points)]
        return ViewResult(_stack(figs), images, "")

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
        models = self._models(labels)
        if not any(enc.classifier is not None for _, _, enc in models):
            twins = [c.label for c in self.cache.choices.values() if c.supervised and c.label not in labels]
            models += self._models(twins[:1])
        results = []
        for k, (label, model, enc) in enumerate(models):
            progress((k, len(models)), desc=f"{label}: PGD")
            results.append((label, _attack(model, enc, image, eps, pgd_steps, s, label)))
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
            ["model", "representation shift ‖Δrep‖", "cosine to clean", "label before → after"], rows
        )
        return ViewResult(fig, images, text)


def _name(classes: Sequence[str], k: int) -> str:
    return classes[k] if 0 <= k < len(classes) else f"class {k}"


def _shown(img: Image.Image, least: int = 160) -> Image.Image:
    """An image for the input preview: small ones (CIFAR's 32 px) enlarged with nearest neighbours."""
    k = -(-least // max(1, min(img.size)))
    return img.resize((img.width * k, img.height * k), Image.NEAREST) if k > 1 else img


def _caption(text: str, width: int) -> Image.Image:
    from PIL import ImageDraw

    img = Image.new("RGB", (width, 18), "white")
    ImageDraw.Draw(img).text((2, 3), text, fill="black")
    return img


# ============================================================================================================
# The gradio page.
# ============================================================================================================


def _import_gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home, before gradio is imported
    try:
        import gradio as gr
    except ModuleNotFoundError as e:
        if e.name != "gradio":
            raise
        raise RCDMError(INSTALL_HINT) from None
    return gr


def resolve_image(upload: str | None, example: str | None) -> Path:
    """The uploaded file when there is one, else the bundled example; checked to decode as an image."""
    if upload:
        path = Path(upload)
        if path.stat().st_size == 0:
            raise RCDMError(f"the uploaded file {path.name!r} is empty (0 bytes): upload an image")
    elif example:
        path = next((p for p in _demo_images() if p.name == example), None)
        if path is None:
            raise RCDMError(f"unknown example image {example!r}")
    else:
        raise RCDMError("upload an image or pick an example")
    try:
        _check_image(path)
    except RCDMError as e:
        raise RCDMError(str(e).replace(str(path), path.name)) from None
    return path


def build_app(
    choices: Sequence[ModelChoice],
    device: str | torch.device | None = None,
    *,
    prefill: bool = False,  # True: draw the Samples view of the first example now, so the page opens with it
) -> Any:
    """The gradio Blocks page over `choices` (see `discover_models`); models load on first use."""
    gr = _import_gradio()
    cache = ModelCache(choices, torch.device(device) if device else _default_device())
    views = Views(cache)
    examples = [p.name for p in _demo_images()]
    augs = _augmentations()
    labels = list(cache.choices)
    default_models = labels[:2] if len(labels) > 1 and not cache.choices[labels[1]].supervised else labels[:1]

    def sampling(n: float, preset: str, steps: float, seed: float, guidance: float) -> Sampling:
        if preset not in SAMPLING_PRESETS:
            raise RCDMError(f"unknown sampling preset {preset!r}: choose from {', '.join(SAMPLING_PRESETS)}")
        sampler, preset_steps = SAMPLING_PRESETS[preset]
        return Sampling(
            num_samples=int(n),
            sampler=sampler,
            steps=int(steps) or preset_steps,
            seed=int(seed),
            guidance=float(guidance),
        )

    def run(fn: Callable[[], ViewResult]) -> tuple:
        try:
            r = fn()
        except RCDMError as e:
            return None, [], "", f"**error:** {e}"
        except Exception as e:  # never a stack trace in the page; the log has it
            log.exception("view failed")
            return None, [], "", f"**unexpected error:** {e.__class__.__name__}: {e}"
        return r.figure, r.images, r.text, ""

    def preview(upload: str | None, example: str | None) -> tuple:
        try:
            return _shown(_check_image(resolve_image(upload, example))), ""
        except RCDMError as e:
            return None, f"**error:** {e}"

    def guidance_update(picked: list[str]) -> Any:
        try:
            ok = any(_supports_guidance(cache.get(label)[0]) for label in picked)
        except RCDMError:
            ok = False
        return gr.update(visible=ok)

    with gr.Blocks(title="rcdm: what does a representation keep?") as app:
        gr.Markdown(
            "## rcdm: what does a representation keep?\n"
            "Samples drawn from one image's representation: what stays the same across samples is what the "
            "representation keeps; what varies, it threw away. Column j of every row starts from the same noise."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="upload an image (any format Pillow reads)", type="filepath")
                example = gr.Dropdown(
                    examples, value=examples[0] if examples else None, label="or an example"
                )
                shown = gr.Image(
                    _shown(_check_image(resolve_image(None, examples[0]))) if examples else None,
                    label="input",
                    type="pil",
                    interactive=False,
                    height=160,
                )
            with gr.Column(scale=2):
                picked = gr.CheckboxGroup(labels, value=default_models, label="models (side by side)")
                with gr.Row():
                    n = gr.Slider(1, 16, value=8, step=1, label="samples")
                    preset = gr.Dropdown(list(SAMPLING_PRESETS), value=DEFAULT_PRESET, label="sampling")
                    steps = gr.Slider(0, 100, value=0, step=1, label="steps (0: the preset's)")
                    seed = gr.Number(0, precision=0, label="seed")
                guidance = gr.Slider(
                    1.0, 5.0, value=1.0, step=0.25, visible=False, label="guidance (models trained with it)"
                )
        status = gr.Markdown(elem_id="status")
        common = [n, preset, steps, seed, guidance]

        def outputs(first: ViewResult | None = None) -> list:
            first = first or ViewResult()
            fig = gr.Image(first.figure, label="figure", type="pil", interactive=False, format="png")
            with gr.Accordion("images at the model's resolution", open=False):
                gal = gr.Gallery(first.images, label="images", type="pil", format="png", columns=8)
            return [fig, gal, gr.Markdown(first.text), status]

        with gr.Tabs():
            with gr.Tab("Samples"):
                go = gr.Button("sample", variant="primary")
                out = outputs(
                    views.samples(default_models, resolve_image(None, examples[0]), Sampling())
                    if prefill and examples
                    else None
                )

                def on_samples(up, ex, pk, n_, pr, st, sd, gd, progress=gr.Progress(track_tqdm=True)):
                    return run(
                        lambda: views.samples(
                            pk, resolve_image(up, ex), sampling(n_, pr, st, sd, gd), progress
                        )
                    )

                go.click(on_samples, [upload, example, picked, *common], out, api_name="samples")
            with gr.Tab("What is kept"):
                go = gr.Button("variance map", variant="primary")
                out = outputs()

                def on_kept(up, ex, pk, n_, pr, st, sd, gd, progress=gr.Progress(track_tqdm=True)):
                    return run(
                        lambda: views.kept(pk, resolve_image(up, ex), sampling(n_, pr, st, sd, gd), progress)
                    )

                go.click(on_kept, [upload, example, picked, *common], out, api_name="kept")
            with gr.Tab("Augment"):
                with gr.Row():
                    aug = gr.Dropdown(
                        list(augs), value="grayscale" if "grayscale" in augs else None, label="augmentation"
                    )
                    strength = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="strength")
                help_md = gr.Markdown(augs["grayscale"].help if "grayscale" in augs else "")
                aug.change(
                    lambda a: (
                        (gr.update(value=augs[a].default_strength), augs[a].help) if a in augs else (1.0, "")
                    ),
                    aug,
                    [strength, help_md],
                )
                go = gr.Button("augment and sample", variant="primary")
                out = outputs()

                def on_augment(up, ex, pk, a, sg, n_, pr, st, sd, gd, progress=gr.Progress(track_tqdm=True)):
                    return run(
                        lambda: views.augment(
                            pk, resolve_image(up, ex), a, float(sg), sampling(n_, pr, st, sd, gd), progress
                        )
                    )

                go.click(
                    on_augment, [upload, example, picked, aug, strength, *common], out, api_name="augment"
                )
            with gr.Tab("Interpolate"):
                with gr.Row():
                    upload_b = gr.File(label="second image", type="filepath")
                    example_b = gr.Dropdown(
                        examples, value=examples[1] if len(examples) > 1 else None, label="or an example"
                    )
                    points = gr.Slider(2, 12, value=6, step=1, label="points on the path")
                    method = gr.Radio(["linear", "spherical"], value="linear", label="path")
                    rows = gr.Slider(1, 4, value=1, step=1, label="noises (rows)")
                go = gr.Button("interpolate", variant="primary")
                out = outputs()

                def on_interpolate(
                    up,
                    ex,
                    ub,
                    eb,
                    pk,
                    k,
                    m,
                    r,
                    n_,
                    pr,
                    st,
                    sd,
                    gd,
                    progress=gr.Progress(track_tqdm=True),
                ):
                    return run(
                        lambda: views.interpolate(
                            pk,
                            resolve_image(up, ex),
                            resolve_image(ub, eb),
                            int(k),
                            m,
                            int(r),
                            sampling(n_, pr, st, sd, gd),
                            progress,
                        )
                    )

                go.click(
                    on_interpolate,
                    [upload, example, upload_b, example_b, picked, points, method, rows, *common],
                    out,
                    api_name="interpolate",
                )
            with gr.Tab("Attack"):
                gr.Markdown(
                    "Untargeted L∞ PGD pushes each picked model's representation away from the clean one. Labels "
                    "come from the encoder's classifier; when no picked model has one, the supervised twin (the "
                    "pack's supervised model) is attacked too, for the paper's SSL vs supervised comparison."
                )
                with gr.Row():
                    eps = gr.Slider(0.5, 16, value=4, step=0.5, label="epsilon (/255)")
                    pgd_steps = gr.Slider(1, 20, value=10, step=1, label="PGD steps")
                go = gr.Button("attack", variant="primary")
                out = outputs()

                def on_attack(up, ex, pk, e, ps, n_, pr, st, sd, gd, progress=gr.Progress(track_tqdm=True)):
                    return run(
                        lambda: views.attack(
                            pk,
                            resolve_image(up, ex),
                            float(e) / 255,
                            int(ps),
                            sampling(n_, pr, st, sd, gd),
                            progress,
                        )
                    )

                go.click(
                    on_attack, [upload, example, picked, eps, pgd_steps, *common], out, api_name="attack"
                )

        upload.change(preview, [upload, example], [shown, status], api_name="check")
        example.change(preview, [upload, example], [shown, status], api_name=False)
        picked.change(guidance_update, picked, guidance, api_name=False)
        app.load(guidance_update, picked, guidance, api_name=False)
    # One job at a time: concurrent users queue instead of sampling at once and exhausting memory.
    app.queue(default_concurrency_limit=1, max_size=32)
    return app


def start(app: Any, host: str = "127.0.0.1", port: int | None = 7860) -> str:
    """Serve the page on host:port (port None: a free one) in a background thread; returns the local URL once
    it is up. `app.block_thread()` then serves until interrupted, `app.close()` stops it."""
    app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        max_file_size="64mb",
        show_error=False,
    )
    return str(app.local_url)
