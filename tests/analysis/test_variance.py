"""Variance: per-pixel std, and the analysis on the tiny model."""

from __future__ import annotations

import pytest
import torch

from rcdm.analysis import pixel_std, variance


def test_pixel_std_of_identical_samples_is_zero(colourful):
    s = colourful(1)[0][None].repeat(5, 1, 1, 1)
    assert float(pixel_std(s).abs().max()) == 0.0
    assert float(pixel_std(torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])).mean()) == pytest.approx(
        0.5
    )


def test_variance_on_tiny_model(tiny, two_images, fast):
    model, enc = tiny
    res = variance(model, enc, two_images, **fast)
    assert res.std.shape == (2, 32, 32) and (res.mean_pixel_std > 0).all()
    assert torch.allclose(res.mean_pixel_std, pixel_std(res.samples).mean(dim=(-2, -1)))
    assert res.mean_std is res.mean_pixel_std  # the earlier name still works
