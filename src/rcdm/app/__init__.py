"""`rcdm app`: a gradio page to drop in a photo and see what each representation keeps.

The page holds no analysis code: every view calls the library functions the CLI calls (the adapter section
below is the only place that does), then lays their tensors and figures out. gradio is imported lazily, so the
core install and `import rcdm` work without it (`pip install 'rcdm[app]'` adds it).

Images shown are in [0, 1] at each model's sample size; labelled figures come from the analyses' own figure
functions (rcdm.analysis.*_figure, rcdm.figures.grid), as in `rcdm analyze`.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..analysis.adversarial import DEFAULT_EPS
from ..checks import check_guidance
from ..deadline import time_limit
from ..devices import check_device
from ..diffusion import SAMPLING_PRESETS
from ..errors import RCDMError
from .models import (
    APP_SAMPLING,
    DEFAULT_PRESET,
    INSTALL_HINT,
    ModelCache,
    ModelChoice,
    Sampling,
    _augmentations,
    _check_image,
    _default_device,
    _demo_images,
    _supports_guidance,
    discover_models,
)
from .views import ViewResult, Views, _shown

# Wall-clock seconds one request may sample before it is stopped with a message (`rcdm app --request-limit`; how
# long requests take: docs/app.md).
REQUEST_LIMIT_S = 120.0
# The API's parameter names, the CLI's words: the image (an upload, else an example) and the models, then per view
# its own, then the sampling settings.
IMAGE_ARGS = ["image", "example", "models"]
SAMPLING_ARGS = ["num_samples", "sampling_preset", "steps", "seed", "guidance"]
# The API's earlier preset labels -> (the library's preset, steps), so that scripts calling it keep working.
OLD_PRESETS: dict[str, tuple[str, int]] = {
    "fast (dpm++, 10 steps)": ("fast", 10),
    "default (dpm++, 20 steps)": ("fast", 20),
    "ddim, 50 steps": ("paired", 50),
    "published (ddpm, 100 steps)": ("published", 100),
}

__all__ = [
    "ModelCache",
    "ModelChoice",
    "Sampling",
    "Views",
    "build_app",
    "discover_models",
    "resolve_image",
    "start",
]

log = logging.getLogger(__name__)

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


def _bounded(value: Any, name: str, lo: float, hi: float) -> float:
    """A number sent to the page's API, checked: gradio's sliders let NaN through (NaN compares false)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RCDMError(f"{name} {value!r} is not a number") from None
    if not (math.isfinite(x) and lo <= x <= hi):
        whole = float(lo).is_integer() and float(hi).is_integer()  # a seed's bound in full, not 4.29e+09
        span = f"{int(lo)} to {int(hi)}" if whole else f"{lo:g} to {hi:g}"
        raise RCDMError(f"{name} {value!r} is out of range: use a number from {span}")
    return x


