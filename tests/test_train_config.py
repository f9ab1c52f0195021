"""rcdm.train_config: training settings refused by name before any work."""

from __future__ import annotations

import math

import pytest

from rcdm.errors import RCDMError
from rcdm.train_config import validate_config
from training_for_tests import tiny_config


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(prediction="x0"), "unknown --prediction 'x0'"),
        (dict(loss_weighting="p2"), "unknown --loss-weighting 'p2'"),
        (dict(snr_gamma=0.0), "--snr-gamma 0.0 must be a positive number"),
        (dict(snr_gamma=math.nan), "--snr-gamma nan"),
        (dict(timestep_sampling="cosine"), "unknown --timestep-sampling 'cosine'"),
        (dict(warmup_steps=-1), "--warmup-steps -1 is out of range"),
        (dict(dropout=1.0), "--dropout 1.0 is out of range"),
    ],
)
def test_bad_knob_values_are_refused_naming_them(tmp_path, changes, message):
    with pytest.raises(RCDMError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate_config(tiny_config(tmp_path, **changes))
