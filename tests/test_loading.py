"""rcdm.loading: finding and loading models (bundled short names)."""

from __future__ import annotations

import json

import pytest

from rcdm.bundle import bundled_models_dir
from rcdm.errors import RCDMError
from rcdm.loading import resolve_model_dir


def test_bundled_models_have_short_names_a_default_sampling_and_no_machine_path():
    folders = sorted(bundled_models_dir().glob("rcdm-*/config.json"))
    if not folders:
        pytest.skip("no bundled pack in this install (rcdm/assets/models)")
    for config_file in folders:
        config = json.loads(config_file.read_text())
        assert "_name_or_path" not in config, config_file
        assert config["sampling"]["guidance"] > 1 and config["sampling"]["sampler"] == "dpm++"
        short = config_file.parent.name.removeprefix("rcdm-")
        assert resolve_model_dir(short) == config_file.parent
    with pytest.raises(RCDMError, match="or a bundled one \\(rcdm-cifar10"):
        resolve_model_dir("cifar10-nothing")