def build_app(
    choices: Sequence[ModelChoice],
    device: str | torch.device | None = None,
    *,
    prefill: bool = False,  # True: draw the Samples view of the first example now, so the page opens with it
    prior: tuple[Any, dict]
    | None = None,  # (RepresentationPrior, prior.json) from rcdm.prior.load_prior: a Dream tab
    request_limit_s: float | None = REQUEST_LIMIT_S,
) -> Any:
    """The gradio Blocks page over `choices` (see `discover_models`); models load on first use. A request that
    samples longer than `request_limit_s` seconds is stopped with a message (None: no limit), so that one request
    cannot hold the only queue slot for minutes."""
    gr = _import_gradio()
    cache = ModelCache(choices, check_device(str(device)) if device else _default_device())
    views = Views(cache, prior)
    examples = [p.name for p in _demo_images()]
    augs = _augmentations()
    labels = list(cache.choices)
    default_models = labels[:2] if len(labels) > 1 and not cache.choices[labels[1]].supervised else labels[:1]

    def sampling(n: float, preset: str, steps: float, seed: float, guidance: float) -> Sampling:
        preset, preset_steps = OLD_PRESETS.get(preset, (preset, None))
        if preset not in SAMPLING_PRESETS:
            raise RCDMError(f"unknown sampling preset {preset!r}: choose from {', '.join(SAMPLING_PRESETS)}")
        return Sampling(
            num_samples=int(_bounded(n, "samples", 1, 16)),
            config=APP_SAMPLING.replace(
                sampler=SAMPLING_PRESETS[preset].sampler,
                steps=int(_bounded(steps, "steps", 0, 1000))
                or preset_steps
                or SAMPLING_PRESETS[preset].steps,
                seed=int(_bounded(seed, "seed", 0, 2**32 - 1)),
                guidance=check_guidance(_bounded(guidance, "guidance", 0, 1e9), "guidance"),
            ),
        )

    def run(fn: Callable[[], ViewResult]) -> tuple:
        try:
            with time_limit(request_limit_s):
                r = fn()
        except RCDMError as e:
            return None, [], "", f"**error:** {e}"
        except Exception as e:  # never a stack trace in the page; the log has it
            log.exception("view failed")
            return None, [], "", f"**unexpected error:** {e.__class__.__name__}: {e}"
        return r.figure, r.images, r.text, ""

    def endpoint(names: Sequence[str], view: Callable[[dict], ViewResult]) -> Callable:
        """A click handler taking `names` (then `progress`) and calling `view` with {name: value} inside `run`.
        Gradio names an endpoint's API parameters after its handler's signature, so the signature is built
        here once instead of being written out per tab."""
        params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
        progress = inspect.Parameter(
            "progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress(track_tqdm=True)
        )
        signature = inspect.Signature([*params, progress])

        def handler(*args: Any, **kwargs: Any) -> tuple:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return run(lambda: view(bound.arguments))

        handler.__signature__ = signature  # type: ignore[attr-defined]
        return handler

    def image_of(a: dict) -> Path:
        return resolve_image(a["image"], a["example"])

    def sampling_of(a: dict) -> Sampling:
        return sampling(*(a[name] for name in SAMPLING_ARGS))

    def button(label: str, names: Sequence[str], view: Callable[[dict], ViewResult], inputs: list, api: str):
        """A tab's button and outputs; the button calls `view` through `endpoint(names, view)`."""
        go = gr.Button(label, variant="primary")
        go.click(endpoint(names, view), inputs, outputs(), api_name=api)

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

    # delete_cache: uploads and drawn images older than an hour go every 10 minutes, and all of them when the app
    # stops, so that anonymous uploads cannot fill the disk (each is capped at 64 MB by start()).
    with gr.Blocks(title="rcdm: what does a representation keep?", delete_cache=(600, 3600)) as app:
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
                    preset = gr.Dropdown(
                        [(f"{k} ({c.sampler}, {c.steps} steps)", k) for k, c in SAMPLING_PRESETS.items()],
                        value=DEFAULT_PRESET,
                        label="sampling",
                        allow_custom_value=True,  # the API's earlier labels (OLD_PRESETS); others get a message
                    )
                    steps = gr.Slider(0, 100, value=0, step=1, label="steps (0: the preset's)")
                    seed = gr.Number(0, precision=0, label="seed")
                recorded = max([1.0] + [cache.choices[label].guidance for label in default_models])
                guidance = gr.Slider(
                    1.0,
                    10.0,  # the pack's 5 in the middle; 8 was more faithful but less natural (README)
                    value=recorded,
                    step=0.25,
                    # shown at once when a model records a weight above 1 (it was trained for guidance); the
                    # page's load event then asks the models themselves, which loads them
                    visible=recorded > 1,
                    label="guidance (models trained with it)",
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
            for title, label, api_name, view in (
                ("Samples", "sample", "samples", views.samples),
                ("What is kept", "variance map", "kept", views.kept),
            ):
                with gr.Tab(title):
                    go = gr.Button(label, variant="primary")
                    first = prefill and examples and api_name == "samples"
                    out = outputs(
                        view(default_models, resolve_image(None, examples[0]), Sampling()) if first else None
                    )
                    go.click(
                        endpoint(
                            IMAGE_ARGS + SAMPLING_ARGS,
                            lambda a, view=view: view(
                                a["models"], image_of(a), sampling_of(a), a["progress"]
                            ),
                        ),
                        [upload, example, picked, *common],
                        out,
                        api_name=api_name,
                    )
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
                    api_name=False,
                )
                button(
                    "augment and sample",
                    [*IMAGE_ARGS, "augmentation", "strength", *SAMPLING_ARGS],
                    lambda a: views.augment(
                        a["models"],
                        image_of(a),
                        a["augmentation"],
                        _bounded(a["strength"], "strength", 0, 1),
                        sampling_of(a),
                        a["progress"],
                    ),
                    [upload, example, picked, aug, strength, *common],
                    "augment",
                )
            with gr.Tab("Invert"):
                gr.Markdown(
                    "The noise from which the model redraws the input under its own representation (DDIM "
                    "inversion), and that noise decoded under a second image's representation: the layout is "
                    "what the noise keeps, the content what the representation keeps."
                )
                with gr.Row():
                    swap_from = gr.Dropdown(
                        examples,
                        value=examples[1] if len(examples) > 1 else None,
                        label="representation from",
                    )
                    inv_steps = gr.Slider(5, 100, value=50, step=1, label="inversion steps")
                button(
                    "invert",
                    [*IMAGE_ARGS, "representation_from", "inversion_steps"],
                    lambda a: views.invert(
                        a["models"],
                        image_of(a),
                        resolve_image(None, a["representation_from"]) if a["representation_from"] else None,
                        int(_bounded(a["inversion_steps"], "inversion steps", 1, 200)),
                        a["progress"],
                    ),
                    [upload, example, picked, swap_from, inv_steps],
                    "invert",
                )
            if prior is not None:
                with gr.Tab("Dream"):
                    gr.Markdown(
                        f"Images from representations sampled from a prior of `{prior[1].get('encoder')}` "
                        f"({prior[1].get('feature')}) trained on {prior[1].get('representations')} images: what "
                        "that representation space holds, drawn by each picked model conditioned on it."
                    )
                    dreams = gr.Slider(1, 16, value=8, step=1, label="images")
                    button(
                        "dream",
                        ["models", "num_images", *SAMPLING_ARGS],
                        lambda a: views.dream(
                            a["models"],
                            int(_bounded(a["num_images"], "images", 1, 16)),
                            sampling_of(a),
                            a["progress"],
                        ),
                        [picked, dreams, *common],
                        "dream",
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
                button(
                    "interpolate",
                    [
                        "image",
                        "example",
                        "second_image",
                        "second_example",
                        "models",
                        "num_points",
                        "path",
                        "rows",
                        *SAMPLING_ARGS,
                    ],
                    lambda a: views.interpolate(
                        a["models"],
                        image_of(a),
                        resolve_image(a["second_image"], a["second_example"]),
                        int(_bounded(a["num_points"], "points", 2, 64)),
                        a["path"],
                        int(_bounded(a["rows"], "rows", 1, 16)),
                        sampling_of(a),
                        a["progress"],
                    ),
                    [upload, example, upload_b, example_b, picked, points, method, rows, *common],
                    "interpolate",
                )
            with gr.Tab("Attack"):
                gr.Markdown(
                    "Untargeted L∞ PGD pushes each picked model's representation away from the clean one. Labels "
                    "come from the encoder's classifier; when no picked model has one, the supervised twin (the "
                    "pack's supervised model) is attacked too, for the paper's SSL vs supervised comparison."
                )
                with gr.Row():
                    eps = gr.Slider(
                        0.5, 16, value=round(DEFAULT_EPS * 255, 2), step=0.5, label="epsilon (/255)"
                    )
                    pgd_steps = gr.Slider(1, 20, value=10, step=1, label="PGD steps")
                button(
                    "attack",
                    [*IMAGE_ARGS, "eps_255", "pgd_steps", *SAMPLING_ARGS],
                    lambda a: views.attack(
                        a["models"],
                        image_of(a),
                        _bounded(a["eps_255"], "epsilon", 0, 255) / 255,
                        int(_bounded(a["pgd_steps"], "PGD steps", 1, 100)),
                        sampling_of(a),
                        a["progress"],
                    ),
                    [upload, example, picked, eps, pgd_steps, *common],
                    "attack",
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
