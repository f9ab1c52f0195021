"""rcdm recipe eval-images|samplers (commands/recipe_stages.py): arguments and files."""

from __future__ import annotations

from pathlib import Path

from rcdm.cli import main


def test_a_bad_sampler_setting_is_one_line(capsys) -> None:
    argv = ["recipe", "samplers", "--runs", "r", "--data", "d", "--judge", "j", "--metrics", "m"]
    assert main([*argv, "--settings", "fastest:2"]) == 2
    err = capsys.readouterr().err
    assert "--settings 'fastest:2': give PRESET:GUIDANCE" in err and len(err.strip().splitlines()) == 1


def test_eval_images_copies_a_class_balanced_prefix(cifar_root: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "recipe",
                "eval-images",
                "--data",
                str(cifar_root),
                "--out",
                str(tmp_path / "e"),
                "--num-images",
                "20",
            ]
        )
        == 0
    )
    names = sorted(p.name for p in (tmp_path / "e").iterdir())
    assert len(names) == 20 and {n.split("-")[0] for n in names} == {
        p.name for p in (cifar_root / "test").iterdir()
    }
