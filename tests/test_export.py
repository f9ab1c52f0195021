"""rcdm.export: the exported folder alone, through the loop its README gives, draws what `rcdm sample` draws."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from rcdm.diffusion import SamplingConfig, sample_many
from rcdm.export import export_diffusers
from rcdm.model import RCDM


@pytest.fixture
def guided_model() -> RCDM:
    """A tiny random RCDM with what an export must fold in: standardisation, a null representation (guidance),
    learned variance, attention with several heads, and a recorded default guidance."""
    torch.manual_seed(0)
    model = RCDM.from_preset(
        "tiny",
        representation_dim=5,
        sample_size=16,
        null_representation=True,
        standardize_representation=True,
        encoder="pixels:1",
    )
    model.set_representation_stats(torch.randn(64, 5) * 3 + 1)
    with torch.no_grad():
        model.null_rep.normal_()
    model.register_to_config(sampling={"sampler": "dpm++", "steps": 6, "guidance": 3.0})
    return model.eval()


def _readme_loop(folder: Path) -> dict:
    """The README's Python block, run as a user would (only the folder path changed)."""
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    code = re.sub(r'^folder = ".*"$', f'folder = "{folder}"', code, flags=re.M)
    scope: dict = {}
    exec(compile(code, str(folder / "README.md"), "exec"), scope)
    return scope


def test_the_readme_loop_draws_what_rcdm_sample_draws(guided_model, tmp_path):
    out = export_diffusers(guided_model, tmp_path / "exp", source="runs/tiny")
    info = json.loads((out / "rcdm.json").read_text())
    assert info["sampling"] == {"sampler": "dpm++", "steps": 6, "guidance": 3.0, "seed": 0}
    assert "seed * 1_000_003 + i" in info["seeding"] and info["encoder"] == "pixels:1"
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["thresholding"] is True
    features = torch.randn(2, 5) * 3 + 1
    ours = sample_many(guided_model, features, 3, SamplingConfig(seed=7, precision="fp32", compile="off"))
    theirs = _readme_loop(out)["rcdm_sample"](features, num_samples=3, seed=7)
    assert theirs.shape == ours.shape == (2, 3, 3, 16, 16)
    assert (theirs - ours).abs().max() < 1e-4  # the docs alone gave 7-9/255 before
    unguided = sample_many(guided_model, features, 1, SamplingConfig(guidance=1.0, precision="fp32"))
    assert (
        _readme_loop(out)["rcdm_sample"](features, num_samples=1, guidance=1) - unguided
    ).abs().max() < 1e-4
