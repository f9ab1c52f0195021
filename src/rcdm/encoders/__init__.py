"""Frozen representation sources. See `create_encoder` for spec strings."""

from . import cifar  # noqa: F401  (registers the cifar-resnet20/56: and rcdm-cifar: specs)
from . import published as _published  # noqa: F401  (registers official:resnet50.*, the published encoders)
from .base import (
    FEATURES,
    Encoder,
    Feature,
    Preprocessing,
    file_identity,
    published_preprocessing,
    sha256_file,
)
from .registry import create_encoder, list_encoders, register_encoder

__all__ = [
    "FEATURES",
    "Encoder",
    "Feature",
    "Preprocessing",
    "create_encoder",
    "file_identity",
    "list_encoders",
    "published_preprocessing",
    "register_encoder",
    "sha256_file",
]
