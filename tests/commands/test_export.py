"""rcdm export (commands/export.py): a plain diffusers folder that draws what rcdm sample draws."""

from __future__ import annotations

import pytest
import torch

from rcdm.cli import main
from test_model import tiny


def test_rcdm_export_writes_the_scheduler_and_a_readme_naming_the_folder(guided_model, tmp_path, capsys):
    guided_model.save_pretrained(tmp_path / "model")
    assert main(["export", str(tmp_path / "model"), "--out", str(tmp_path / "r20-diffusers")]) == 0
    out = tmp_path / "r20-diffusers"
    assert {p.name for p in out.iterdir()} == {
        "unet",
        "rep_proj.safetensors",
        "scheduler",
        "rcdm.json",
        "README.md",
    }
    readme = (out / "README.md").read_text()
    assert 'folder = "r20-diffusers"' in readme and "DPMSolverMultistepScheduler" in readme
    assert "README.md" in capsys.readouterr().out


def test_rcdm_export_checks_its_out_before_loading_the_model(tmp_path, capsys):

    (tmp_path / "file.txt").write_text("x")
    assert main(["export", str(tmp_path / "no-model"), "--out", str(tmp_path / "file.txt")]) == 2
    assert "file.txt' is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("standardize", [False, True])
def test_rcdm_export_writes_a_plain_diffusers_unet_that_gives_the_same_output(tmp_path, standardize, capsys):
    from diffusers import UNet2DModel
    from diffusers.models.attention_processor import Attention
    from safetensors.torch import load_file

    m = tiny(standardize_representation=standardize, null_representation=True).eval()
    with torch.no_grad():
        m.rep_proj.weight.normal_()
        m.null_rep.normal_()
        if standardize:
            m.set_representation_stats(torch.randn(50, 10) * 3 + 1)
    m.save_pretrained(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "e")]) == 0
    # a second export into it is refused without --overwrite; a folder of the user's files never replaced
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "e")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "mine"), "--overwrite"]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "e"), "--overwrite"]) == 0
    assert "heads=2" in capsys.readouterr().out
    unet = UNet2DModel.from_pretrained(tmp_path / "e" / "unet")
    proj = load_file(str(tmp_path / "e" / "rep_proj.safetensors"))
    for mod in unet.modules():
        if isinstance(mod, Attention):
            mod.heads = m.config.attention_num_heads
    x, t, r = torch.randn(2, 3, 16, 16), torch.tensor([3, 500]), torch.randn(2, 10) * 3 + 1
    with torch.no_grad():
        plain = unet(x, t, class_labels=r @ proj["weight"].T + proj["bias"]).sample
        assert (plain - m(x, t, r)).abs().max().item() < 1e-4
        null = unet(x, t, class_labels=proj["null_embedding"].expand(2, -1)).sample
        assert (null - m(x, t, None)).abs().max().item() < 1e-4
