"""Fixtures of the pack's tests: a tiny run folder of the recipes (two encoders and one RCDM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcdm.pack.rcdms import RCDMRecipe, train_rcdms
from rcdm.pack.ssl import SSLConfig, train_encoder

TARGET = "rcdm-cifar10-vicreg-projector"
TINY = dict(
    epochs=1, batch_size=10, limit=20, depth=8, width=1, projector=(32, 32), num_workers=0, warmup_epochs=0
)


@pytest.fixture(scope="session")
def runs(cifar_root: Path, few_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT with a tiny VICReg encoder (ssl/), a tiny supervised one (supervised/) and one tiny RCDM run."""
    root = tmp_path_factory.mktemp("recipe-runs")
    train_encoder(SSLConfig(data=str(cifar_root), **TINY), root / "ssl", progress=False)
    train_encoder(
        SSLConfig(data=str(cifar_root), objective="supervised", **TINY), root / "supervised", progress=False
    )
    recipe = RCDMRecipe(
        data=str(few_images), preset="tiny", steps=2, batch_size=4, save_every=2, num_workers=0
    )
    train_rcdms(recipe, root, only=[TARGET], progress=False)
    return root
