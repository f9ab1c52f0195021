"""Encoder spec strings -> frozen Encoders (timm-style registry: register, create, list).

A spec is `PREFIX:ARGUMENT`, e.g. `torchvision:resnet50`, `timm:vit_small_patch14_dinov2.lvd142m`,
`hub:facebookresearch/dino:dino_resnet50`, `module:my_pkg.models:make_encoder`, `cifar-resnet20:PATH`,
`pixels:8`. Register more with `register_encoder(prefix)`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RCDMError, first_line
from ..weights import load_strict, read_checkpoint
from .base import Encoder, Feature, Preprocessing, file_identity

Factory = Callable[[str, Feature], Encoder]
_REGISTRY: dict[str, tuple[Factory, str]] = {}


def register_encoder(prefix: str, help: str) -> Callable[[Factory], Factory]:
    def deco(fn: Factory) -> Factory:
        _REGISTRY[prefix] = (fn, help)
        return fn

    return deco


def list_encoders() -> dict[str, str]:
    """Spec prefixes and what each takes."""
    return {p: h for p, (_, h) in _REGISTRY.items()}


def create_encoder(spec: str, feature: Feature = "backbone") -> Encoder:
    """Build the frozen encoder named by `spec`, returning `feature` ('backbone' or 'projector')."""
    prefix, sep, arg = spec.partition(":")
    if prefix not in _REGISTRY or not sep or not arg:
        # Some names are complete without an argument (registered as 'name' with an empty argument).
        if spec in _REGISTRY:
            return _REGISTRY[spec][0]("", feature)
        valid = ", ".join(f"{p}:{h}" for p, h in list_encoders().items())
        raise RCDMError(f"unknown encoder spec {spec!r}: use one of {valid}")
    return _REGISTRY[prefix][0](arg, feature)


# Kinds of spec that run code to build the encoder (import a module, a torch.hub repo): never run for a spec read
# from a downloaded config without the user's opt-in (rcdm.loading), and built twice at training start, since
# their weights come from that code rather than from a weights file.
CODE_RUNNING_SPECS = ("hub", "module")


def check_rebuilds_the_same(encoder: Encoder) -> None:
    """A model records its encoder by spec and weights digest, and `rcdm sample` rebuilds the encoder from the spec.
    An encoder whose factory draws random weights would train a model that no later run can use: caught when
    training starts (the spec is built a second time and the digests compared), not at the first sample after."""
    if encoder.spec.partition(":")[0] not in CODE_RUNNING_SPECS:
        return
    again = create_encoder(encoder.spec, encoder.feature)
    if again.weights_digest() != encoder.weights_digest():
        raise RCDMError(
            f"encoder {encoder.spec!r} has different weights each time it is built (random initialisation?), so a "
            "model trained on it could not be used later: make the factory load its trained weights (or seed it)"
        )


# --- built-in entries -------------------------------------------------------------------------------


class Pixels(nn.Module):
    """The image itself at N x N (area-averaged): a weight-free reference 'representation'."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, self.size).flatten(1)


@register_encoder("pixels", "N (the image average-pooled to N x N, 3*N*N-d; needs no weights)")
def _pixels(arg: str, feature: Feature) -> Encoder:
    if not arg.isdigit() or not 1 <= int(arg) <= 64:
        raise RCDMError(f"pixels:{arg} is not valid: use pixels:N with N an integer in 1..64, e.g. pixels:8")
    n = int(arg)
    return Encoder(
        Pixels(n),
        Preprocessing(
            input_size=max(32, n), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear"
        ),
        feature=feature,
        spec=f"pixels:{n}",
        dim=3 * n * n,
    )


def _load_local_weights(net: nn.Module, path: str, spec: str) -> None:
    """Load a local .safetensors / .pt(h) state dict strictly (offline use of torchvision/timm models).

    The file is read safely (`read_checkpoint`: safetensors, or torch.load with weights_only) and must fit the
    network key by key and shape by shape; only the classifier may be absent from an encoder-only file.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise RCDMError(f"weights file for {spec!r} not found: {str(file)!r}")
    state = read_checkpoint(file)
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RCDMError(f"{str(file)!r} is not a state dict of tensors: pass a weights file for {spec!r}")
    load_strict(
        net,
        state,
        f"{str(file)!r} (weights for {spec!r})",
        optional=("fc.", "classifier.", "head.", "heads."),
    )


def _strip_classifier(net: nn.Module) -> nn.Module | None:
    for attr in ("fc", "classifier", "head", "heads"):
        if isinstance(getattr(net, attr, None), nn.Module):
            classifier = getattr(net, attr)
            setattr(net, attr, nn.Identity())
            return classifier
    return None


def _random_seed(path: str) -> int | None:
    """`random` / `random-SEED` in a spec's PATH slot: a seeded random initialisation (the baseline an SSL
    study compares against: what does an untrained network's representation keep?), else None."""
    if path == "random":
        return 0
    head, _, seed = path.partition("-")
    if head == "random" and seed.isdigit():
        return int(seed)
    return None


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Build under `seed` (CPU RNG forked: the caller's stream is untouched); a no-op for None."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@register_encoder(
    "torchvision",
    "NAME[.WEIGHTS][:PATH] (e.g. resnet50.IMAGENET1K_V2; PATH: local weights, or random[-SEED] for a seeded "
    "random init; fc removed)",
)
def _torchvision(arg: str, feature: Feature) -> Encoder:
    import torchvision

    model_part, _, path = arg.partition(":")
    name, _, weights = model_part.partition(".")

    def build(pretrained: bool) -> nn.Module:
        tv_weights = torchvision.models.get_model_weights(name)[weights or "DEFAULT"]
        return torchvision.models.get_model(name, weights=tv_weights if pretrained else None)

    net, identity = _built("torchvision", model_part, path, build, (ValueError, KeyError))
    classifier = _strip_classifier(net)
    t = torchvision.models.get_model_weights(name)[weights or "DEFAULT"].transforms()
    size = int(t.crop_size[0]) if hasattr(t, "crop_size") else 224
    prep = Preprocessing(size, tuple(t.mean), tuple(t.std), "bilinear")  # type: ignore[arg-type]
    return Encoder(
        net, prep, feature=feature, spec=f"torchvision:{arg}", identity=identity, classifier=classifier
    )


