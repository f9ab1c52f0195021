"""rcdm invert (commands/invert.py): its files, swaps and errors."""

from __future__ import annotations

import json

from safetensors.torch import load_file

from rcdm.cli import main
from rcdm.data import image_tensor, load_views
from rcdm.inversion import INVERT_DEFAULTS, decode
from rcdm.loading import encoder_for, load_model


def test_cli_writes_noise_reconstructions_swaps_and_results(tiny_run, few_images, tmp_path, capsys):
    out = tmp_path / "inv"
    args = [
        "invert",
        "--model",
        str(tiny_run),
        "--images",
        str(few_images / "cat.jpg"),
        str(few_images / "dog.jpg"),
    ]
    swap = [
        "--representation-from",
        str(few_images / "horse.jpg"),
        "--steps",
        "5",
        "--no-progress",
        "--precision",
        "fp32",
    ]
    assert main([*args, *swap, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["images"]] == ["cat", "dog"]
    assert results["sampling"]["steps"] == 5 and results["representation_from"].endswith("horse.jpg")
    assert abs(results["mean_psnr_db"] - sum(r["psnr_db"] for r in results["images"]) / 2) < 1e-2
    noise = load_file(out / "cat" / "noise.safetensors")["noise"]
    assert noise.shape == (3, 32, 32)
    assert (out / "dog" / "reconstruction.png").is_file() and (out / "dog" / "with-horse.png").is_file()
    assert (out / "figure.png").is_file()
    # The saved noise decodes back to the saved reconstruction under the image's own representation.
    model = load_model(tiny_run)
    enc = encoder_for(model)
    _, view = load_views(
        [few_images / "cat.jpg"], 32, enc.preprocessing.input_size, enc.preprocessing.resample
    )
    cfg = INVERT_DEFAULTS.replace(steps=5, precision="fp32")
    redrawn = decode(model, noise[None], enc.encode(view), cfg)
    saved = image_tensor(out / "cat" / "reconstruction.png")
    assert float((redrawn[0] - saved).abs().max()) <= 1 / 255 + 1e-6
    assert "mean reconstruction PSNR" in capsys.readouterr().out
    # Its own earlier output is replaced only with --overwrite; bad values are one line, exit 2.
    assert main([*args, "--steps", "5", "--no-progress", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--steps", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main([*args, "--representation-from", str(few_images), "--out", str(tmp_path / "y")]) == 2
    assert "--representation-from takes one image" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
