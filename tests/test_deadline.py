"""rcdm.deadline: the wall-clock limit the app puts on one request, checked in every sampling step."""

from __future__ import annotations

import pytest
import torch

from rcdm.deadline import TimeLimitError, check_deadline, time_limit
from rcdm.diffusion import SamplingConfig, sample
from rcdm.model import RCDM


def test_sampling_stops_once_the_limit_has_passed_and_runs_without_one():
    model = RCDM.from_preset("tiny", 3, sample_size=8)
    rep = torch.zeros(1, 3)
    cfg = SamplingConfig(steps=2, precision="fp32")
    with time_limit(0.0), pytest.raises(TimeLimitError, match="stopped after 0 s, the limit on one request"):
        sample(model, rep, cfg)
    assert sample(model, rep, cfg).shape == (1, 3, 8, 8)  # the limit ended with its block
    with time_limit(None):
        check_deadline()  # None: no limit
