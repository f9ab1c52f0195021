"""--rep-noise: Gaussian noise on the standardised representation before conditioning."""

from __future__ import annotations

import json

import pytest
import torch

from rcdm.cli import main
from rcdm.diffusion import SamplingConfig, noisy_representation, sample, sample_many
from rcdm.errors import RCDMError
from rcdm.model import RCDM


@pytest.fixture(scope="module")
def model() -> RCDM:
    torch.manual_seed(0)
    m = RCDM.from_preset("tiny", representation_dim=6, sample_size=16, standardize_representation=True)
    m.set_representation_stats(torch.randn(100, 6) * torch.tensor([1.0, 2, 3, 4, 5, 6]))
    return m.eval()


def test_noise_is_in_standard_deviations_of_the_training_representations(model):
    rep = torch.zeros(4000, 6)
    noisy = noisy_representation(model, rep, SamplingConfig(rep_noise=0.5))
    torch.testing.assert_close(noisy.std(0), 0.5 * model.rep_std, rtol=0.06, atol=0)
    assert torch.equal(noisy_representation(model, rep, SamplingConfig()), rep)
    plain = RCDM.from_preset("tiny", representation_dim=6, sample_size=16)
    x = torch.full((2000, 6), 3.0)  # RMS 3: the unit of a model without training statistics
    assert abs(float((noisy_representation(plain, x, SamplingConfig(rep_noise=1.0)) - x).std()) - 3.0) < 0.15


def test_samples_change_with_noise_replay_with_the_seed_and_ignore_batching(model):
    reps = torch.randn(3, 6)
    clean = sample(model, reps, SamplingConfig(steps=3, seed=2))
    a = sample(model, reps, SamplingConfig(steps=3, seed=2, rep_noise=1.0))
    assert not torch.allclose(a, clean) and torch.equal(
        a, sample(model, reps, SamplingConfig(steps=3, seed=2, rep_noise=1.0))
    )
    cfg = SamplingConfig(steps=3, seed=2, rep_noise=1.0, batch_size=6, precision="fp32")
    whole, split = sample_many(model, reps, 2, cfg), sample_many(model, reps, 2, cfg.replace(batch_size=1))
    torch.testing.assert_close(whole, split, atol=1e-4, rtol=0)  # each row's noise is its own
    with pytest.raises(RCDMError, match="--rep-noise -1"):
        sample(model, reps, SamplingConfig(steps=3, rep_noise=-1.0))


def test_cli_rep_noise_is_recorded_and_a_bad_value_exits_2(model, few_images, tmp_path, capsys):
    folder = tmp_path / "m"
    RCDM.from_preset("tiny", representation_dim=3, sample_size=16, encoder="pixels:1").save_pretrained(folder)
    argv = [
        "sample",
        "--model",
        str(folder),
        "--images",
        str(next(few_images.iterdir())),
        "--num-samples",
        "1",
    ]
    assert main([*argv, "--steps", "2", "--rep-noise", "0.5", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "sample.json").read_text())["rep_noise"] == 0.5
    assert main([*argv, "--rep-noise", "nan", "--out", str(tmp_path / "t")]) == 2
    assert "--rep-noise nan must be a number >= 0" in capsys.readouterr().err