@register_encoder(
    "timm",
    "NAME[:PATH] (any timm model; weights via the HF cache, PATH for local weights, random[-SEED] for a seeded "
    "random init)",
)
def _timm(arg: str, feature: Feature) -> Encoder:
    import timm

    name, _, path = arg.partition(":")
    net, identity = _built(
        "timm",
        name,
        path,
        lambda pretrained: timm.create_model(name, pretrained=pretrained, num_classes=0),
        (RuntimeError,),
    )
    cfg = timm.data.resolve_data_config({}, model=net)
    prep = Preprocessing(
        int(cfg["input_size"][-1]),
        tuple(cfg["mean"]),
        tuple(cfg["std"]),
        "bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear",
    )
    return Encoder(net, prep, feature=feature, spec=f"timm:{arg}", identity=identity)


def _built(
    kind: str,
    name: str,
    path: str,
    build: Callable[[bool], nn.Module],
    unknown: tuple[type[Exception], ...],
) -> tuple[nn.Module, str]:
    """`kind:name` built by `build(pretrained)`: with its library's weights when PATH is empty, seeded random
    weights for PATH random[-SEED], else the local weights file PATH -> (network, identity). A name the library
    does not know (`unknown` errors) and a failed download are one line each."""
    seed = _random_seed(path)
    try:
        with _seeded(seed):
            net = build(not path)
    except unknown as e:
        raise RCDMError(f"{kind} model {name!r} unknown: {e}") from None
    except OSError as e:
        raise RCDMError(
            f"cannot download {kind} weights for {name!r} (offline?): {e}; pass {kind}:{name}:PATH with a local "
            "weights file"
        ) from None
    if path and seed is None:
        _load_local_weights(net, path, f"{kind}:{name}")
    if seed is not None:
        return net, f"{kind}:{name}:random-{seed}"
    return net, file_identity(f"{kind}:{name}", path) if path else f"{kind}:{name}"


def _two_parts(arg: str, kind: str, needs: str) -> tuple[str, str]:
    """'A:B' -> (A, B) for a `kind:` spec that must have both parts; needs: what B is, and the spec's form."""
    head, sep, tail = arg.partition(":")
    if not sep:
        raise RCDMError(f"{kind} spec {arg!r} needs {needs}")
    return head, tail


@register_encoder("hub", "OWNER/REPO:ENTRY (torch.hub entry point; ImageNet preprocessing at 224 px)")
def _hub(arg: str, feature: Feature) -> Encoder:
    repo, entry = _two_parts(arg, "hub", "an entry point: hub:OWNER/REPO:ENTRY")
    try:
        net = torch.hub.load(repo, entry, trust_repo=True)
    except Exception as e:
        raise RCDMError(f"torch.hub could not load {arg!r}: {e}") from None
    return Encoder(net, Preprocessing(224), feature=feature, spec=f"hub:{arg}")


@register_encoder("module", "PKG.MOD:FACTORY (your function returning an nn.Module, or an Encoder)")
def _module(arg: str, feature: Feature) -> Encoder:
    mod_name, fn_name = _two_parts(arg, "module", "a factory: module:PKG.MOD:FACTORY")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise RCDMError(f"cannot import {arg!r}: {e}") from None
    if not callable(fn):
        raise RCDMError(f"module:{arg}: {fn_name} is a {type(fn).__name__}, not a function: name a factory")
    try:
        obj = fn()
    except Exception as e:  # the user's own code (trusted with --trust-remote-code): its failure, in one line
        raise RCDMError(
            f"module:{arg}: calling {fn_name}() failed with {type(e).__name__}: {first_line(e)} (a factory takes "
            "no arguments and returns an nn.Module or an rcdm Encoder; call it in Python to see the trace)"
        ) from e
    if isinstance(obj, Encoder):  # recorded under the spec the user gave, so that a model can rebuild it
        obj = obj if obj.feature == feature else obj.with_feature(feature)
        return obj.with_spec(f"module:{arg}")
    if not isinstance(obj, nn.Module):
        raise RCDMError(f"{arg!r} returned {type(obj).__name__}, not an nn.Module or rcdm Encoder")
    prep = getattr(obj, "rcdm_preprocessing", None) or Preprocessing(224)
    projector = getattr(obj, "rcdm_projector", None)
    return Encoder(obj, prep, projector=projector, feature=feature, spec=f"module:{arg}")
