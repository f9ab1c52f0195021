"""The paper's analyses as functions returning result dataclasses (tensors + numbers) and labelled figures."""

from .adversarial import ATTACKS, AdversarialResult, adversarial, adversarial_figure, pgd
from .augment import Augmentation, augment, get_augmentation, list_augmentations, register_augmentation
from .interpolate import InterpolationResult, interpolate, interpolation_figure, lerp, slerp
from .invariance import InvarianceResult, invariance, invariance_figure, retention_score
from .manipulate import (
    ManipulationResult,
    RepresentationSet,
    common_dimensions,
    folder_representations,
    manipulate,
    manipulation_figure,
    topk_cosine,
)
from .report import Report, report
from .variance import VarianceResult, pixel_std, variance, variance_figure

__all__ = [
    "ATTACKS",
    "AdversarialResult",
    "Augmentation",
    "InterpolationResult",
    "InvarianceResult",
    "ManipulationResult",
    "Report",
    "RepresentationSet",
    "VarianceResult",
    "adversarial",
    "adversarial_figure",
    "augment",
    "common_dimensions",
    "folder_representations",
    "get_augmentation",
    "interpolate",
    "interpolation_figure",
    "invariance",
    "invariance_figure",
    "lerp",
    "list_augmentations",
    "manipulate",
    "manipulation_figure",
    "pgd",
    "pixel_std",
    "register_augmentation",
    "report",
    "retention_score",
    "slerp",
    "topk_cosine",
    "variance",
    "variance_figure",
]
