"""rcdm.commands.sample (`rcdm sample`): PNGs and grids on disk, the same seed gives the same images."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from rcdm.cli import main


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
