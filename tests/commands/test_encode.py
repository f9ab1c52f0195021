"""rcdm.commands.encode (`rcdm encode`): representations written as safetensors."""

from __future__ import annotations

from safetensors import safe_open

from rcdm.cli import main


def test_encode_writes_safetensors(few_images, resnet20_spec, tmp_path):
    out = tmp_path / "reps.safetensors"
    assert main(["encode", "--encoder", resnet20_spec, "--images", str(few_images), "--out", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        reps = f.get_tensor("representations")
        meta = f.metadata()
    assert reps.shape == (8, 64) and meta["representation_dim"] == "64" and meta["feature"] == "backbone"
