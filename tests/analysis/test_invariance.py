"""Invariance: retention scores per image statistic, and the analysis on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rcdm.analysis import augment, invariance, retention_score
from rcdm.analysis.invariance import saturation
from rcdm.errors import RCDMError


def test_grayscale_retention_is_one_for_grey_samples_and_zero_for_unchanged(colourful):
    x = colourful(1)[0]
    s = colourful(4, seed=1)
    grey = augment(s, "grayscale", 1.0)
    args = (x, augment(x[None], "grayscale", 1.0)[0])
    assert retention_score("saturation", s, grey, grey, *args) == pytest.approx(1.0)
    assert retention_score("saturation", s, s, grey, *args) == pytest.approx(0.0)
    assert float(saturation(grey).max()) < 1e-5
    # Greying already-grey samples changes nothing: the score is undefined, not a fake 0 or 1.
    assert math.isnan(retention_score("saturation", grey, grey, grey, *args))


def test_flip_retention_compares_samples_with_x_and_flipped_x(colourful):
    x = colourful(1, seed=2)[0]
    fx = x.flip(-1)
    near_x, near_fx = x[None].repeat(3, 1, 1, 1), fx[None].repeat(3, 1, 1, 1)
    assert retention_score("geometry", near_x, near_fx, near_fx, x, fx) == pytest.approx(1.0, abs=1e-5)
    assert retention_score("geometry", near_x, near_x, near_fx, x, fx) == pytest.approx(0.0, abs=1e-5)
    half = retention_score("geometry", near_x, (near_x + near_fx) / 2, near_fx, x, fx)
    assert 0.3 < half < 0.7


def test_colour_jitter_and_blur_retention(colourful):
    x, s = colourful(1)[0], colourful(4, seed=5)
    for name, stat in (
        ("colour_jitter", "colour"),
        ("gaussian_blur", "sharpness"),
        ("solarize", "histogram"),
    ):
        t = augment(s, name, seed=7)
        tx = augment(x[None], name, seed=7)[0]
        assert retention_score(stat, s, t, t, x, tx) == pytest.approx(1.0, abs=1e-5), name
        assert retention_score(stat, s, s, t, x, tx) == pytest.approx(0.0, abs=1e-5), name


def test_invariance_on_tiny_model(tiny, two_images, fast):
    model, enc = tiny
    res = invariance(model, enc, two_images, augmentations=["grayscale", "hflip=1"], **fast)
    assert res.aug_samples.shape == (2, 2, 2, 3, 32, 32) and res.clean_samples.shape == (2, 2, 3, 32, 32)
    assert (res.shift > 0).all() and math.isfinite(res.typical_distance)
    assert torch.allclose(res.relative_shift, res.shift / res.typical_distance)
    finite = res.retention[torch.isfinite(res.retention)]
    assert finite.numel() > 0 and ((finite >= 0) & (finite <= 1)).all()
    json.dumps(res.summary())  # JSON-ready
    with pytest.raises(RCDMError, match="unknown augmentation"):
        invariance(model, enc, two_images, augmentations=["mirror"], **fast)
