"""rcdm convert (commands/convert.py): published checkpoints into model folders, from the command line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from rcdm.cli import main
from rcdm.loading import load_model
from rcdm.model import RCDM


def test_cli_convert_and_plain_diffusers_export(tmp_path, small_published, capsys):
    model, state = small_published
    ckpt = tmp_path / "small.pt"
    torch.save(state, ckpt)
    out = tmp_path / "converted"
    assert main(["convert", str(ckpt), "--out", str(out), "--image-size", "16"]) == 0
    loaded = RCDM.from_pretrained(out)
    x, t, f = torch.randn(1, 3, 16, 16), torch.tensor([500]), torch.randn(1, 2048)
    with torch.no_grad():
        ref = model(x, t, f)
        assert (loaded(x, t, f) - ref).abs().max().item() < 1e-5
        # docs/official.md, "Export": plain diffusers, 5 lines
        from diffusers import UNet2DModel
        from diffusers.models.attention_processor import Attention

        unet = UNet2DModel.from_pretrained(out / "unet")
        proj = load_file(str(out / "rep_proj.safetensors"))
        for m in unet.modules():
            if isinstance(m, Attention):
                m.heads = 4
        plain = unet(x, t, class_labels=f @ proj["weight"].T + proj["bias"]).sample
    assert (plain - ref).abs().max().item() < 1e-5


def test_cli_convert_bad_input_exits_2(tmp_path, small_published, capsys):
    assert main(["convert", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "absent.pt" in capsys.readouterr().err
    _, state = small_published
    state = {k: v for k, v in state.items() if k != "out.2.bias"}
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad))
    assert main(["convert", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "out.2.bias" in err and err.count("\n") == 1
    assert main(["convert", str(bad), "--out", str(tmp_path / "o"), "--num-heads", "0"]) == 2


def test_named_model_from_local_weights_records_its_encoder(tmp_path, monkeypatch, small_published):
    monkeypatch.setenv("RCDM_CACHE", str(tmp_path / "cache"))
    _, state = small_published
    path = tmp_path / "rcdm_ema_dino_trunk.pt"
    torch.save(state, path)
    model = load_model("official:dino-backbone", weights=str(path))
    cfg = model.config
    assert cfg.encoder == "official:resnet50.dino_in1k" and cfg.feature == "backbone"
    assert cfg.preprocessing["mean"] == [0.5, 0.5, 0.5] or tuple(cfg.preprocessing["mean"]) == (0.5, 0.5, 0.5)
    assert cfg.sample_size == 128 and cfg.attention_num_heads == 4
    # converted once, then read from the cache
    folders = list((tmp_path / "cache" / "official" / "models").iterdir())
    assert len(folders) == 1 and (folders[0] / "config.json").is_file()
    assert (
        main(["convert", str(path), "--out", str(tmp_path / "c"), "--image-size", "16", "--no-diffusers"])
        == 0
    )
    assert (
        json.loads((tmp_path / "c" / "config.json").read_text())["encoder"] == "official:resnet50.dino_in1k"
    )


@pytest.mark.parametrize("diffusers", ["--diffusers", "--no-diffusers"])
def test_cli_convert_refuses_an_out_that_is_a_file_before_converting(
    tmp_path, small_published, capsys, diffusers
):
    _, state = small_published
    ckpt = tmp_path / "small.pt"
    torch.save(state, ckpt)
    existing = tmp_path / "existing.txt"
    existing.write_text("hello\n")
    argv = ["convert", str(ckpt), "--image-size", "16", diffusers]
    assert main([*argv, "--out", str(existing)]) == 2  # was: "converted ... -> existing.txt", nothing written
    err = capsys.readouterr().err
    assert "existing.txt" in err and "is a file" in err and err.count("\n") == 1
    assert existing.read_text() == "hello\n"
    assert main([*argv, "--out", str(existing / "sub")]) == 2  # cannot be created: one line, no traceback
    assert "existing.txt' is a file, not a folder" in capsys.readouterr().err


def test_cli_convert_replaces_an_earlier_model_only_with_overwrite(tmp_path, small_published, capsys):
    _, state = small_published
    ckpt = tmp_path / "small.pt"
    torch.save(state, ckpt)
    out = tmp_path / "converted"
    argv = ["convert", str(ckpt), "--image-size", "16", "--out", str(out)]
    assert main(argv) == 0 and (out / "unet").is_dir()
    assert main([*argv, "--no-diffusers"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--no-diffusers", "--overwrite"]) == 0
    assert not (out / "unet").exists()  # the earlier export is not left beside the new model
    assert RCDM.from_pretrained(out).config.sample_size == 16
