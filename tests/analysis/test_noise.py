"""rcdm analyze noise: reconstruction from the inverted noise against fresh samples, measured on the original."""

from __future__ import annotations

import json

import torch

from rcdm.analysis.noise import noise_keeps, rms_distance
from rcdm.cli import main
from rcdm.diffusion import SamplingConfig
from rcdm.loading import encoder_for, load_model


def test_distances_and_share_follow_their_definitions(tiny_run, few_images):
    model = load_model(tiny_run)
    images = [few_images / f"{c}.jpg" for c in ("cat", "dog", "horse")]
    cfg = SamplingConfig(sampler="ddim", steps=4, guidance=1.0, precision="fp32")
    res = noise_keeps(model, encoder_for(model), images, num_samples=2, sampling=cfg)
    assert res.fresh.shape == (3, 2, 3, 32, 32) and res.reconstructions.shape == (3, 3, 32, 32)
    torch.testing.assert_close(res.d_reconstruction, rms_distance(res.reconstructions, res.originals))
    torch.testing.assert_close(res.d_fresh, rms_distance(res.fresh, res.originals[:, None]).mean(1))
    other = (
        rms_distance(res.originals[0], res.originals[1]) + rms_distance(res.originals[0], res.originals[2])
    ) / 2
    torch.testing.assert_close(res.d_other[0], other)
    span = res.d_other - res.d_reconstruction
    share = torch.where(span > 0, (res.d_other - res.d_fresh) / span, torch.nan)
    torch.testing.assert_close(res.share, share, equal_nan=True)
    # the fresh samples are the model's own ddim samples: another seed draws other ones
    again = noise_keeps(model, encoder_for(model), images, num_samples=2, sampling=cfg.replace(seed=1))
    assert not torch.equal(again.fresh, res.fresh) and torch.equal(again.reconstructions, res.reconstructions)


def test_cli_writes_the_figure_and_the_numbers(tiny_run, few_images, tmp_path, capsys):
    out = tmp_path / "noise"
    args = [
        "analyze",
        "noise",
        "--model",
        str(tiny_run),
        "--steps",
        "3",
        "--num-samples",
        "2",
        "--no-progress",
    ]
    assert (
        main([*args, "--images", str(few_images / "cat.jpg"), str(few_images / "dog.jpg"), "--out", str(out)])
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["analysis"] == "noise" and set(results["images"]) == {"cat", "dog"}
    assert results["settings"]["steps"] == 3 and results["settings"]["guidance"] == 1.0
    assert (out / "figure.png").is_file()
    assert main([*args, "--images", str(few_images / "cat.jpg"), "--out", str(tmp_path / "one")]) == 2
    assert "needs at least 2 images" in capsys.readouterr().err
