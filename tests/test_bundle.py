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
