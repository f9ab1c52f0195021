"""The app's back end: the adapter (every call into the library) and the models the page offers, loaded once.

See rcdm.app for the page."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .. import analysis, figures
from ..analysis import adversarial, interpolate, invariance, list_augmentations, pixel_std, variance
from ..analysis.variance import heat_map
from ..bundle import ROLES, bundled_pack, demo_images, read_bundle, read_card
from ..data import list_images, load_image
from ..devices import default_device
from ..diffusion import SAMPLING_PRESETS, SamplingConfig
from ..encoders.registry import CODE_RUNNING_SPECS
from ..errors import RCDMError
from ..loading import (
    MODELS,
    encoder_for,
    load_bundled,
    load_model,
    official_is_cached,
    recorded_sampling,
    resolve_model_dir,
)
from ..visualize import visualize

log = logging.getLogger(__name__)


INSTALL_HINT = "rcdm app needs gradio: pip install 'rcdm[app]'"

# ============================================================================================================
# Adapter: every call into the rest of the library. When the library's signatures change, re-point these
# functions and nothing else.
# ============================================================================================================


# The app samples in small batches, so that its progress bar moves (what it costs: docs/app.md, "Speed");
# sampler and steps come from the library's presets (`rcdm.SAMPLING_PRESETS`).
DEFAULT_PRESET = "fast"
APP_SAMPLING = SAMPLING_PRESETS[DEFAULT_PRESET].replace(batch_size=4, seed=0, guidance=1.0)


@dataclass(frozen=True)
class Sampling:
    """What a view samples: samples per representation, and the library's sampling settings (guidance 1 = none)."""

    num_samples: int = 8
    config: SamplingConfig = APP_SAMPLING


def _supports_guidance(model: Any) -> bool:
    """Whether the model was trained with a null representation (condition dropout), which guidance needs."""
    return model.null_rep is not None


def _sampling(s: Sampling, model: Any) -> SamplingConfig:
    """The view's sampling settings for `model`: guidance only for models that support it (1 for others)."""
    return s.config if _supports_guidance(model) else s.config.replace(guidance=1.0)


