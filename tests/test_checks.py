"""rcdm.checks: the shared checks of command-line values, each refusal one line naming the option."""

from __future__ import annotations

import math

import pytest

from rcdm.checks import MAX_GUIDANCE, check_guidance, check_rep_noise, check_seed
from rcdm.errors import RCDMError


def test_values_in_range_pass_through_and_others_name_their_option() -> None:
    assert check_seed(0) == 0 and check_seed(2**32 - 1) == 2**32 - 1
    assert check_guidance(0) == 0.0 and check_guidance(MAX_GUIDANCE) == MAX_GUIDANCE
    assert check_rep_noise(0.0) == 0.0
    for bad in (-1, 2**32):
        with pytest.raises(RCDMError, match=f"--seed {bad} is out of range"):
            check_seed(bad)
    for bad in (-0.5, MAX_GUIDANCE + 1, math.nan, math.inf, "5"):
        with pytest.raises(RCDMError, match=r"--weight .* is out of range"):
            check_guidance(bad, "--weight")  # type: ignore[arg-type]
    for bad in (-1.0, math.nan):
        with pytest.raises(RCDMError, match="--rep-noise"):
            check_rep_noise(bad)
