"""rcdm.pack.ssl_config: `rcdm recipe ssl` refuses, in one line and before any work, what `rcdm train` refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from rcdm.cli import main
from rcdm.errors import RCDMError
from rcdm.pack.ssl import train_encoder
from rcdm.pack.ssl_config import SSLConfig, resolve_config

SMALL = ["--epochs", "1", "--batch-size", "4", "--depth", "8", "--width", "1", "--projector", "16", "16"]
SMALL += ["--num-workers", "0", "--no-progress"]


@pytest.mark.parametrize(
    ("flag", "values", "says"),
    [
        ("--projector", ["-5"], "--projector -5 is out of range"),
        ("--lr", ["-1"], "--lr -1.0 must be a positive number"),
        ("--lr", ["nan"], "--lr nan must be a positive number"),
        ("--num-workers", ["-1"], "--num-workers -1 is out of range"),
        ("--limit", ["-4"], "--limit -4 is out of range: use a whole number >= 1"),
        ("--width", ["300"], "--width 300 is out of range: use a whole number >= 1 and <= 16"),
        ("--depth", ["21"], "--depth 21 is not 6n + 2"),
        ("--batch-size", ["1"], "--batch-size 1 is out of range"),
        ("--seed", ["-1"], "--seed -1"),
    ],
)
def test_bad_ssl_settings_are_one_line_before_any_work(tmp_path, capsys, flag, values, says):
    out = tmp_path / "run"
    assert (
        main(["recipe", "ssl", "--data", str(tmp_path / "none"), *SMALL, flag, *values, "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and says in err, err
    assert not out.exists()


def test_the_python_api_checks_the_same(tmp_path):
    with pytest.raises(RCDMError, match="--epochs 0 is out of range"):
        train_encoder(SSLConfig(data=str(tmp_path), epochs=0), tmp_path / "run")
    assert resolve_config({"data": "d", "projector": [8, 8]}).projector == (8, 8)


@pytest.mark.parametrize("objective", ["vicreg", "supervised"])
def test_data_of_one_class_is_refused_not_scored_perfect(tmp_path, capsys, objective):
    for split in ("train", "test"):
        (tmp_path / "data" / split / "cat").mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (32, 32), (i * 30, 0, 0)).save(tmp_path / "data" / split / "cat" / f"{i}.png")
    argv = ["recipe", "ssl", "--data", str(tmp_path / "data"), *SMALL, "--objective", objective]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has images of 1 class(es) (cat): the k-NN accuracy needs two classes or more" in err, err
    assert not (Path(tmp_path) / "run" / "encoder").exists()
