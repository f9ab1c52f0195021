"""Where a model comes from: a run folder, a saved model folder, a named model, or a demo bundle.

Named models: `official:NAME`, the nine published RCDM checkpoints (`MODELS`), downloaded and converted once
(rcdm.convert) into $RCDM_CACHE/official/models/NAME; more sources can be added with `register_model_source`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights

from .bundle import DemoBundle, bundled_models_dir
from .convert import convert
from .encoders import Encoder, Feature, create_encoder
from .encoders.published import PUBLISHED, describe_published
from .encoders.registry import CODE_RUNNING_SPECS
from .errors import RCDMError, first_line
from .files import atomic_dir
from .hub import parse_hub_ref, resolve_hub_model
from .model import ADAPTER_WEIGHTS, RCDM, WEIGHTS_FILE, check_config, check_encoder
from .runs import Checkpoints
from .weights import (
    Weights,
    check_keys,
    fetch,
    first_nonfinite,
    official_cache,
    read_checkpoint,
    safetensors_shapes,
    sha256_file,
)

log = logging.getLogger(__name__)

BASE_URL = "https://dl.fbaipublicfiles.com/rcdm"

# --- named models ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedModel:
    """One of the nine published checkpoints and the encoder feature it is conditioned on."""

    checkpoint: Weights
    encoder: str  # a name in rcdm.encoders.published.PUBLISHED
    feature: Feature


def _published(file: str, encoder: str, feature: Feature) -> PublishedModel:
    paper = "Bordes, Balestriero, Vincent, TMLR 2022 (RCDM)"
    return PublishedModel(Weights(f"{BASE_URL}/{file}", file, paper=paper), encoder, feature)


MODELS: dict[str, PublishedModel] = {
    "supervised": _published("rcdm_ema_supervised.pt", "resnet50.tv_in1k", "backbone")
}
for _method, _file in (
    ("dino", "dino"),
    ("simclr", "simclr"),
    ("barlowtwins", "barlow"),
    ("vicreg", "vicreg"),
):
    for _feature, _part in (("backbone", "trunk"), ("projector", "head")):
        MODELS[f"{_method}-{_feature}"] = _published(
            f"rcdm_ema_{_file}_{_part}.pt", f"resnet50.{_method}_in1k", _feature
        )


def published_name_for(path: str | Path) -> str | None:
    """The named model whose published file name `path` has (e.g. rcdm_ema_dino_trunk.pt -> dino-backbone)."""
    base = Path(path).name
    for name, m in MODELS.items():
        if m.checkpoint.filename == base:
            return name
    return None


def _weights_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]


def resolve_official(name: str, weights: str | None = None) -> Path:
    """`official:NAME` -> a converted model folder (download + convert on first use, then cached).

    weights: a local copy of the published checkpoint (skips the download; converted into its own folder).
    """
    if name not in MODELS:
        raise RCDMError(f"unknown official model {name!r}: choose one of {', '.join(MODELS)}")
    spec = MODELS[name]
    root = official_cache()
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise RCDMError(
                f"--weights {weights!r} is not a file: pass the path of {spec.checkpoint.filename}"
            )
        folder = root / "models" / f"{name}-{_weights_key(path)}"
    else:
        path = None
        folder = root / "models" / name
    if (folder / "config.json").is_file():
        return folder
    ckpt = path or fetch(spec.checkpoint)
    log.info("converting %s to %s", ckpt, folder)
    model = convert(ckpt, encoder=describe_published(spec.encoder, spec.feature))
    with atomic_dir(folder, folder.with_name(folder.name + f".tmp{os.getpid()}")) as tmp:
        model.save_pretrained(tmp)
        (tmp / "source.json").write_text(
            json.dumps({"official": name, "checkpoint": str(ckpt), **asdict(spec.checkpoint)}, indent=2)
        )
    return folder


def encoder_description(spec: str, feature: Feature) -> dict:
    """`Encoder.describe()` for a spec: static for published encoders, else by building the encoder."""
    name = spec.removeprefix("official:").split(":")[0]
    if name in PUBLISHED:
        return describe_published(name, feature)
    return create_encoder(spec, feature).describe()


# prefix -> resolver(name after the prefix, weights path or None) -> folder that RCDM.from_pretrained reads
_SOURCES: dict[str, Callable[[str, str | None], Path]] = {"official": resolve_official}


def register_model_source(prefix: str, resolver: Callable[[str, str | None], Path]) -> None:
    _SOURCES[prefix] = resolver


def recorded_sampling(folder: str | Path) -> dict:
    """The sampling a model folder's config.json records (`sampling`, as `diffusion.model_default_sampling` reads
    it from a loaded model), read without loading anything; {} when it records none or cannot be read (loading
    the model then says why)."""
    recorded = _config_entry(folder, "sampling")
    return dict(recorded) if isinstance(recorded, dict) else {}


def recorded_start(folder: str | Path) -> dict:
    """Where a model folder's weights started (`initialised_from`, which `rcdm train --init-from` records), read
    without loading anything; {} when it records none or cannot be read."""
    recorded = _config_entry(folder, "initialised_from")
    return dict(recorded) if isinstance(recorded, dict) else {}


def _config_entry(folder: str | Path, key: str) -> object:
    """config.json's `key` in a model folder, read without loading it; None when absent or unreadable."""
    try:
        return json.loads((Path(folder) / RCDM.config_name).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def weights_digest(folder: str | Path) -> str:
    """sha256 of what a model folder samples with, read without loading it: its weights file, or an adapter
    folder's tensors together with the base weights it names; "" when it holds neither (loading it says why)."""
    folder = Path(folder)
    full = folder / WEIGHTS_FILE
    if full.is_file():
        return sha256_file(full)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        return ""
    base = _config_entry(folder, "adapted_from") or {}
    if not isinstance(base, dict):
        return ""
    adapter = sha256_file(folder / ADAPTER_WEIGHTS)
    return hashlib.sha256(f"{adapter}+{base.get('base_weights', '')}".encode()).hexdigest()


def model_reference(source: str) -> str:
    """How a model that another one came from is named in its config (an adapter's base, `--init-from`'s start): a
    local folder as an absolute path (found from anywhere), else as given (a bundled or published name, a hub repo)."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


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
    ckpt = Checkpoints(path).latest() if path.is_dir() else None
    if ckpt is not None and (ckpt / "ema" / "config.json").is_file():
        return ckpt / "ema"
    if not path.exists() and "/" not in text:  # a bundled model's name, with or without its rcdm- prefix
        for name in (text, f"rcdm-{text}"):
            if (bundled_models_dir() / name / "config.json").is_file():
                return bundled_models_dir() / name
    if not path.exists() and parse_hub_ref(text) is not None:
        return resolve_hub_model(text)
    named = ", ".join(f"{p}:NAME" for p in _SOURCES) or "none registered"
    bundled = sorted(p.parent.name for p in bundled_models_dir().glob("rcdm-*/config.json"))
    raise RCDMError(
        f"no model at {text!r}: pass a run folder from `rcdm train`, a saved model folder, a hub repo "
        f"(user/repo[@revision]), a named model ({named}) or a bundled one ({', '.join(bundled) or 'none'})"
    )


def load_model(
    source: str | Path, *, weights: str | None = None, device: str | torch.device | None = None
) -> RCDM:
    """Load an RCDM (eval mode) from anything `resolve_model_dir` accepts."""
    folder = resolve_model_dir(source, weights)
    model = _load_strict(folder)
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return model


def _load_strict(folder: Path) -> RCDM:
    """RCDM.from_pretrained, strictly: the config's keys and types checked, the weights' keys and shapes
    exactly the model's (diffusers would ignore an extra key and leave a missing one uninitialised), and every
    weight finite. Each problem is one RCDMError line naming the file and the key."""
    config_file = folder / RCDM.config_name
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise RCDMError(f"cannot read {str(config_file)!r}: {first_line(e)}") from None
    if not isinstance(config, dict):
        raise RCDMError(f"{str(config_file)!r} holds no JSON object: not an rcdm model folder")
    check_config(config, repr(str(config_file)))
    weights_file = folder / WEIGHTS_FILE
    if not weights_file.is_file() and (folder / ADAPTER_WEIGHTS).is_file():
        return _load_adapter(folder, config)
    # safetensors only (use_safetensors below): there is nothing to unpickle
    if not weights_file.is_file():
        plain = (folder / "diffusion_pytorch_model.safetensors").is_file()
        raise RCDMError(
            f"model {str(folder)!r} has no weights: {weights_file.name} is missing"
            + (
                " (it holds diffusion_pytorch_model.safetensors, a plain diffusers UNet's name: an rcdm model "
                "folder is written by RCDM.save_pretrained, rcdm train or rcdm convert)"
                if plain
                else ""
            )
        )
    if weights_file.is_file():  # keys and shapes from the header, before anything is loaded
        with init_empty_weights():
            expected = {k: v.shape for k, v in RCDM.from_config(config).state_dict().items()}
        check_keys(safetensors_shapes(weights_file), expected, repr(str(weights_file)), "the model's config")
    try:
        model, info = RCDM.from_pretrained(folder, output_loading_info=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise RCDMError(f"cannot load model from {str(folder)!r}: {first_line(e)}") from None
    problems = [
        f"{label} {', '.join(str(k) for k in keys[:5])}"
        for label, keys in (
            ("missing keys", info["missing_keys"]),
            ("unexpected keys", info["unexpected_keys"]),
            ("misshapen keys", [m[0] if isinstance(m, tuple) else m for m in info["mismatched_keys"]]),
        )
        if keys
    ]
    if problems:
        raise RCDMError(f"the weights in {str(folder)!r} do not match its config: {'; '.join(problems)}")
    bad = first_nonfinite(model.state_dict())
    if bad is not None:
        raise RCDMError(
            f"model {str(folder)!r} has non-finite weights (NaN or inf), first in {bad!r}: it can only give "
            "blank images; use an earlier checkpoint of the run, or retrain"
        )
    return model


def _load_adapter(folder: Path, config: dict) -> RCDM:
    """An adapter folder (`rcdm adapt`'s RUN/adapter): the tensors in which an adapted model differs from its base
    (ADAPTER_WEIGHTS), over the base it names (`adapted_from.base_model`; "../NAME" is the folder NAME beside the
    adapter's), whose weights must be the ones the adapter was made on (`adapted_from.base_weights`, sha256)."""
    made_on = config.get("adapted_from") or {}
    base_spec, digest = made_on.get("base_model"), made_on.get("base_weights")
    if not base_spec or not digest:
        raise RCDMError(
            f"{str(folder)!r} holds {ADAPTER_WEIGHTS} but its config names no base model and weights "
            "(adapted_from.base_model, base_weights): it is not an adapter folder of rcdm adapt"
        )
    # "../NAME": the base beside the adapter (a bundle's entries travel together)
    base_dir = resolve_model_dir(folder / base_spec if base_spec.startswith("../") else base_spec)
    found = sha256_file(base_dir / WEIGHTS_FILE)
    if found != digest:
        raise RCDMError(
            f"the adapter {str(folder)!r} was made on {base_spec!r} with weights sha256 {digest[:12]}, but "
            f"{str(base_dir)!r} has {found[:12]}: adapt again onto this base (rcdm adapt --model {base_spec})"
        )
    base = _load_strict(base_dir)
    try:
        model = RCDM.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    except (TypeError, ValueError) as e:
        raise RCDMError(f"cannot build the adapted model of {str(folder)!r}: {first_line(e)}") from None
    own = dict(read_checkpoint(folder / ADAPTER_WEIGHTS))  # a .safetensors file: nothing to unpickle
    state = {**{k: v.float() for k, v in base.state_dict().items()}, **own}
    check_keys(
        {k: v.shape for k, v in state.items()},
        {k: v.shape for k, v in model.state_dict().items()},
        repr(str(folder / ADAPTER_WEIGHTS)),
        "the adapted model's config (over its base)",
    )
    model.load_state_dict(state)
    bad = first_nonfinite(model.state_dict())
    if bad is not None:
        raise RCDMError(f"the adapter {str(folder)!r} has non-finite weights (NaN or inf), first in {bad!r}")
    return model


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


def load_bundled(
    bundle: DemoBundle, target: str, device: str | torch.device | None = None
) -> tuple[RCDM, Encoder]:
    """One RCDM of a demo bundle (float32, eval) and its bundled encoder, checked to be the one it was trained on."""
    model = load_model(bundle.folder / target, device=device).float()
    enc = create_encoder(f"rcdm-cifar:{bundle.folder / bundle.encoder_name(target)}", model.config.feature)
    enc = encoder_for(model, enc)
    return model, enc.to(device) if device is not None else enc


@dataclass(frozen=True)
class ModelEntry:
    """A model `--model NAME` finds without a path: a bundled one or a published one."""

    name: str  # what to pass as --model
    kind: str  # "bundled" or "published"
    encoder: str
    feature: str
    note: str  # the default sampling (bundled), or whether the weights are cached (published)


def official_is_cached(name: str) -> bool:
    """Whether official:NAME's converted folder or its published checkpoint is in the cache (no download)."""
    root = official_cache()
    return (root / "models" / name / "config.json").is_file() or (
        root / MODELS[name].checkpoint.filename
    ).is_file()


def list_models() -> list[ModelEntry]:
    """The bundled RCDMs (by short name) and the published ones (official:NAME), configs read, nothing loaded."""
    out = []
    for config_file in sorted(bundled_models_dir().glob("rcdm-*/config.json")):
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError):
            continue  # loading it names what is wrong
        sampling = config.get("sampling") or {}
        note = (
            f"default: {sampling.get('sampler', 'dpm++')} {sampling.get('steps') or ''}, guidance "
            f"{sampling.get('guidance', 1):g}".replace("  ", " ")
            if sampling
            else "default: the library's sampling"
        )
        out.append(
            ModelEntry(
                config_file.parent.name.removeprefix("rcdm-"),
                "bundled",
                str(config.get("encoder")),
                str(config.get("feature")),
                note,
            )
        )
    for name, m in MODELS.items():
        note = "cached" if official_is_cached(name) else "downloads on first use"
        out.append(ModelEntry(f"official:{name}", "published", m.encoder, m.feature, note))
    return out
