"""CIFAR ResNets (He et al. 2016, CIFAR variant, option-A shortcuts), at any depth 6n + 2 and any width.

- `cifar-resnet20:PATH` / `cifar-resnet56:PATH`: the supervised CIFAR ResNets of ../shared/data/README.md
  (width 1 plus their classifier `linear`; 64-d pooled feature). Written by hand because no maintained library
  ships this exact layout (parameter-free zero-padded shortcut) with these key names; the weights load strictly.
- `rcdm-cifar:PATH_OR_NAME`: encoders trained by `rcdm recipe ssl` (a width-scaled CIFAR ResNet + optional
  projector + optional classifier). PATH is a folder holding `encoder.safetensors` and `card.json` (what the recipe
writes); NAME is a bundled folder under `rcdm/assets/models/NAME`. The card describes the architecture, so a
saved encoder is rebuilt without flags and loaded `strict=True`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from safetensors.torch import save_file
from torch import nn

from ..bundle import CARD_NAME, ENCODER_FORMAT, model_search_dirs, read_card
from ..errors import RCDMError
from ..files import atomic_dir
from ..weights import check_keys, load_strict, read_checkpoint, safetensors_shapes
from .base import IMAGENET_MEAN, IMAGENET_STD, Encoder, Feature, Preprocessing, file_identity
from .registry import register_encoder

log = logging.getLogger(__name__)

WEIGHTS_NAME = "encoder.safetensors"
# CIFAR-10 train-split statistics (RGB in [0, 1]).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# Bounds on a card's architecture: far past any recipe encoder (ResNet-20..56, width 1..4, 2048-wide projectors).
# CIFAR-10's label order (the data set's batches.meta), the classes of the published CIFAR ResNets.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
MAX_DEPTH, MAX_WIDTH, MAX_PROJECTOR_WIDTH, MAX_PROJECTOR_LAYERS, MAX_CLASSES = 200, 16, 16384, 8, 100_000


@dataclass(frozen=True)
class CifarEncoderArch:
    """Architecture of a recipe encoder; stored in card.json under "arch"."""

    depth: int = 20  # 6n + 2 layers: 20 -> 3 BasicBlocks per stage (He et al. 2016, CIFAR variant)
    width: int = 2  # channel multiplier on (16, 32, 64); backbone dim = 64 * width
    projector: tuple[int, ...] = (512, 512, 512)  # MLP widths after the backbone; () = no projector
    num_classes: int = 0  # > 0: a linear classifier on the backbone feature (supervised objective)

    @property
    def backbone_dim(self) -> int:
        return 64 * self.width

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "card.json") -> CifarEncoderArch:
        """The arch a card describes, its numbers checked against sane bounds before anything is built (a card
        asking for width 300 would allocate tens of GB)."""

        def whole(key: str, value: Any, lo: int, hi: int) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise RCDMError(
                    f"{where}: arch {key} = {value!r} is out of range: use a whole number {lo}..{hi}"
                )
            return value

        if not isinstance(d, dict) or "depth" not in d or "width" not in d:
            raise RCDMError(f"{where}: arch must give depth and width (from `rcdm recipe ssl`)")
        depth = whole("depth", d["depth"], 8, MAX_DEPTH)
        if (depth - 2) % 6:
            raise RCDMError(
                f"{where}: arch depth = {depth} is not 6n + 2 (20, 32, 44, 56, ...): fix the card"
            )
        projector = d.get("projector", ())
        if not isinstance(projector, list | tuple) or len(projector) > MAX_PROJECTOR_LAYERS:
            raise RCDMError(f"{where}: arch projector = {projector!r} must be a list of at most 8 widths")
        return cls(
            depth=depth,
            width=whole("width", d["width"], 1, MAX_WIDTH),
            projector=tuple(whole("projector", v, 1, MAX_PROJECTOR_WIDTH) for v in projector),
            num_classes=whole("num_classes", d.get("num_classes", 0), 0, MAX_CLASSES),
        )


class _ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad planes//4 channels on each side."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class WideCifarResNet(nn.Module):
    """CIFAR ResNet with option-A shortcuts and channels (16, 32, 64) x width.

    forward(x): x (B, 3, H, W) normalised with the encoder's Preprocessing -> (B, 64 * width) pooled feature.
    """

    def __init__(self, depth: int = 20, width: int = 2):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise RCDMError(f"CIFAR ResNet depth {depth} is not 6n + 2 (e.g. 20, 32, 56): pick another depth")
        if width < 1:
            raise RCDMError(f"CIFAR ResNet width {width} must be a positive integer multiplier")
        n, c = (depth - 2) // 6, 16 * width
        self.conv1 = nn.Conv2d(3, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        stages, in_planes = [], c
        for planes, stride in ((c, 1), (2 * c, 2), (4 * c, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class CifarResNet(WideCifarResNet):
    """The published CIFAR ResNet-20/56: WideCifarResNet(depth, width=1) plus its classifier `linear`.

    forward(x): x (B, 3, 32, 32) ImageNet-normalised -> (B, 64) pooled feature; `linear` gives logits.
    """

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__(depth, width=1)
        self.linear = nn.Linear(64, num_classes)


DEPTHS = {"resnet20": 20, "resnet56": 56}


def load_cifar_resnet(depth: str, path: str | Path) -> CifarResNet:
    """Build a CIFAR ResNet and load `path` ({'state_dict': {'module.*': ...}}) strictly."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RCDMError(
            f"CIFAR ResNet weights not found: {str(path)!r}; pass cifar-{depth}:PATH to a .th file"
        )
    net = CifarResNet(DEPTHS[depth])
    ckpt = read_checkpoint(path)  # safetensors, or torch.load(weights_only=True): one line when unreadable
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RCDMError(f"{str(path)!r} holds no state dict of tensors: expected {{'state_dict': {{...}}}}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    load_strict(net, state, f"{str(path)!r}", layout=f"a CIFAR {depth}")
    return net


def mlp_projector(in_dim: int, widths: tuple[int, ...]) -> nn.Sequential:
    """VICReg expander (Bardes et al. 2022, Sec. 4.1): Linear-BN-ReLU for every layer but the last Linear.

    (B, in_dim) -> (B, widths[-1]).
    """
    layers: list[nn.Module] = []
    dims = (in_dim, *widths)
    for i in range(len(widths)):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(widths) - 1:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class CifarEncoderNet(nn.Module):
    """The trainable network behind a recipe encoder: `backbone`, optional `projector` and `classifier`.

    State-dict keys are `backbone.*`, `projector.*`, `classifier.*` (what encoder.safetensors holds).
    """

    def __init__(self, arch: CifarEncoderArch):
        super().__init__()
        self.arch = arch
        self.backbone = WideCifarResNet(arch.depth, arch.width)
        self.projector = mlp_projector(arch.backbone_dim, arch.projector) if arch.projector else None
        self.classifier = nn.Linear(arch.backbone_dim, arch.num_classes) if arch.num_classes > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) normalised -> backbone feature (B, 64 * width)."""
        return self.backbone(x)


def default_preprocessing() -> Preprocessing:
    """Recipe encoders read 32 px RGB normalised with the CIFAR-10 train statistics."""
    return Preprocessing(input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD, interpolation="bilinear")


def save_encoder(
    net: CifarEncoderNet,
    folder: str | Path,
    card: dict[str, Any],
    *,
    preprocessing: Preprocessing | None = None,
    dtype: torch.dtype = torch.float32,
    readme: str | None = None,
) -> Path:
    """Write FOLDER/{encoder.safetensors, card.json[, README.md]} atomically (temp folder + rename).

    The card gets "format", "arch", "preprocessing", "dtype" and, unless it already has one, "identity" (the
    first 12 hex digits of the weights' sha256): the identity RCDMs trained on this encoder record, which
    survives a later fp16 conversion by `rcdm recipe pack`.
    """
    folder = Path(folder)
    state = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in net.state_dict().items()
    }
    full = {
        **card,
        "format": ENCODER_FORMAT,
        "arch": net.arch.to_dict(),
        "preprocessing": (preprocessing or default_preprocessing()).to_dict(),
        "dtype": str(dtype).removeprefix("torch."),
    }
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": ENCODER_FORMAT})
        full.setdefault("identity", file_identity("rcdm-cifar", tmp / WEIGHTS_NAME))
        (tmp / CARD_NAME).write_text(json.dumps(full, indent=2, default=str))
        if readme is not None:
            (tmp / "README.md").write_text(readme)
    return folder


def resolve_encoder_dir(arg: str) -> Path:
    """A folder path, or NAME of a folder in $RCDM_MODELS or in the bundled rcdm/assets/models."""
    path = Path(arg).expanduser()
    if (path / CARD_NAME).is_file():
        return path.resolve()
    if "/" not in arg and os.sep not in arg:
        for base in model_search_dirs():
            if (base / arg / CARD_NAME).is_file():
                return base / arg
    names = sorted({p.parent.name for base in model_search_dirs() for p in base.glob(f"*/{CARD_NAME}")})
    choices = ", ".join(names) if names else "none are bundled in this install"
    raise RCDMError(
        f"rcdm-cifar:{arg} is neither a folder with {CARD_NAME} + {WEIGHTS_NAME} (from `rcdm recipe ssl`) "
        f"nor a known encoder name ({choices}; set RCDM_MODELS to a bundle folder to add more)"
    )


def load_encoder_net(folder: str | Path) -> tuple[CifarEncoderNet, dict[str, Any]]:
    """Rebuild the network a card describes and load its weights strictly (as float32, eval mode)."""
    folder = Path(folder)
    card = read_card(folder)
    arch = CifarEncoderArch.from_dict(card.get("arch"), repr(str(folder / CARD_NAME)))
    weights = folder / WEIGHTS_NAME
    if weights.is_file():  # keys and shapes from the header, against a network built without memory
        with init_empty_weights():
            expected = {k: v.shape for k, v in CifarEncoderNet(arch).state_dict().items()}
        check_keys(
            safetensors_shapes(weights),
            expected,
            repr(str(weights)),
            f"its card's architecture {card['arch']}",
        )
    net = CifarEncoderNet(arch)
    state = read_checkpoint(weights)
    load_strict(
        net, state, repr(str(folder / WEIGHTS_NAME)), layout=f"its card's architecture {card['arch']}"
    )
    return net.eval(), card


@register_encoder(
    "rcdm-cifar",
    "PATH_OR_NAME (encoder from `rcdm recipe ssl`: folder with encoder.safetensors + card.json, or a bundled name)",
)
def _rcdm_cifar(arg: str, feature: Feature) -> Encoder:
    folder = resolve_encoder_dir(arg)
    net, card = load_encoder_net(folder)
    if card.get("smoke"):
        log.warning("encoder %s is from a smoke-test run: undertrained, for tests only", folder)
    named = "/" not in arg and os.sep not in arg and not Path(arg).expanduser().is_dir()
    if net.classifier is not None:
        net.classifier.class_names = tuple(card.get("classes") or ())
    return Encoder(
        net.backbone,
        Preprocessing.from_dict(card["preprocessing"]),
        projector=net.projector,
        classifier=net.classifier,
        feature=feature,
        spec=f"rcdm-cifar:{arg if named else folder}",
        identity=card.get("identity") or file_identity("rcdm-cifar", folder / WEIGHTS_NAME),
        dim=net.arch.projector[-1]
        if feature == "projector" and net.arch.projector
        else net.arch.backbone_dim,
    )


def _cifar(depth: str) -> Callable[[str, Feature], Encoder]:
    def factory(arg: str, feature: Feature) -> Encoder:
        net = load_cifar_resnet(depth, arg)
        net.linear.class_names = CIFAR10_CLASSES  # the published CIFAR ResNets' label order
        return Encoder(
            net,
            Preprocessing(input_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear"),
            feature=feature,
            spec=f"cifar-{depth}:{arg}",
            identity=file_identity(f"cifar-{depth}", Path(arg).expanduser()),
            classifier=net.linear,
            dim=64,
        )

    return factory


register_encoder("cifar-resnet20", "PATH (CIFAR ResNet-20 .th; 64-d pooled feature)")(_cifar("resnet20"))
register_encoder("cifar-resnet56", "PATH (CIFAR ResNet-56 .th; 64-d pooled feature)")(_cifar("resnet56"))
