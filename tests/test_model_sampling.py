"""Sampling defaults that travel with a model (config `sampling`), bundled short names, and shareable configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rcdm.bundle import bundled_models_dir
from rcdm.cli import main
from rcdm.diffusion import SamplingConfig, resolve_sampling, sample
from rcdm.errors import RCDMError
from rcdm.loading import resolve_model_dir
from rcdm.model import RCDM


@pytest.fixture(scope="module")
def guided(tmp_path_factory) -> Path:
    """A tiny model (tests only) on pixels:2 with a null representation and a recorded default: dpm++ 6, guidance 3."""
    torch.manual_seed(0)
    m = RCDM.from_preset(
        "tiny",
        representation_dim=12,
        sample_size=16,
        null_representation=True,
        encoder="pixels:2",
        sampling={"sampler": "dpm++", "steps": 6, "guidance": 3.0},
    )
    with torch.no_grad():
        m.null_rep.normal_()
    folder = tmp_path_factory.mktemp("guided") / "model"
    m.save_pretrained(folder)
    return folder


def test_open_settings_come_from_the_model_and_explicit_ones_win(guided):
    model = RCDM.from_pretrained(guided)
    assert (resolve_sampling(model).guidance, resolve_sampling(model).steps) == (3.0, 6)
    mine = resolve_sampling(model, SamplingConfig(guidance=1.0, steps=4))
    assert (mine.guidance, mine.steps) == (1.0, 4)
    other = resolve_sampling(model, SamplingConfig(sampler="ddim"))
    assert (other.guidance, other.steps) == (3.0, None)  # the model's steps were chosen for its own sampler
    plain = RCDM.from_preset("tiny", representation_dim=12, sample_size=16)
    assert resolve_sampling(plain).guidance == 1.0  # a model without a default: the library's


def test_sample_uses_the_model_default_guidance(guided):
    model = RCDM.from_pretrained(guided).eval()
    reps = torch.randn(2, 12)
    default = sample(model, reps, SamplingConfig(seed=1, precision="fp32"))
    assert torch.equal(
        default, sample(model, reps, SamplingConfig(steps=6, guidance=3.0, seed=1, precision="fp32"))
    )
    assert not torch.allclose(
        default, sample(model, reps, SamplingConfig(steps=6, guidance=1.0, seed=1, precision="fp32"))
    )


def test_cli_sample_says_and_records_the_model_default(guided, few_images, tmp_path, caplog):
    image = str(next(few_images.iterdir()))
    argv = ["sample", "--model", str(guided), "--images", image, "--num-samples", "1", "--no-progress"]
    with caplog.at_level("INFO"):
        assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "guidance 3, steps 6: the model's default sampling" in caplog.text
    record = json.loads((tmp_path / "a" / "sample.json").read_text())
    assert (record["guidance"], record["steps"]) == (3.0, 6)
    assert main([*argv, "--guidance", "1", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "sample.json").read_text())["guidance"] == 1.0


def test_saved_configs_carry_no_path_of_the_machine(guided, tmp_path):
    model = RCDM.from_pretrained(guided)  # diffusers sets _name_or_path to the folder it read
    model.save_pretrained(tmp_path / "again")
    assert "_name_or_path" not in json.loads((tmp_path / "again" / "config.json").read_text())


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
