"""The five ResNet-50 encoders the published RCDMs were trained on, loaded strictly from their own files.

Specs: `official:resnet50.{tv,dino,simclr,barlowtwins,vicreg}_in1k` (also the bare names, e.g.
`resnet50.dino_in1k`); append `:PATH` to read a local copy of the published file instead of downloading it.
Each gives the 2048-d pooled trunk (`backbone`) and, for the SSL ones, the published head (`projector`):
DINO 256, SimCLR 128, Barlow Twins 8192, VICReg 8192-d. Input: the published preprocessing (224 px,
pixels in [-1, 1], no ImageNet mean/std). Facts: ../shared/official-rcdm/README.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..errors import RCDMError
from ..weights import Weights, fetch, load_strict, read_checkpoint, subtree
from .base import Encoder, Feature, published_preprocessing
from .registry import register_encoder

SSLMethod = Literal["supervised", "dino", "simclr", "barlowtwins", "vicreg"]
TRUNK_DIM = 2048


@dataclass(frozen=True)
class PublishedEncoder:
    """A published encoder: where its weights are, how they are nested, and what its head gives."""

    name: str  # registry name, timm style: arch.tag
    method: SSLMethod
    weights: Weights  # url, file name, digest, license, paper
    projector_dim: int | None  # None: no head (supervised)


_VISSL = "https://dl.fbaipublicfiles.com/vissl/model_zoo"
PUBLISHED: dict[str, PublishedEncoder] = {
    e.name: e
    for e in (
        PublishedEncoder(
            "resnet50.tv_in1k",
            "supervised",
            # torchvision ResNet50_Weights.IMAGENET1K_V1 (the `pretrained=True` weights); BSD-3 licensed.
            Weights(
                "https://download.pytorch.org/models/resnet50-0676ba61.pth",
                "resnet50-0676ba61.pth",
                sha256="0676ba61",
                license="BSD-3-Clause",
                paper="He et al. 2016 (torchvision)",
            ),
            None,
        ),
        PublishedEncoder(
            "resnet50.dino_in1k",
            "dino",
            Weights(
                "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/"
                "dino_resnet50_pretrain_full_checkpoint.pth",
                "dino_resnet50_pretrain_full_checkpoint.pth",
                paper="Caron et al. 2021 (DINO)",
            ),
            256,
        ),
        PublishedEncoder(
            "resnet50.simclr_in1k",
            "simclr",
            Weights(
                f"{_VISSL}/simclr_rn50_1000ep_simclr_8node_resnet_16_07_20.afe428c7/"
                "model_final_checkpoint_phase999.torch",
                "simclr_rn50_1000ep_model_final_checkpoint_phase999.torch",
                paper="Chen et al. 2020 (SimCLR, VISSL 1000 epochs)",
            ),
            128,
        ),
        PublishedEncoder(
            "resnet50.barlowtwins_in1k",
            "barlowtwins",
            Weights(
                f"{_VISSL}/barlow_twins/barlow_twins_32gpus_4node_imagenet1k_1000ep_resnet50.torch",
                "barlow_twins_32gpus_4node_imagenet1k_1000ep_resnet50.torch",
                paper="Zbontar et al. 2021 (Barlow Twins, VISSL 1000 epochs)",
            ),
            8192,
        ),
        PublishedEncoder(
            "resnet50.vicreg_in1k",
            "vicreg",
            Weights(
                "https://dl.fbaipublicfiles.com/vicreg/resnet50_fullckpt.pth",
                "vicreg_resnet50_fullckpt.pth",
                paper="Bardes et al. 2022 (VICReg)",
            ),
            8192,
        ),
    )
}

# --- modules --------------------------------------------------------------------------------------------


def resnet50_trunk() -> nn.Module:
    """torchvision ResNet-50, fc removed: (B, 3, 224, 224) -> (B, 2048) pooled feature."""
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Identity()
    return net


def _linear_bn_relu(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, o, bias=False), nn.BatchNorm1d(o), nn.ReLU())


def build_projector(method: SSLMethod) -> nn.Module | None:
    """The published head with the key names of its checkpoint (after the prefixes are stripped)."""
    d = TRUNK_DIM
    if method == "dino":  # head.mlp; the 60000-way head.last_layer is not part of the representation
        return nn.Sequential(nn.Linear(d, 4096), nn.BatchNorm1d(4096), nn.GELU(), nn.Linear(4096, 256))
    if method == "simclr":  # VISSL heads 0.clf.0 and 1.clf.0, ReLU between
        return nn.Sequential(nn.Sequential(nn.Linear(d, d), nn.ReLU()), nn.Sequential(nn.Linear(d, 128)))
    if method == "barlowtwins":  # VISSL heads 0..2, each clf = Linear(no bias)[-BN-ReLU]
        return nn.Sequential(
            _linear_bn_relu(d, 8192),
            _linear_bn_relu(8192, 8192),
            nn.Sequential(nn.Linear(8192, 8192, bias=False)),
        )
    if method == "vicreg":  # projector 0..6
        return nn.Sequential(
            nn.Linear(d, 8192),
            nn.BatchNorm1d(8192),
            nn.ReLU(),
            nn.Linear(8192, 8192),
            nn.BatchNorm1d(8192),
            nn.ReLU(),
            nn.Linear(8192, 8192, bias=False),
        )
    return None


# --- checkpoint layouts ---------------------------------------------------------------------------------


@dataclass
class Parts:
    """A published file split into the state dicts of our modules (torchvision / build_projector key names)."""

    trunk: dict[str, torch.Tensor]
    projector: dict[str, torch.Tensor] | None = None
    classifier: dict[str, torch.Tensor] | None = None


def _strip(state: Mapping[str, torch.Tensor], *prefixes: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for p in prefixes:
            k = k.removeprefix(p)
        out[k] = v
    return out


def _take(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def split_checkpoint(method: SSLMethod, ckpt: Mapping, what: str) -> Parts:
    """The published nesting of each file -> Parts. Keys this does not place are kept, so loading refuses them."""
    if method == "supervised":  # torchvision: a flat state dict with fc.* (the ImageNet classifier)
        state = dict(ckpt)
        fc = {k.removeprefix("fc."): state.pop(k) for k in ("fc.weight", "fc.bias") if k in state}
        return Parts(state, classifier=fc)
    if (
        method == "dino"
    ):  # {'teacher': {'module.backbone.*', 'module.head.mlp.*', 'module.head.last_layer.*'}}
        state = _strip(subtree(ckpt, "teacher", what), "module.")
        # head.last_layer is the 60000-way prototype layer after the L2 norm: not part of the 256-d head output.
        skip = ("head.mlp.", "head.last_layer.")
        trunk = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith(skip)}
        return Parts(trunk, projector=_take(state, "head.mlp."))
    if method == "vicreg":  # {'model': {'module.backbone.*', 'module.projector.*'}}
        state = _strip(subtree(ckpt, "model", what), "module.")
        trunk = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("projector.")}
        return Parts(trunk, projector=_take(state, "projector."))
    # VISSL: classy_state_dict.base_model.model.{trunk: _feature_blocks.*, heads: i.clf.j.*}
    model = subtree(ckpt, "classy_state_dict.base_model.model", what)
    trunk = _strip(subtree(model, "trunk", what), "_feature_blocks.")
    heads = {k.replace(".clf.", ".", 1): v for k, v in subtree(model, "heads", what).items()}
    return Parts(trunk, projector=heads)


def load_published(
    name: str, path: str | Path | None = None
) -> tuple[nn.Module, nn.Module | None, nn.Module | None]:
    """(trunk, projector or None, ImageNet classifier or None) of the published encoder `name`, eval mode.

    path: a local copy of the published file; None downloads it into the official cache on first use.
    """
    if name not in PUBLISHED:
        raise RCDMError(f"unknown published encoder {name!r}: choose one of {', '.join(PUBLISHED)}")
    pub = PUBLISHED[name]
    file = Path(path).expanduser() if path else fetch(pub.weights)
    what = f"{pub.name} checkpoint {str(file)!r}"
    parts = split_checkpoint(pub.method, read_checkpoint(file), what)
    with torch.device("meta"):  # no random init: every tensor comes from the file (load with assign)
        trunk = resnet50_trunk()
        projector = build_projector(pub.method)
        classifier = nn.Linear(TRUNK_DIM, 1000) if pub.method == "supervised" else None
    load_strict(trunk, parts.trunk, f"{what} (trunk)", layout="the published layout")
    if projector is not None:
        load_strict(projector, parts.projector or {}, f"{what} (projector)", layout="the published layout")
    if classifier is not None:
        load_strict(classifier, parts.classifier or {}, f"{what} (classifier)", layout="the published layout")
    modules = [m for m in (trunk, projector, classifier) if m is not None]
    for m in modules:
        m.eval().requires_grad_(False)
    return trunk, projector, classifier


def describe_published(name: str, feature: Feature) -> dict:
    """What `Encoder.describe()` gives for a published encoder, without loading any weights."""
    pub = PUBLISHED[name]
    if feature == "projector" and pub.projector_dim is None:
        raise RCDMError(f"encoder {name!r} has no projector: use feature 'backbone'")
    return {
        "encoder": f"official:{name}",
        "encoder_identity": f"official:{name}",
        "feature": feature,
        "representation_dim": TRUNK_DIM if feature == "backbone" else pub.projector_dim,
        "preprocessing": published_preprocessing().to_dict(),
    }


def create_published(name: str, feature: Feature = "backbone", path: str | Path | None = None) -> Encoder:
    """The frozen published encoder `name` returning `feature`; images (B, 3, H, W) in [0, 1] -> (B, dim)."""
    if name not in PUBLISHED:
        raise RCDMError(f"unknown published encoder {name!r}: choose one of {', '.join(PUBLISHED)}")
    desc = describe_published(name, feature)  # checks the feature before any download
    trunk, projector, classifier = load_published(name, path)
    return Encoder(
        trunk,
        published_preprocessing(),
        projector=projector,
        feature=feature,
        spec=desc["encoder"],
        identity=desc["encoder_identity"],  # the same for a local copy: the file was checked key by key
        dim=desc["representation_dim"],
        classifier=classifier,
    )


def _factory(arg: str, feature: Feature) -> Encoder:
    name, _, path = arg.partition(":")
    return create_published(name, feature, path or None)


register_encoder(
    "official",
    "resnet50.{tv,dino,simclr,barlowtwins,vicreg}_in1k[:PATH] (the published RCDM encoders; [-1,1] input)",
)(_factory)
for _name in PUBLISHED:
    register_encoder(_name, f"[PATH] (same as official:{_name})")(
        lambda arg, feature, _n=_name: create_published(_n, feature, arg or None)
    )
