"""`rcdm demo`: the pack demo on a tiny smoke bundle (page, figures, numbers, smoke label), bundle errors, and
the smoke-scale fallback that says the CIFAR-10 pack is not bundled."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from rcdm.bundle import read_bundle
from rcdm.cli import main
from rcdm.demo import PACK_DEMO_PRESETS, PackDemoSettings, run_demo, run_pack_demo
from rcdm.demo.page import models_html, smoke_notice
from rcdm.diffusion import SamplingConfig
from rcdm.errors import RCDMError
from rcdm.pack.rcdms import TARGETS, RCDMRecipe, train_rcdms
from rcdm.pack.ssl import SSLConfig, train_encoder
from rcdm.pack.write import pack

TINY = dict(
    epochs=1, batch_size=10, limit=20, depth=8, width=1, projector=(32, 32), num_workers=0, warmup_epochs=0
)
FIGURES = ("samples", "invariance", "interpolation", "adversarial")
SECTIONS = (
    "What this is",
    "Samples: backbone vs projector",
    "Invariance: backbone vs projector",
    "Interpolation",
    "Adversarial: SSL vs supervised",
    "The paper&#x27;s findings, as this pack shows them",
    "Settings and timings",
)


@pytest.fixture(scope="module")
def bundle(cifar_root: Path, few_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke bundle of tiny models: two tiny encoders, the three RCDM targets (tiny preset, 2 steps), 4 inputs."""
    root = tmp_path_factory.mktemp("demo-runs")
    train_encoder(SSLConfig(data=str(cifar_root), **TINY), root / "ssl", progress=False)
    train_encoder(
        SSLConfig(data=str(cifar_root), objective="supervised", **TINY), root / "supervised", progress=False
    )
    recipe = RCDMRecipe(
        data=str(few_images), preset="tiny", steps=2, batch_size=4, save_every=2, num_workers=0, cond_drop=0.1
    )
    train_rcdms(recipe, root, progress=False)
    out = root / "bundle"
    pack(root, out, allow_smoke=True, demo_images=sorted(few_images.glob("*.jpg"))[:4])
    return out


def _sources(page: str) -> set[str]:
    return set(re.findall(r"<img src=['\"]([^'\"]+)['\"]", page))


