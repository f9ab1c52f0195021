"""Encoder factories importable through `module:encoders_for_tests:NAME` specs (tests only)."""

from __future__ import annotations

import torch
from torch import nn

from rcdm.encoders import Encoder, Preprocessing


class MeanColour(nn.Module):
    """The mean colour of each image: a 3-d weight-free representation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def mean_colour() -> nn.Module:
    net = MeanColour()
    net.rcdm_preprocessing = Preprocessing(16, (0.5,) * 3, (0.5,) * 3)  # type: ignore[attr-defined]
    net.rcdm_projector = nn.Linear(3, 2)  # type: ignore[attr-defined]
    return net


class NanAfter(nn.Module):
    """Gives finite features for the first `good_calls` batches, then NaN (simulates a diverging encoder)."""

    def __init__(self, good_calls: int):
        super().__init__()
        self.good_calls = good_calls
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        feat = x.mean(dim=(2, 3))
        return feat if self.calls <= self.good_calls else feat * float("nan")


def nan_after_two() -> Encoder:
    prep = Preprocessing(16, (0.5,) * 3, (0.5,) * 3)
    return Encoder(NanAfter(2), prep, spec="module:encoders_for_tests:nan", dim=3)  # dim given: no probe call


def mean_colour_classifier() -> Encoder:
    """The mean colour (3-d) with a 10-class linear classifier on it: an encoder the label attack accepts."""
    torch.manual_seed(0)
    prep = Preprocessing(16, (0.5,) * 3, (0.5,) * 3)
    return Encoder(
        MeanColour(),
        prep,
        classifier=nn.Linear(3, 10),
        spec="module:encoders_for_tests:mean_colour_classifier",
        dim=3,
    )
