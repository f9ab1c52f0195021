"""Invariance: retention scores per image statistic, and the analysis on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rcdm.analysis import augment, invariance, retention_score
from rcdm.analysis.invariance import InvarianceResult, invariance_figure, saturation
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


def _result(label: str, seed: int, inputs_seed: int = 0) -> InvarianceResult:
    g = torch.Generator().manual_seed(inputs_seed)
    m, a, n = 2, 3, 2
    originals, augmented = torch.rand(m, 3, 8, 8, generator=g), torch.rand(a, m, 3, 8, 8, generator=g)
    s = torch.Generator().manual_seed(seed)
    return InvarianceResult(
        label=label,
        names=["x", "y"],
        augmentations=[("hflip", 1.0), ("grayscale", 1.0), ("invert", 1.0)],
        originals=originals,
        augmented=augmented,
        clean_samples=torch.rand(m, n, 3, 8, 8, generator=s),
        aug_samples=torch.rand(a, m, n, 3, 8, 8, generator=s),
        shift=torch.rand(a, m, generator=s),
        relative_shift=torch.rand(a, m, generator=s),
        cosine=torch.rand(a, m, generator=s),
        retention=torch.rand(a, m, generator=s),
        typical_distance=1.0,
    )


def test_a_comparison_on_the_same_inputs_is_one_row_per_augmentation_with_both_side_by_side():
    one = invariance_figure([_result("backbone", 1)])
    pair = invariance_figure([_result("backbone", 1), _result("projector", 2)])
    apart = invariance_figure([_result("backbone", 1), _result("projector", 2, inputs_seed=9)])
    assert pair.height == one.height and pair.width > one.width  # 8 rows, 1 + 2 + 2 columns
    assert apart.height > 1.8 * one.height  # other inputs: a row per result, as before
