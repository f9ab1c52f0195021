"""rcdm recipe (commands/recipe.py): the encoder recipe from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from rcdm.cli import main


def test_recipe_cli_trains_an_encoder_and_reports_bad_data(cifar_root: Path, tmp_path: Path) -> None:
    tiny = ["--epochs", "1", "--batch-size", "10", "--limit", "20", "--depth", "8", "--width", "1"]
    args = ["recipe", "ssl", "--data", str(cifar_root), "--out", str(tmp_path / "r"), *tiny]
    assert main([*args, "--projector", "16", "16", "--num-workers", "0", "--no-progress"]) == 0
    card = json.loads((tmp_path / "r" / "encoder" / "card.json").read_text())
    assert card["arch"]["projector"] == [16, 16] and card["smoke"] is True
    assert main(["recipe", "ssl", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert main(["recipe", "rcdm", "--runs", str(tmp_path), "--data", str(cifar_root)]) == 2  # no encoders
    (tmp_path / "file").write_text("x")
    assert main(["recipe", "ssl", "--data", str(cifar_root), "--out", str(tmp_path / "file"), *tiny]) == 2
