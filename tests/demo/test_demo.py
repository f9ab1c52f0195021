"""rcdm.demo (run_pack_demo, run_demo): the pack demo on a tiny smoke bundle (page, figures, numbers, smoke
label), and the smoke-scale fallback that says the CIFAR-10 pack is not bundled."""

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
from rcdm.demo.page import smoke_notice
from rcdm.diffusion import SamplingConfig
from rcdm.errors import RCDMError

FIGURES = ("samples", "invariance", "interpolation", "adversarial", "inversion")
SECTIONS = (
    "What this is",
    "Samples: backbone vs projector",
    "Invariance: backbone vs projector",
    "Interpolation",
    "Adversarial: SSL vs supervised",
    "Invert: what the noise keeps",
    "The paper&#x27;s findings, as this pack shows them",
    "Settings and timings",
)


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
    for name in shown:  # each figure with its numbers beside it: the figure, then its tables, in one pair
        pair = page.split(f"<div class='pair'><img src='{name}'", 1)[1].split("</div></div>", 1)[0]
        assert "<table>" in pair
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
    # Invert: a reconstruction PSNR per image under each RCDM, and their mean
    for role in ("backbone", "projector"):
        psnr = res["inversion"][role]["psnr"]
        assert len(psnr) == s.inversion_images and all(p > 0 for p in psnr)
        assert res["inversion"][role]["mean_psnr"] == pytest.approx(sum(psnr) / len(psnr), rel=1e-6)
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


def test_a_bundle_with_a_prior_and_an_adapter_gets_dream_and_one_base_sections(
    extended_bundle: Path, tmp_path: Path
) -> None:
    """The Dream section: images drawn from representations the bundle's prior samples, with the prior's measured
    numbers beside them and the rank-1 of the dreams among themselves."""
    s = PACK_DEMO_PRESETS["quick"]
    res = run_pack_demo(extended_bundle, tmp_path / "demo", settings=s, progress=False)
    page = res.index.read_text()
    assert "<h2>Dream: images from sampled representations</h2>" in page
    pair = page.split("<div class='pair'><img src='dream.png'", 1)[1].split("</div></div>", 1)[0]
    assert "Fréchet (a test number)" in pair and "rank-1 among the 4 dreams" in pair
    width, height = Image.open(tmp_path / "demo" / "dream.png").size
    assert width > 4 * 32 and height > 32
    dream = res.numbers["dream"]
    assert dream["prior"] == "prior-cifar10-vicreg-r8w1-backbone" and dream["images"] == s.dream_images
    assert 0.0 <= dream["rank1"] <= 1.0 and dream["measured"] == {"Fréchet (a test number)": 1.5}
    assert "dream" in res.seconds
    # One base, two encoders: the supervised representation through the VICReg backbone RCDM beside both RCDMs.
    assert "<h2>One base, two encoders</h2>" in page
    pair = page.split("<div class='pair'><img src='one-base.png'", 1)[1].split("</div></div>", 1)[0]
    assert "supervised through the VICReg backbone" in pair
    assert (
        "class agreement (a test number)"
        in page.split("<h2>One base, two encoders</h2>", 1)[1].split("<h2>")[0]
    )
    one = res.numbers["one_base"]
    assert set(one) >= {"vicreg", "supervised", "adapted", "adapter", "map_r2_heldout"}
    assert one["adapter"] == "rcdm-cifar10-supervised-r8w1-via-cifar10-vicreg-backbone"
    for key in ("vicreg", "supervised", "adapted"):
        assert 0.0 <= one[key]["faithfulness"]["top1"] <= 1.0
    assert one["measured"] == {"class agreement (a test number)": 0.5}


def test_the_demo_draws_each_sample_once_and_its_numbers_do_not_change(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampled_rows: list[int]
) -> None:
    """A clean input's samples recur in the samples, invariance and adversarial sections: drawn once, the page's
    numbers are those of a demo that draws them in every section."""
    import contextlib

    import rcdm.demo as demo

    drawn = sampled_rows
    s = PACK_DEMO_PRESETS["quick"]
    once = run_pack_demo(bundle, tmp_path / "once", settings=s, progress=False)
    rows_once, drawn[:] = sum(drawn), []
    monkeypatch.setattr(demo, "reuse_samples", contextlib.nullcontext)
    every = run_pack_demo(bundle, tmp_path / "every", settings=s, progress=False)
    # the samples section's clean rows, again in invariance (both RCDMs) and adversarial (the backbone RCDM's)
    again = 2 * s.invariance_images * s.invariance_samples + s.max_images * s.adversarial_samples
    assert rows_once <= sum(drawn) - again
    for key in ("samples", "invariance", "adversarial"):
        a, b = _leaves(once.numbers[key]), _leaves(every.numbers[key])
        assert a.keys() == b.keys()
        for path, value in a.items():
            # the same noise and representation, drawn in batches of another make-up: equal up to the last
            # bits of the UNet's arithmetic (CI saw retention move by 2e-6); another draw would move it by 1e-2
            if isinstance(value, float) and isinstance(b[path], float):
                assert value == pytest.approx(b[path], rel=1e-3, abs=1e-3, nan_ok=True), path
            else:
                assert value == b[path], path


def _leaves(tree: object, path: str = "") -> dict[str, object]:
    """Each number or string of a nested dict / list, keyed by its path."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{path}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _leaves(sub, f"{path}[{i}]").items()}
    return {path: tree}


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
