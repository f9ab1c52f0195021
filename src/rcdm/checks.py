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


def check_guidance(guidance: float) -> float:
    """A finite classifier-free guidance weight (1 = none)."""
    if not math.isfinite(guidance):
        raise RCDMError(f"--guidance {guidance} must be a finite number (1 = no guidance)")
    return guidance


def check_rep_noise(scale: float) -> float:
    """A finite, non-negative representation-noise scale (0 = none)."""
    if not (math.isfinite(scale) and scale >= 0):
        raise RCDMError(f"--rep-noise {scale} must be a number >= 0 (standard deviations; 0 = none)")
    return scale
