"""Augmentations and symmetries as a registry: name -> seeded function of (images in [0, 1], strength).

Every entry draws ONE set of random parameters from its generator and applies it to the whole batch, so the
same seed gives the same crop / jitter on an image, on its encoder view (another size) and on samples drawn
from it. Parameters are relative to the image side, so the result does not depend on the resolution.
Strength is in [0, 1]; what it means is given per entry (see docs/analysis.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from ..errors import RCDMError

AugmentFn = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]
Group = Literal["ssl", "symmetry"]
Statistic = Literal["geometry", "saturation", "colour", "sharpness", "histogram"]


@dataclass(frozen=True)
class Augmentation:
    """One registry entry.

    apply(images (B, 3, H, W) in [0, 1], strength, generator) -> (B, 3, H, W) in [0, 1].
    statistic: which image statistic its retention score uses (see invariance.retention_score).
    """

    name: str
    apply: AugmentFn
    default_strength: float
    group: Group
    statistic: Statistic
    help: str


_AUGMENTATIONS: dict[str, Augmentation] = {}


def register_augmentation(
    name: str, *, default_strength: float, group: Group, statistic: Statistic, help: str
) -> Callable[[AugmentFn], AugmentFn]:
    def deco(fn: AugmentFn) -> AugmentFn:
        _AUGMENTATIONS[name] = Augmentation(name, fn, default_strength, group, statistic, help)
        return fn

    return deco


def list_augmentations() -> dict[str, Augmentation]:
    return dict(_AUGMENTATIONS)


def get_augmentation(name: str) -> Augmentation:
    if name not in _AUGMENTATIONS:
        raise RCDMError(f"unknown augmentation {name!r}: choose from {', '.join(_AUGMENTATIONS)}")
    return _AUGMENTATIONS[name]


def parse_augmentations(specs: list[str] | None) -> list[tuple[str, float]]:
    """['grayscale', 'solarize=0.7'] -> [(name, strength)]; None -> every registered one at its default."""
    if not specs:
        return [(a.name, a.default_strength) for a in _AUGMENTATIONS.values()]
    out = []
    for spec in specs:
        name, sep, value = spec.partition("=")
        aug = get_augmentation(name)
        try:
            strength = float(value) if sep else aug.default_strength
        except ValueError:
            raise RCDMError(f"bad strength in {spec!r}: use NAME=NUMBER, e.g. {name}=0.5") from None
        if not 0.0 <= strength <= 1.0:
            raise RCDMError(f"strength {strength} in {spec!r} is out of range: use a number in [0, 1]")
        out.append((name, strength))
    return out


def augment(images: torch.Tensor, name: str, strength: float | None = None, *, seed: int = 0) -> torch.Tensor:
    """Apply registry entry `name` to images (B, 3, H, W) in [0, 1] with one parameter draw from `seed`."""
    aug = get_augmentation(name)
    g = torch.Generator().manual_seed(seed)
    s = aug.default_strength if strength is None else strength
    return aug.apply(images.float(), float(s), g).clamp(0, 1)


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _sign(g: torch.Generator) -> float:
    return 1.0 if float(torch.rand((), generator=g)) < 0.5 else -1.0


# --- the augmentations SSL methods train with -------------------------------------------------------------


@register_augmentation(
    "random_resized_crop",
    default_strength=0.5,
    group="ssl",
    statistic="geometry",
    help="keeps a square of side 1 - 0.7*strength at a random place, resized back",
)
def _crop(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    side = 1.0 - 0.7 * s
    top, left = _uniform(g, 0, 1 - side), _uniform(g, 0, 1 - side)
    h, w = x.shape[-2:]
    t, lft = round(top * h), round(left * w)
    ch, cw = max(1, round(side * h)), max(1, round(side * w))
    crop = x[..., t : t + ch, lft : lft + cw]
    return F.interpolate(crop, size=(h, w), mode="bicubic", antialias=True, align_corners=False)


@register_augmentation(
    "hflip", default_strength=1.0, group="ssl", statistic="geometry", help="mirror left-right (strength > 0)"
)
def _hflip(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    return x.flip(-1) if s > 0 else x


@register_augmentation(
    "colour_jitter",
    default_strength=0.5,
    group="ssl",
    statistic="colour",
    help="brightness, contrast, saturation x (1 +- 0.8*strength), hue +- 0.2*strength (signs random)",
)
def _jitter(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    b, c, sat = (1 + _sign(g) * 0.8 * s for _ in range(3))
    hue = _sign(g) * 0.2 * s
    x = TF.adjust_brightness(x, max(b, 0.0))
    x = TF.adjust_contrast(x, max(c, 0.0))
    x = TF.adjust_saturation(x, max(sat, 0.0))
    return TF.adjust_hue(x.clamp(0, 1), hue)


@register_augmentation(
    "grayscale",
    default_strength=1.0,
    group="ssl",
    statistic="saturation",
    help="blend toward the grey image by strength (1 = fully grey)",
)
def _gray(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    grey = TF.rgb_to_grayscale(x, num_output_channels=3)
    return torch.lerp(x, grey, s)


@register_augmentation(
    "gaussian_blur",
    default_strength=1.0,
    group="ssl",
    statistic="sharpness",
    help="Gaussian blur, sigma = strength * side / 32 px (1 px at 32 px)",
)
def _blur(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    sigma = s * x.shape[-1] / 32
    if sigma <= 0:
        return x
    k = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])


@register_augmentation(
    "solarize",
    default_strength=0.5,
    group="ssl",
    statistic="histogram",
    help="invert every value above 1 - strength (0.5: BYOL's threshold)",
)
def _solarize(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    return torch.where(x >= 1.0 - s, 1.0 - x, x) if s > 0 else x


# --- other symmetries ---------------------------------------------------------------------------------------


@register_augmentation(
    "vflip", default_strength=1.0, group="symmetry", statistic="geometry", help="upside down (strength > 0)"
)
def _vflip(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    return x.flip(-2) if s > 0 else x


@register_augmentation(
    "rotate",
    default_strength=0.25,
    group="symmetry",
    statistic="geometry",
    help="rotate by strength * 360 degrees counter-clockwise (0.25 = 90 degrees, exact for multiples of 90)",
)
def _rotate(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    angle = 360.0 * s
    quarter = angle / 90.0
    if abs(quarter - round(quarter)) < 1e-6:
        return torch.rot90(x, k=round(quarter) % 4, dims=(-2, -1))
    return TF.rotate(x, angle, interpolation=TF.InterpolationMode.BILINEAR)


@register_augmentation(
    "invert",
    default_strength=1.0,
    group="symmetry",
    statistic="histogram",
    help="blend toward the negative 1 - x by strength",
)
def _invert(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    return torch.lerp(x, 1.0 - x, s)


def augment_views(views: list[torch.Tensor], name: str, strength: float, seed: int) -> list[torch.Tensor]:
    """The same parameter draw applied to several views (e.g. diffusion and encoder sizes) of one batch."""
    return [augment(v, name, strength, seed=seed) for v in views]


__all__ = [
    "Augmentation",
    "augment",
    "augment_views",
    "get_augmentation",
    "list_augmentations",
    "parse_augmentations",
    "register_augmentation",
]
