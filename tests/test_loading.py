"""rcdm.loading: finding and loading models (bundled short names)."""

from __future__ import annotations

import json
import shutil

import pytest

from rcdm.bundle import bundled_models_dir
from rcdm.errors import RCDMError
from rcdm.loading import resolve_model_dir, weights_digest
from rcdm.model import ADAPTER_WEIGHTS, WEIGHTS_VARIANT
from rcdm.weights import sha256_file


def test_bundled_models_have_short_names_a_default_sampling_and_no_machine_path():
    folders = sorted(bundled_models_dir().glob("rcdm-*/config.json"))
    if not folders:
        pytest.skip("no bundled pack in this install (rcdm/assets/models)")
    for config_file in folders:
        config = json.loads(config_file.read_text())
        assert "_name_or_path" not in config, config_file
        # the sampling `rcdm recipe guidance --record` chose (guidance 1 included: no guidance may measure best)
        sampling = config["sampling"]
        assert sampling["sampler"] == "dpm++" and sampling["guidance"] >= 1 and sampling["chosen_by"], (
            config_file
        )
        short = config_file.parent.name.removeprefix("rcdm-")
        assert resolve_model_dir(short) == config_file.parent
    with pytest.raises(RCDMError, match="or a bundled one \\(rcdm-cifar10"):
        resolve_model_dir("cifar10-nothing")


def test_weights_digest_names_what_a_folder_samples_with_adapters_by_their_base_too(tmp_path):
    model = bundled_models_dir() / "rcdm-cifar10-vicreg-backbone"
    adapter = bundled_models_dir() / "rcdm-cifar10-supervised-r20w1-via-cifar10-vicreg-backbone"
    if not adapter.is_dir():
        pytest.skip("no bundled pack in this install (rcdm/assets/models)")
    assert weights_digest(model) == sha256_file(
        model / f"diffusion_pytorch_model.{WEIGHTS_VARIANT}.safetensors"
    )
    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    assert weights_digest(copy) == weights_digest(adapter) not in ("", weights_digest(model))
    config = json.loads((copy / "config.json").read_text())
    config["adapted_from"]["base_weights"] = "0" * 64  # the same adapter made on other base weights
    (copy / "config.json").write_text(json.dumps(config))
    assert weights_digest(copy) != weights_digest(adapter)
    (copy / ADAPTER_WEIGHTS).unlink()
    assert weights_digest(copy) == ""  # no weights: loading the folder says why
