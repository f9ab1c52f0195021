"""rcdm.app.views: what the views draw (previews of uploads, attack on the supervised twin, guidance per model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from app_for_tests import SIZE
from rcdm.app import discover_models

pytest.importorskip("gradio", reason="the app tests need gradio: pip install -e '.[dev]' installs it")


def test_a_thin_upload_is_not_enlarged_to_gigabytes() -> None:
    from rcdm.app.views import PREVIEW_MAX_SIDE, _shown

    assert _shown(Image.new("RGB", (20000, 1))).size == (20000, 1)
    small = _shown(Image.new("RGB", (32, 32)))
    assert small.size == (160, 160) and max(_shown(Image.new("RGB", (1000, 2))).size) <= max(
        1000, PREVIEW_MAX_SIDE
    )


def test_pack_models_and_the_supervised_twin(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pack's three roles are offered (backbone + projector picked by default); Attack on an SSL model with
    no classifier also attacks the supervised twin, whose labels come with class names."""
    import rcdm.app as app_module
    import rcdm.app.models as app_models
    from encoders_for_tests import mean_colour_classifier
    from rcdm.bundle import ROLES
    from rcdm.encoders import create_encoder
    from rcdm.loading import load_model

    model = load_model(tiny_model)
    ssl = create_encoder("module:encoders_for_tests:mean_colour", "backbone")
    sup = mean_colour_classifier()
    assert ssl.classifier is None and sup.classifier is not None
    loaded = {"rcdm-cifar10-supervised": (model, sup)}
    monkeypatch.setattr(app_models, "_bundled_pack", lambda: (tiny_model, ROLES, 2.5))
    monkeypatch.setattr(app_models, "_pack_classes", lambda folder, target: [f"c{k}" for k in range(10)])
    monkeypatch.setattr(app_models, "_load_bundled", lambda folder, t, d: loaded.get(t, (model, ssl)))
    monkeypatch.setattr(app_models, "_cached_official", lambda: [])
    # a model folder, not a bundle: no adapters (their offer: tests/app/test_models.py)
    monkeypatch.setattr(app_models, "_bundled_adapters", lambda folder, guidance: [])
    choices = discover_models()
    assert [c.label for c in choices] == ["VICReg backbone", "VICReg projector", "supervised backbone"]
    assert [c.supervised for c in choices] == [False, False, True]
    assert {c.guidance for c in choices} == {2.5}  # the bundle's weight, the page's default
    page = app_module.build_app(choices, "cpu")
    sliders = [c["props"] for c in page.config["components"] if c.get("type") == "slider"]
    assert [p["value"] for p in sliders if p.get("label", "").startswith("guidance")] == [2.5]
    views = app_module.Views(app_module.ModelCache(choices, "cpu"))
    image = app_module.resolve_image(None, "cat.jpg")
    r = views.attack(
        ["VICReg backbone"],
        image,
        2 / 255,
        1,
        app_module.Sampling(1, app_module.APP_SAMPLING.replace(steps=1)),
    )
    table, note = r.text.split("\n\n", 1)
    rows = table.splitlines()[2:]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == ["VICReg backbone", "supervised backbone"]
    assert "relative_shift" in note  # where the CLI's relative number is, which one image cannot give
    assert "no classifier" in rows[0] and "c" in rows[1].split(" | ")[-1] and "→" in rows[1]
    assert len(r.images) == 2 * 2 and all(im.size == (SIZE, SIZE) for im, _ in r.images)


def test_guidance_applies_only_to_models_trained_for_it(tiny_model: Path, tmp_path: Path) -> None:
    import rcdm.app as app_module
    from rcdm.model import RCDM

    cfg = dict(RCDM.load_config(tiny_model))
    guided = RCDM.from_config({**cfg, "null_representation": True})
    guided.null_rep.data.normal_()  # a null representation unlike the image's, so guidance changes samples
    guided.save_pretrained(tmp_path / "guided")
    choices = discover_models([str(tiny_model), str(tmp_path / "guided")], trust_remote_code=True)
    views = app_module.Views(app_module.ModelCache(choices, "cpu"))
    image = app_module.resolve_image(None, "cat.jpg")

    def draw(guidance: float) -> list:
        s = app_module.Sampling(1, app_module.APP_SAMPLING.replace(steps=2, guidance=guidance))
        return [im.tobytes() for im, _ in views.samples(["tiny", "guided"], image, s).images]

    plain, strong = draw(1.0), draw(3.0)
    assert plain[0] == strong[0]  # the tiny model has no null representation: guidance is not applied
    assert plain[1] != strong[1]
