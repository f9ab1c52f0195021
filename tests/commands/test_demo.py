"""rcdm.commands.demo (`rcdm demo`): bundle errors in one line with exit 2, and the bundle's guidance unless
told."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rcdm.bundle import read_bundle
from rcdm.cli import main
from rcdm.errors import RCDMError
from rcdm.pack.rcdms import TARGETS, RCDMRecipe, train_rcdms


def test_the_pack_demo_samples_with_the_bundle_guidance_unless_told(
    bundle: Path, few_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, guided = bundle.parent, tmp_path / "guided"
    assert (
        main(
            ["recipe", "pack", "--runs", str(root), "--out", str(guided), "--allow-smoke", "--guidance", "2"]
        )
        == 0
    )
    assert read_bundle(guided).guidance == 2.0 and read_bundle(bundle).guidance == 1.0
    stds = {}
    for extra, expected in (([], 2.0), (["--guidance", "1"], 1.0)):
        out = tmp_path / f"demo-{expected}"
        argv = [
            "demo",
            "--bundle",
            str(guided),
            "--out",
            str(out),
            "--preset",
            "quick",
            "--no-progress",
            *extra,
        ]
        assert main(argv) == 0
        res = json.loads((out / "results.json").read_text())
        assert res["settings"]["sampling"]["guidance"] == expected
        assert res["invariance"]["projector"]["settings"]["guidance"] == expected  # every section samples so
        stds[expected] = res["samples"]["backbone"]["mean_pixel_std"]
    assert stds[2.0] != stds[1.0]  # guidance changed the samples

    # RCDMs without a null representation cannot be guided: refused before anything is written.
    plain = tmp_path / "plain-runs"
    for run in ("ssl", "supervised"):
        shutil.copytree(root / run, plain / run)
    recipe = RCDMRecipe(
        data=str(few_images), preset="tiny", steps=1, batch_size=4, save_every=1, num_workers=0
    )
    train_rcdms(recipe, plain, only=[TARGETS[2].name], progress=False)
    capsys.readouterr()
    argv = ["recipe", "pack", "--runs", str(plain), "--out", str(tmp_path / "b"), "--only", TARGETS[2].name]
    assert main([*argv, "--allow-smoke", "--guidance", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "condition dropout" in err and TARGETS[2].name in err, err
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
    assert main(["demo", "--smoke-scale", "--guidance", "2", "--out", str(tmp_path / "s")]) == 2


def test_demo_bundle_errors_exit_2_with_one_line(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    not_a_bundle = tmp_path / "empty"
    not_a_bundle.mkdir()
    partial = tmp_path / "partial"
    shutil.copytree(bundle, partial)
    shutil.rmtree(partial / TARGETS[1].name)
    cases = {
        str(tmp_path / "nowhere"): "does not exist",
        str(not_a_bundle): "no bundle.json",
        str(partial): TARGETS[1].name,
    }
    for folder, reason in cases.items():
        assert main(["demo", "--bundle", folder, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rcdm demo: error:") and "\n" not in err and reason in err, err
    (not_a_bundle / "bundle.json").write_text("{not json")
    with pytest.raises(RCDMError, match="bundle index"):
        read_bundle(not_a_bundle)
    # Options of the smoke-scale demo do not mix with a bundle.
    assert main(["demo", "--bundle", str(bundle), "--smoke-scale"]) == 2
    assert main(["demo", "--bundle", str(bundle), "--steps", "3"]) == 2
    assert not (tmp_path / "o").exists()
