"""rcdm.bundle: reading a demo bundle (its index, roles and guidance) without training code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rcdm.bundle import ROLES, bundled_pack, read_bundle
from rcdm.errors import RCDMError


def test_the_shipped_pack_reads_with_its_roles_and_a_bad_guidance_is_one_line(tmp_path: Path) -> None:
    pack = bundled_pack()
    if pack is None:
        pytest.skip("no pack is installed in src/rcdm/assets/models")
    bundle = read_bundle(pack)
    assert {ROLES[role][0] for role in ROLES} <= {p.name for p in pack.iterdir()}
    assert bundle.guidance >= 1 and not bundle.smoke
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    index = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps({**index, "guidance": 1e30}))
    with pytest.raises(RCDMError, match="guidance"):
        _ = read_bundle(copy).guidance


def test_the_shipped_prior_models_the_shipped_vicreg_backbone() -> None:
    """The pack's representation prior is found by name, models the bundled VICReg encoder's backbone, names no
    machine path, and is what `rcdm generate` and the app pick for the backbone RCDM."""
    from rcdm.encoders import create_encoder
    from rcdm.prior import check_prior_matches, installed_priors, load_prior, prior_for

    pack = bundled_pack()
    if pack is None or not read_bundle(pack).index.get("priors"):
        pytest.skip("no pack with a prior is installed in src/rcdm/assets/models")
    bundle = read_bundle(pack)
    target = ROLES["backbone"][0]
    folder = bundle.prior(target)
    assert folder is not None and folder.name in installed_priors()
    encoder = create_encoder(f"rcdm-cifar:{bundle.encoder_name(target)}", "backbone")
    net, record = load_prior(folder.name)
    check_prior_matches(record, encoder)
    assert prior_for(encoder) == folder and net.config.representation_dim == 64
    assert record["representations"] == 50000 and record["metrics"]
    for name in ("prior.json", "README.md", "config.json"):
        assert "/root" not in (folder / name).read_text() and "/home" not in (folder / name).read_text()


def _machine_paths(value: object) -> list[str]:
    """Every string in a JSON value that is an absolute path, alone or after a `prefix:` (an encoder spec)."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _machine_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _machine_paths(v)]
    if isinstance(value, str) and (value.startswith("/") or value.partition(":")[2].startswith("/")):
        return [value]
    return []


def test_no_shipped_file_names_a_path_of_the_machine_that_packed_it() -> None:
    pack = bundled_pack()
    if pack is None:
        pytest.skip("no pack is installed in src/rcdm/assets/models")
    found = {
        str(path.relative_to(pack)): paths
        for path in sorted(pack.rglob("*.json"))
        if (paths := _machine_paths(json.loads(path.read_text())))
    }
    assert found == {}
