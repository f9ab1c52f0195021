"""rcdm.commands.models (`rcdm models`): the bundled short names and the published models."""

from __future__ import annotations

from rcdm.cli import main


def test_models_lists_the_bundled_short_names_and_the_published_ones(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "| official:dino-backbone | published | resnet50.dino_in1k | backbone |" in out
    from rcdm.bundle import bundled_models_dir

    for config in bundled_models_dir().glob("rcdm-*/config.json"):
        short = config.parent.name.removeprefix("rcdm-")
        assert f"| {short} | bundled |" in out
