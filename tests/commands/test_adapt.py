"""rcdm adapt (commands/adapt.py): adapting from the command line, one-line errors."""

from __future__ import annotations

from rcdm.cli import main


def test_cli_adapts_and_bad_input_is_one_line(base, few_images, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "adapt",
        "--model",
        str(base),
        "--encoder",
        "pixels:1",
        "--data",
        str(few_images),
        "--out",
        str(out),
    ]
    assert main([*argv, "--steps", "1", "--batch-size", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "adapted pixels:1 onto" in printed and "(mlp map: " in printed  # the default adapter: mlp
    assert (
        main(
            [
                "sample",
                "--model",
                str(out / "model"),
                "--images",
                str(next(few_images.iterdir())),
                "--num-samples",
                "2",
                "--steps",
                "2",
                "--guidance",
                "2",
                "--out",
                str(tmp_path / "s"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(["adapt", "--encoder", "pixels:1", "--data", str(few_images), "--out", str(tmp_path / "x")]) == 2
    )
    assert "--model is required" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "y"), "--minutes", "0"]) == 2
    assert "--minutes 0.0 must be a positive number" in capsys.readouterr().err
