"""Augmentations: seeded, shape- and range-keeping, registry errors."""

from __future__ import annotations

import pytest
import torch

from rcdm.analysis import augment, list_augmentations
from rcdm.errors import RCDMError


def test_augmentations_are_seeded_and_keep_shape_and_range(colourful):
    x = colourful(2, 32)
    for name, aug in list_augmentations().items():
        y = augment(x, name, seed=3)
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1, name
        assert torch.equal(y, augment(x, name, seed=3)), name
        if aug.default_strength > 0:
            assert not torch.allclose(y, x), f"{name} at its default strength changed nothing"
    assert torch.equal(augment(x, "hflip"), x.flip(-1))
    assert torch.equal(augment(x, "rotate", 0.25), torch.rot90(x, 1, dims=(-2, -1)))
    grey = augment(x, "grayscale", 1.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    with pytest.raises(RCDMError, match="unknown augmentation 'sepia'"):
        augment(x, "sepia")