def _load_source(source: str, device: torch.device, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """A run folder, saved model folder or official:NAME -> (RCDM in eval mode, its encoder) on `device`."""
    model = load_model(source, device=device)
    return model, encoder_for(model, trust_remote_code=trust_remote_code).to(device)


def _load_bundled(folder: Path, target: str, device: torch.device) -> tuple[Any, Any]:
    return load_bundled(read_bundle(folder), target, device)


def _check_image(path: str | Path) -> Image.Image:
    """Decode a file as the library does (RCDMError with a readable message when it is not an image)."""
    return load_image(path)


def _analyse(
    analysis: Callable[..., Any], model: Any, encoder: Any, images: list[Path], s: Sampling, **kw
) -> Any:
    """`analysis` (visualize, variance, ...) on `images` with the view's sampling, progress on; kw: its own options
    (num_samples: the view's unless given)."""
    kw.setdefault("num_samples", s.num_samples)
    return analysis(model, encoder, images, sampling=_sampling(s, model), progress=True, **kw)


def _samples(model: Any, encoder: Any, image: Path, s: Sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """-> original (3, S, S), samples (N, 3, S, S) in [0, 1]; sample j starts from noise (seed, j) in every model."""
    vis = _analyse(visualize, model, encoder, [image], s)
    return vis.originals[0], vis.samples[0]


def _variance(model: Any, encoder: Any, image: Path, s: Sampling) -> Any:
    return _analyse(variance, model, encoder, [image], s)


def _augment(
    model: Any, encoder: Any, image: Path, name: str, strength: float, s: Sampling, label: str
) -> Any:
    return _analyse(invariance, model, encoder, [image], s, augmentations=[f"{name}={strength}"], label=label)


def _interpolate(
    model: Any, encoder: Any, a: Path, b: Path, points: int, method: str, rows: int, s: Sampling
) -> Any:
    return _analyse(
        interpolate, model, encoder, [a, b], s, num_steps=points, methods=[method], num_samples=rows
    )


def _attack(
    model: Any, encoder: Any, image: Path, eps: float, pgd_steps: int, s: Sampling, label: str
) -> Any:
    return _analyse(
        adversarial,
        model,
        encoder,
        [image],
        s,
        attack="untargeted",
        eps=eps,
        pgd_steps=pgd_steps,
        label=label,
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


def _bundled_pack() -> tuple[Path, dict, float] | None:
    """(bundle folder, {role: (target, label)}, its guidance weight) of the installed CIFAR-10 pack, or None."""
    folder = bundled_pack()
    return None if folder is None else (folder, ROLES, read_bundle(folder).guidance)


def _bundled_adapters(folder: Path, guidance: float) -> list[ModelChoice]:
    """The pack's adapters (`rcdm recipe add --adapter`): another encoder through one of its RCDMs, offered
    beside the RCDMs so that two encoders can be compared through one image prior."""
    labels = dict(ROLES.values())
    out = []
    for name, entry in read_bundle(folder).adapters.items():
        classes = tuple(_pack_classes(folder, name))
        base = labels.get(entry.get("base"), entry.get("base"))
        out.append(
            ModelChoice(
                f"{entry.get('encoder')} through the {base} RCDM",
                f"bundled pack: {name} (an adapter: the {base} RCDM's image prior)",
                lambda d, t=name: _load_bundled(folder, t, d),
                classes=classes,
                supervised=bool(classes),
                guidance=guidance,
            )
        )
    return out


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
    return [f"official:{name}" for name in MODELS if official_is_cached(name)]


def _default_device() -> torch.device:
    return default_device()


# ============================================================================================================
# Models offered by the page, loaded once per process.
# ============================================================================================================


@dataclass(frozen=True)
class ModelChoice:
    """One model the page offers. classes: class names for its encoder's classifier, when known.
    supervised: its encoder was trained with labels (the SSL models' 'supervised twin' in the Attack view)."""

    label: str
    source: str
    load: Callable[[torch.device], tuple[Any, Any]]
    classes: tuple[str, ...] = ()
    supervised: bool = False
    # the weight its samples are drawn with by default (a bundle's `recipe pack --guidance`)
    guidance: float = 1.0


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
            folder, roles, guidance = pack
            for role, (target, label) in roles.items():
                out.append(
                    ModelChoice(
                        label,
                        f"bundled pack: {target}",
                        lambda d, t=target: _load_bundled(folder, t, d),
                        classes=tuple(_pack_classes(folder, target)) if role == "supervised" else (),
                        supervised=role == "supervised",
                        guidance=guidance,
                    )
                )
            out += _bundled_adapters(folder, guidance)
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
    out = [c if labels.count(c.label) == 1 else replace(c, label=c.source) for c in out]
    if trust_remote_code:  # say whose code the opt-in lets run, by name, before anything runs
        runs_code = [f"{c.label} ({spec})" for c in out if (spec := _code_running_encoder(c.source))]
        if runs_code:
            log.warning(
                "--trust-remote-code: the encoders of %d model(s) run code when first used: %s",
                len(runs_code),
                "; ".join(runs_code),
            )
        else:
            log.info("--trust-remote-code: no offered model's encoder runs code")
    return out


def _code_running_encoder(source: str) -> str | None:
    """The encoder spec of a local model folder's config when it runs code (hub:, module:), else None."""
    if ":" in source.split("/")[0]:  # official:NAME and other named sources: encoders rcdm ships
        return None
    try:
        config = json.loads((resolve_model_dir(source) / "config.json").read_text())
    except (RCDMError, OSError, ValueError):
        return None  # the load says what is wrong, when the model is picked
    spec = str(config.get("encoder") or "")
    return spec if spec.split(":", 1)[0] in CODE_RUNNING_SPECS else None


def _default_guidance(source: str) -> float:
    """The guidance a local model folder records as its default (config `sampling`), else 1; nothing is loaded."""
    path = Path(source).expanduser()
    for folder in (path, path / "model"):
        if (folder / "config.json").is_file():
            try:
                return float(recorded_sampling(folder).get("guidance", 1.0))
            except (TypeError, ValueError):
                return 1.0  # loading the model reports what is wrong with the file
    return 1.0


def _source_choice(source: str, trust_remote_code: bool = False) -> ModelChoice:
    label = (
        source if source.startswith("official:") else Path(os.path.abspath(Path(source).expanduser())).name
    )
    return ModelChoice(
        label,
        source,
        lambda d, s=source: _load_source(s, d, trust_remote_code),
        guidance=_default_guidance(source),
    )


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
