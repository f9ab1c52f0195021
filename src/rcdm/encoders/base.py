"""The frozen representation source: one interface over any image encoder."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import batched, load_images
from ..devices import Precision, autocast_for
from ..errors import RCDMError
from ..weights import sha256_file

Feature = Literal["backbone", "projector"]
FEATURES: tuple[str, ...] = ("backbone", "projector")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an encoder wants its input.

    The encoder receives a square RGB batch in [0, 1] (any size); it is resized to `input_size` with
    `interpolation` (antialiased) and normalised as (x - mean) / std. The published RCDM encoders use
    mean = std = 0.5, i.e. pixels in [-1, 1] with no ImageNet statistics (the "published" mode).
    """

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"
    # how files are cut to input_size (rcdm.data.Resample): "published" = guided-diffusion's PIL BOX + BICUBIC
    resample: Literal["antialias", "published"] = "antialias"

    def summary(self) -> str:
        """'224 px, ImageNet mean/std' or '32 px, mean (0.5, 0.5, 0.5) std (0.5, 0.5, 0.5)': for start-up logs."""
        if (tuple(self.mean), tuple(self.std)) == (IMAGENET_MEAN, IMAGENET_STD):
            norm = "ImageNet mean/std"
        else:
            norm = f"mean ({', '.join(f'{v:.3g}' for v in self.mean)}) std ({', '.join(f'{v:.3g}' for v in self.std)})"
        return f"{self.input_size} px {self.interpolation}, {norm}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=d.get("interpolation", "bicubic"),
            resample=d.get("resample", "antialias"),
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) in [0, 1] -> (B, 3, input_size, input_size), normalised."""
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = F.interpolate(
                images, size=(self.input_size, self.input_size), mode=self.interpolation, antialias=True
            ).clamp(0, 1)
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std


def published_preprocessing(input_size: int = 224) -> Preprocessing:
    """The published RCDM encoders' input: a 224 px centre crop cut as guided-diffusion did (PIL BOX halving, then
    BICUBIC), pixels scaled to [-1, 1], no mean/std."""
    return Preprocessing(
        input_size=input_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resample="published"
    )


class Encoder(nn.Module):
    """A frozen image encoder giving one representation per image.

    forward(images): images (B, 3, H, W) RGB in [0, 1], any square size -> (B, dim) float32.
    `backbone` is the trunk (pooled feature); `projector`, when given, maps the backbone feature to the
    SSL head's embedding. `feature` picks which one forward returns. Every parameter is frozen
    (requires_grad False) and the modules stay in eval mode whatever `train()` is called with.
    """

    def __init__(
        self,
        backbone: nn.Module,
        preprocessing: Preprocessing,
        *,
        projector: nn.Module | None = None,
        feature: Feature = "backbone",
        spec: str = "python:custom",
        identity: str | None = None,  # what must match when a model is reused; defaults to spec
        dim: int | None = None,  # inferred with one dry forward pass when None
        classifier: nn.Module | None = None,  # maps the backbone feature to logits, when the encoder has one
    ):
        super().__init__()
        if feature not in FEATURES:
            raise RCDMError(f"unknown feature {feature!r}: choose one of {', '.join(FEATURES)}")
        if feature == "projector" and projector is None:
            raise RCDMError(
                f"encoder {spec!r} has no projector: use --feature backbone, or an encoder with an SSL head"
            )
        self.backbone = backbone
        self.projector = projector
        self.classifier = classifier
        self.preprocessing = preprocessing
        self.feature: Feature = feature
        self.spec = spec
        self.identity = identity or spec
        self._weights_digest: str | None = None  # computed on first use (`weights_digest`)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        if dim is None:
            with torch.no_grad():
                probe = torch.zeros(1, 3, preprocessing.input_size, preprocessing.input_size)
                dim = int(self(probe).shape[-1])
        self.dim = dim

    def train(self, mode: bool = True) -> Encoder:
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def _copy(self, feature: Feature, spec: str, identity: str, dim: int | None = None) -> Encoder:
        """The same frozen modules (shared weights) under other settings; dim None: measured again."""
        return Encoder(
            self.backbone,
            self.preprocessing,
            projector=self.projector,
            feature=feature,
            spec=spec,
            identity=identity,
            dim=dim,
            classifier=self.classifier,
        )

    def with_feature(self, feature: Feature) -> Encoder:
        """The same frozen modules returning another feature (shares weights)."""
        return self._copy(feature, self.spec, self.identity)

    def with_spec(self, spec: str) -> Encoder:
        """The same encoder recorded under `spec` (its identity too, unless it has one of its own)."""
        identity = spec if self.identity == self.spec else self.identity
        enc = self._copy(self.feature, spec, identity, dim=self.dim)
        enc._weights_digest = self._weights_digest
        return enc

    def weights_digest(self) -> str:
        """sha256 (16 hex digits) of the weights that make the representation: the backbone's state dict, and the
        projector's with feature='projector' (not the classifier, which an encoder-only file may leave random).

        Computed once per Encoder. A model records it, so an encoder whose spec is unchanged but whose weights
        are not (a random init, a changed hub repo or local file) is refused instead of silently used.
        """
        if self._weights_digest is None:
            state = {f"backbone.{k}": v for k, v in self.backbone.state_dict().items()}
            if self.feature == "projector" and self.projector is not None:
                state |= {f"projector.{k}": v for k, v in self.projector.state_dict().items()}
            self._weights_digest = state_digest(state)
        return self._weights_digest

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> (B, backbone dim)."""
        x = self.preprocessing(images.float())
        h = self.backbone(x)
        return h.flatten(1).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.backbone_features(images)
        if self.feature == "projector":
            assert self.projector is not None
            h = self.projector(h).float()
        return h

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classifier's class names, index order, when known (its `class_names` attribute); else ()."""
        return tuple(getattr(self.classifier, "class_names", None) or ())

    def class_name(self, index: int) -> str:
        """Class `index` by name when known, else 'class N'."""
        names = self.class_names
        return names[index] if 0 <= index < len(names) else f"class {index}"

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, classes) for encoders that carry a classifier."""
        if self.classifier is None:
            raise RCDMError(f"encoder {self.spec!r} has no classifier head: a label attack needs one")
        return self.classifier(self.backbone_features(images))

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, batch_size: int = 256, precision: Precision = "auto"
    ) -> torch.Tensor:
        """images (N, 3, H, W) in [0, 1], any device -> representations (N, dim) float32 on the CPU.

        Runs on the encoder's device batch by batch, under `precision` (see `rcdm.devices.resolve_precision`).
        """
        device = self.device
        out = []
        for s, e in batched(images.shape[0], batch_size):
            with autocast_for(device, precision):
                out.append(self(images[s:e].to(device)).float().cpu())
        return torch.cat(out)

    def encode_files(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 256,
        *,
        flip: bool = False,
        progress: bool = False,
        precision: Precision = "auto",
    ) -> torch.Tensor:
        """Image files -> (N, dim) float32 CPU: each file's centre square at the encoder's input size.

        Files are read and encoded `batch_size` at a time (memory stays O(batch)). flip: encode the mirror
        images instead.
        """
        size, resample = self.preprocessing.input_size, self.preprocessing.resample
        out = []
        for s, e in tqdm(
            list(batched(len(paths), batch_size)), disable=None if progress else True, desc="encoding"
        ):
            views = load_images(paths[s:e], size, resample)
            out.append(self.encode(views.flip(-1) if flip else views, batch_size, precision))
        return torch.cat(out) if out else torch.empty(0, self.dim)

    def describe(self) -> dict:
        """What a model checkpoint records about the encoder it was trained on."""
        return {
            "encoder": self.spec,
            "encoder_identity": self.identity,
            "encoder_weights": self.weights_digest(),
            "feature": self.feature,
            "representation_dim": self.dim,
            "preprocessing": self.preprocessing.to_dict(),
        }


def file_identity(kind: str, path: str | Path) -> str:
    """A path-independent identity for a weights file: the kind plus the first 12 hex digits of its sha256."""
    return f"{kind}@sha256:{sha256_file(path)[:12]}"


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 (first 16 hex digits) over sorted names, dtypes, shapes and bytes of a state dict's tensors."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]
