"""rcdm.commands.sample (`rcdm sample`): PNGs and grids on disk, the same seed gives the same images."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from rcdm.cli import main
from rcdm.model import RCDM


def test_sample_writes_pngs_and_grids(tiny_run, few_images, tmp_path):
    out = tmp_path / "out"
    imgs = sorted(few_images.iterdir())[:2]
    code = main(["sample", "--model", str(tiny_run), "--images", *map(str, imgs), "--num-samples", "3",
                 "--steps", "3", "--out", str(out)])  # fmt: skip
    assert code == 0
    for p in imgs:
        samples = sorted((out / p.stem).glob("sample_*.png"))
        assert [s.name for s in samples] == ["sample_000.png", "sample_001.png", "sample_002.png"]
        assert Image.open(samples[0]).size == (32, 32)
        grid = Image.open(out / f"{p.stem}.png")
        assert grid.size[0] > 4 * 32  # original + 3 samples side by side


def test_sample_same_seed_same_images(tiny_run, few_images, tmp_path):
    img = str(sorted(few_images.iterdir())[0])
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        args = ["sample", "--model", str(tiny_run), "--images", img, "--num-samples", "1", "--steps", "3",
                "--sampler", "ddpm", "--seed", seed, "--out", str(tmp_path / name)]  # fmt: skip
        assert main(args) == 0
    stem = Path(img).stem
    read = lambda n: (tmp_path / n / stem / "sample_000.png").read_bytes()  # noqa: E731
    assert read("a") == read("b") and read("a") != read("c")


def test_cli_sample_says_and_records_the_model_default(guided, few_images, tmp_path, caplog):
    image = str(next(few_images.iterdir()))
    argv = ["sample", "--model", str(guided), "--images", image, "--num-samples", "1", "--no-progress"]
    with caplog.at_level("INFO"):
        assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "guidance 3, steps 6: the model's default sampling" in caplog.text
    record = json.loads((tmp_path / "a" / "sample.json").read_text())
    assert (record["guidance"], record["steps"]) == (3.0, 6)
    assert main([*argv, "--guidance", "1", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "sample.json").read_text())["guidance"] == 1.0


def test_cli_rep_noise_is_recorded_and_a_bad_value_exits_2(few_images, tmp_path, capsys):
    folder = tmp_path / "m"
    RCDM.from_preset("tiny", representation_dim=3, sample_size=16, encoder="pixels:1").save_pretrained(folder)
    argv = [
        "sample",
        "--model",
        str(folder),
        "--images",
        str(next(few_images.iterdir())),
        "--num-samples",
        "1",
    ]
    assert main([*argv, "--steps", "2", "--rep-noise", "0.5", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "sample.json").read_text())["rep_noise"] == 0.5
    assert main([*argv, "--rep-noise", "nan", "--out", str(tmp_path / "t")]) == 2
    assert "--rep-noise nan must be a number >= 0" in capsys.readouterr().err
