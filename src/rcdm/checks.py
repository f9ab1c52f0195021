"""Checks of values a user passes on the command line (a seed, a guidance weight), worded with the option's
name: the commands, the training settings and the recipes share them, so they import nothing but `errors`."""

from __future__ import annotations

import math

from .errors import RCDMError


def check_seed(seed: int) -> int:
    """A seed in [0, 2**32): the range every generator rcdm seeds accepts, each seed its own stream."""
    if not 0 <= seed < 2**32:
        raise RCDMError(f"--seed {seed} is out of range: use a whole number from 0 to {2**32 - 1}")
    return seed


# Classifier-free guidance weights past this saturate every pixel (published RCDM and diffusers' pipelines use
# 1-15); 0 is the unconditional model, below it the representation is pushed away from.
MAX_GUIDANCE = 30.0


def check_guidance(guidance: float, what: str = "--guidance") -> float:
    """A classifier-free guidance weight in [0, MAX_GUIDANCE] (1 = none, 0 = unconditional)."""
    if not (isinstance(guidance, int | float) and math.isfinite(guidance) and 0 <= guidance <= MAX_GUIDANCE):
        raise RCDMError(
            f"{what} {guidance!r} is out of range: use a number from 0 to {MAX_GUIDANCE:g} (1 = no guidance)"
        )
    return float(guidance)


def check_guidance_interval(interval, what: str = "--guidance-interval") -> tuple[float, float]:
    """Noise levels (low, high] of the steps that are guided: two numbers with 0 <= low < high (high may be inf)."""
    try:
        low, high = (float(v) for v in interval)
    except (TypeError, ValueError):
        low = high = math.nan
    if not (math.isfinite(low) and 0 <= low < high):  # a NaN high fails low < high
        raise RCDMError(
            f"{what} {interval!r} is not an interval of noise levels: give LOW HIGH with 0 <= LOW < HIGH "
            "(sigma of the step; e.g. 0.28 5.42, or 0 inf for every step)"
        )
    return low, high


def check_rep_noise(scale: float) -> float:
    """A finite, non-negative representation-noise scale (0 = none)."""
    if not (math.isfinite(scale) and scale >= 0):
        raise RCDMError(f"--rep-noise {scale} must be a number >= 0 (standard deviations; 0 = none)")
    return scale
