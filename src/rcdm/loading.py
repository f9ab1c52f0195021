"""Where a model comes from: a run folder, a saved model folder, or a named source such as `official:...`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from .encoders import Encoder, Feature, create_encoder
from .errors import RCDMError
from .hub import parse_hub_ref, resolve_hub_model
from .model import RCDM, check_encoder

# prefix -> resolver(name after the prefix, weights path or None) -> folder that RCDM.from_pretrained reads
_SOURCES: dict[str, Callable[[str, str | None], Path]] = {}


def register_model_source(prefix: str, resolver: Callable[[str, str | None], Path]) -> None:
    _SOURCES[prefix] = resolver


def resolve_model_dir(source: str | Path, weights: str | None = None) -> Path:
    """A model reference -> the folder holding config.json + weights.

    Accepts a saved model folder, a training run folder (its `model/`, else the newest checkpoint's EMA),
    `PREFIX:NAME` for a registered source (e.g. `official:dino-backbone`), or a Hugging Face Hub repo
    `user/repo[@revision]` (rcdm.hub; a local path of that name wins).
    """
    text = str(source)
    prefix, sep, name = text.partition(":")
    if sep and prefix in _SOURCES:
        return _SOURCES[prefix](name, weights)
    path = Path(text).expanduser()
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    from .train import latest_checkpoint  # local import: train imports this module's siblings

    ckpt = latest_checkpoint(path) if path.is_dir() else None
    if ckpt is not None and (ckpt / "ema" / "config.json").is_file():
        return ckpt / "ema"
    if not path.exists() and parse_hub_ref(text) is not None:
        return resolve_hub_model(text)
    named = ", ".join(f"{p}:NAME" for p in _SOURCES) or "none registered"
    raise RCDMError(
        f"no model at {text!r}: pass a run folder from `rcdm train`, a saved model folder, a hub repo "
        f"(user/repo[@revision]), or a named model ({named})"
    )


def load_model(
    source: str | Path, *, weights: str | None = None, device: str | torch.device | None = None
) -> RCDM:
    """Load an RCDM (eval mode) from anything `resolve_model_dir` accepts."""
    folder = resolve_model_dir(source, weights)
    try:
        model = RCDM.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as e:
        raise RCDMError(f"cannot load model from {str(folder)!r}: {e}") from None
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return model


# Encoder specs that run code named by the spec (a torch.hub repo's hubconf, an importable factory).
CODE_RUNNING_SPECS = ("hub", "module")


def encoder_for(
    model: RCDM,
    encoder: str | Encoder | None = None,
    feature: Feature | None = None,
    *,
    trust_remote_code: bool = False,
) -> Encoder:
    """The encoder the model was trained on (from its config), or the one given, checked against the model.

    A model folder may come from anyone: an encoder spec read from its config that runs code (hub:, module:)
    is refused unless `trust_remote_code` (the CLI's --trust-remote-code); a spec the caller passes is theirs.
    """
    cfg = model.config
    feature = feature or cfg.feature
    if isinstance(encoder, Encoder):
        enc = encoder if encoder.feature == feature else encoder.with_feature(feature)
    else:
        spec = encoder or cfg.encoder
        if not spec:
            raise RCDMError("the model does not record its encoder: pass --encoder SPEC")
        if encoder is None and spec.split(":", 1)[0] in CODE_RUNNING_SPECS and not trust_remote_code:
            raise RCDMError(
                f"the model's config names encoder {spec!r}, which runs code from {spec.split(':', 1)[1]!r}: "
                "if you trust it, pass --trust-remote-code (Python: trust_remote_code=True), or pass "
                "--encoder with a spec of your own"
            )
        enc = create_encoder(spec, feature)
    check_encoder(model, enc.describe())
    return enc


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
