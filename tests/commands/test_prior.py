"""rcdm prior (commands/prior.py): its argument checks."""

from __future__ import annotations

from rcdm.cli import main


def test_prior_cli_checks_its_numbers(tiny_run, few_images, tmp_path, capsys):
    base = ["prior", "--model", str(tiny_run), "--data", str(few_images), "--out", str(tmp_path / "p")]
    assert main([*base, "--steps", "0"]) == 2
    assert "--steps 0" in capsys.readouterr().err
    assert main([*base, "--lr", "5"]) == 2
    assert "--lr 5" in capsys.readouterr().err
    assert main([*base, "--resume"]) == 2
    assert "holds no rcdm prior run" in capsys.readouterr().err
