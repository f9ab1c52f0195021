"""rcdm generate (commands/generate.py): images from sampled representations."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from rcdm.cli import main
from rcdm.prior import (
    load_prior,
    sample_representations,
)


def test_generate_draws_one_image_per_sampled_representation(prior_run, tiny_run, tmp_path, capsys):
    out = tmp_path / "gen"
    args = [
        "generate",
        "--model",
        str(tiny_run),
        "--prior",
        str(prior_run),
        "--num-images",
        "3",
        "--steps",
        "2",
    ]
    assert main([*args, "--prior-steps", "5", "--no-progress", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("0*.png")) == ["00000.png", "00001.png", "00002.png"]
    settings = json.loads((out / "generate.json").read_text())
    assert settings["num_images"] == 3 and settings["prior_steps"] == 5 and settings["steps"] == 2
    reps = load_file(out / "representations.safetensors")["representations"]
    prior, _ = load_prior(prior_run)
    torch.testing.assert_close(reps, sample_representations(prior, 3, steps=5, seed=0))
    assert (out / "grid.png").is_file()
    # bad values: one line, exit 2, nothing written
    for bad, message in (
        (["--num-images", "0"], "--num-images"),
        (["--prior", str(tmp_path)], "not an rcdm prior"),
        (["--prior-steps", "5000"], "--prior-steps 5000"),
    ):
        assert main([*args, *bad, "--no-progress", "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_generate_finds_the_installed_prior_of_the_models_encoder(
    extended_bundle, tiny_run, tmp_path, monkeypatch, capsys
):
    """Without --prior, the installed prior of the model's encoder (as the pack ships one); none: one line."""
    monkeypatch.setenv("RCDM_MODELS", str(extended_bundle))
    model = extended_bundle / "rcdm-cifar10-vicreg-backbone"
    out = tmp_path / "gen"
    args = ["generate", "--num-images", "2", "--steps", "2", "--prior-steps", "3", "--no-progress"]
    assert main([*args, "--model", str(model), "--out", str(out)]) == 0
    assert "prior: prior-cifar10-vicreg-r8w1-backbone, the installed prior" in capsys.readouterr().out
    assert json.loads((out / "generate.json").read_text())["prior"] == "prior-cifar10-vicreg-r8w1-backbone"
    prior, _ = load_prior("prior-cifar10-vicreg-r8w1-backbone")  # by name, where rcdm-cifar:NAME looks
    reps = load_file(out / "representations.safetensors")["representations"]
    torch.testing.assert_close(reps, sample_representations(prior, 2, steps=3, seed=0))
    capsys.readouterr()
    assert main([*args, "--model", str(tiny_run), "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no prior installed for " in err and "--prior FOLDER" in err
    assert not (tmp_path / "none").exists()