def test_pack_demo_cli_writes_page_figures_and_numbers(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--bundle", str(bundle), "--out", str(out), "--preset", "quick", "--no-progress"]
    assert main(args) == 0
    page = (out / "index.html").read_text()
    # Every figure the page shows is on disk beside it, and every figure on disk is shown.
    shown = _sources(page)
    assert shown == {f"{name}.png" for name in FIGURES}
    assert {p.name for p in out.glob("*.png")} == shown
    for name in shown:
        assert Image.open(out / name).size[0] > 100
    for heading in SECTIONS:
        assert f"<h2>{heading}</h2>" in page
    # A smoke bundle is labelled as such, prominently (the boxed notice right under the title).
    assert "<title>SMOKE TEST" in page
    notice = page.split("<div class='notice'>", 1)[1].split("</div>", 1)[0]
    assert "NOT trained models" in notice and "docs/recipes.md" in notice

    s = PACK_DEMO_PRESETS["quick"]
    res = json.loads((out / "results.json").read_text())
    assert res["smoke"] is True and res["smoke_reasons"]
    assert len(res["images"]) == 4 and res["settings"]["sampling"]["steps"] == s.sampling.steps
    # Backbone vs projector samples, judged by the conditioning encoder.
    for role in ("backbone", "projector"):
        f = res["samples"][role]["faithfulness"]
        assert 0.0 <= f["top1"] <= 1.0 and -1.0 <= f["cosine"] <= 1.0
        assert 1.0 <= f["mean_rank"] <= 4.0 and f["chance_rank"] == 2.5
        assert f["samples_per_reference"] == s.num_samples
        assert 0.0 <= res["samples"][role]["mean_pixel_std"] <= 0.5
    # Invariance: the same augmentations for both, shifts >= 0, retention in [0, 1] (None when undefined).
    inv = res["invariance"]
    assert inv["backbone"]["label"] == "VICReg backbone" and inv["projector"]["label"] == "VICReg projector"
    for role in ("backbone", "projector"):
        rows = inv[role]["augmentations"]
        assert [r["augmentation"] for r in rows] == list(s.augmentations)
        for r in rows:
            assert r["shift"] >= 0.0
            assert r["retention"] is None or 0.0 <= r["retention"] <= 1.0
    # The projector's representation is another vector than the backbone's.
    assert inv["backbone"]["augmentations"][0]["shift"] != inv["projector"]["augmentations"][0]["shift"]
    # Interpolation: t from 0 to 1, one frame change per step.
    itp = res["interpolation"]
    assert itp["t"][0] == 0.0 and itp["t"][-1] == 1.0 and len(itp["t"]) == s.interpolation_steps
    assert len(itp["methods"]["linear"]["frame_change"]) == s.interpolation_steps - 1
    # Adversarial: SSL vs supervised under the same attack; only the supervised encoder has a classifier.
    adv = res["adversarial"]
    assert adv["ssl"]["label"] == "VICReg backbone" and adv["supervised"]["label"] == "supervised backbone"
    for key in ("ssl", "supervised"):
        a = adv[key]
        assert a["eps"] == pytest.approx(s.eps) and -1.0 <= a["cosine_to_clean"] <= 1.0 + 1e-6
        assert a["shift"] > 0.0
        for v in a["per_image"].values():
            assert v["linf"] <= s.eps + 1e-6
    assert adv["ssl"]["label_flip_rate"] is None
    assert 0.0 <= adv["supervised"]["label_flip_rate"] <= 1.0
    assert len(adv["classes"]) == 10
    assert all(v["clean_label"] is not None for v in adv["supervised"]["per_image"].values())
    assert res["models"]["projector"]["feature"] == "projector" and res["models"]["supervised"]["smoke"]
    assert not any(isinstance(v, float) and math.isnan(v) for v in res["seconds"].values())
    # The paper's findings, each judged from the numbers above.
    f = {row["finding"]: row for row in res["findings"]}
    assert sorted(f) == [1, 2, 3, 4]
    assert f[3]["agrees"] == (
        "yes" if adv["ssl"]["relative_shift"] < adv["supervised"]["relative_shift"] else "no"
    )
    assert f"supervised {adv['supervised']['relative_shift']:.3f}" in f[3]["measured"]
    ret = {role: {r["augmentation"]: r["retention"] for r in inv[role]["augmentations"]} for role in inv}
    both = [a for a in s.augmentations if ret["backbone"][a] is not None and ret["projector"][a] is not None]
    lower = sum(ret["projector"][a] < ret["backbone"][a] for a in both)
    expected = "undefined" if not both else {len(both): "yes", 0: "no"}.get(lower, "partly")
    assert f[2]["agrees"] == expected and f"for {lower} of {len(both)} augmentations" in f[2]["measured"]
    assert html.escape(f[1]["measured"]) in page


def test_only_a_smoke_bundle_gets_the_warning(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    assert read_bundle(copy).smoke and "NOT trained models" in (smoke_notice(read_bundle(copy)) or "")
    index = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps({**index, "smoke": False, "smoke_reasons": []}))
    real = read_bundle(copy)
    assert not real.smoke and smoke_notice(real) is None
    assert [p.name for p in real.inputs] == sorted(p.name for p in (copy / "demo-inputs").iterdir())
    # Without demo inputs the package's ten images are used.
    shutil.rmtree(copy / "demo-inputs")
    assert len(read_bundle(copy).inputs) == 10
    with pytest.raises(RCDMError, match="deterministic"):
        run_pack_demo(
            copy,
            tmp_path / "x",
            settings=PackDemoSettings(sampling=SamplingConfig(sampler="ddpm")),
            progress=False,
        )


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


def test_demo_uses_the_installed_pack_else_the_smoke_scale_model(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rcdm.commands.demo as command
    import rcdm.demo as demo

    calls: list[tuple] = []
    monkeypatch.setattr(command, "bundled_pack", lambda: bundle)
    monkeypatch.setattr(command, "run_pack_demo", lambda *a, **k: calls.append(a) or _Done())
    assert main(["demo", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert calls == [(bundle, str(tmp_path / "a"))]

    # No pack installed: the smoke-scale page says so and how to make one.
    monkeypatch.setattr(demo, "bundled_pack", lambda: None)
    result = run_demo(tmp_path / "smoke", steps=2, num_samples=1, sample_steps=2, progress=False)
    page = result.index.read_text()
    notice = page.split("<div class='notice'>", 1)[1].split("</div>", 1)[0]
    assert "not bundled" in notice and "docs/recipes.md" in notice and "rcdm demo --bundle" in notice
    assert _sources(page) == {"overview.png"} and (tmp_path / "smoke" / "overview.png").is_file()
    assert json.loads((tmp_path / "smoke" / "results.json").read_text())["cifar10_pack_bundled"] is False


class _Done:
    smoke = False
    seconds: ClassVar[dict[str, float]] = {"total": 0.0}
    index = Path("index.html")


def test_the_model_table_says_when_a_model_stopped_before_its_planned_steps() -> None:
    m = {
        "label": "VICReg backbone",
        "target": "rcdm-cifar10-vicreg-backbone",
        "encoder": "cifar10-vicreg",
        "encoder_objective": "vicreg",
        "encoder_epochs": 60,
        "encoder_knn_accuracy": 0.7,
        "preset": "cifar32-small",
        "steps": 3000,
        "planned_steps": 8000,
        "images_seen": 192000,
        "wall_time_s": 10.0,
        "device": "cpu",
        "cpu_time_s": 5.0,
        "smoke": False,
        "metrics": {},
    }
    assert "3000 steps of 8000 planned, 192000 images" in models_html({"backbone": m})
    assert "planned" not in models_html({"backbone": {**m, "steps": 8000}})
    assert "planned" not in models_html({"backbone": {**m, "planned_steps": None}})  # a card from before


def test_card_metrics_come_after_the_pictures_rounded() -> None:
    from rcdm.demo.page import metrics_section

    models = {"backbone": {"label": "VICReg backbone", "metrics": {"rank-1 (chance 0.0010)": 0.01899999938905239,
                                                                  "mean rank": 199.97300720214844, "n": 1000}}}  # fmt: skip
    section = metrics_section(models)
    assert "0.019" in section.body and "200" in section.body and "1000" in section.body
    assert "0.0189999" not in section.body and "199.97" not in section.body
    assert "chance 0.001" in section.body
    assert metrics_section({"backbone": {"label": "x", "metrics": {}}}) is None
    assert "Metrics recorded" not in models_html(models | {"backbone": {**models["backbone"], **_TABLE_ROW}})


_TABLE_ROW = {
    "target": "t", "encoder": "e", "encoder_objective": "vicreg", "encoder_epochs": 60, "encoder_knn_accuracy": 0.7,
    "preset": "p", "steps": 1, "planned_steps": 1, "images_seen": 64, "wall_time_s": 1.0, "device": "cpu",
    "cpu_time_s": 1.0, "smoke": False,
}  # fmt: skip
