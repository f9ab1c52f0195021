"""rcdm.app.models: the models the app offers (folders, run folders, the opt-in for code-running encoders, and
recorded guidance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rcdm.app import build_app, discover_models
from rcdm.errors import RCDMError

pytest.importorskip("gradio", reason="the app tests need gradio: pip install -e '.[dev]' installs it")


def test_models_offered(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rcdm.app.models as app_models

    monkeypatch.setattr(app_models, "_bundled_pack", lambda: None)  # whatever this machine has installed
    monkeypatch.setattr(app_models, "_cached_official", lambda: [])
    with pytest.raises(RCDMError, match="no models to offer"):
        discover_models()
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "not-a-run").mkdir()
    with pytest.raises(RCDMError, match="no model in"):
        discover_models((), [str(runs)])
    (runs / "a").symlink_to(tiny_model)
    assert [c.label for c in discover_models((), [str(runs)])] == ["a"]
    assert [c.label for c in discover_models([str(tiny_model)], trust_remote_code=True)] == ["tiny"]


def test_a_model_whose_encoder_runs_code_needs_the_opt_in(tiny_model: Path) -> None:
    # The tiny model's config names a module: encoder; without --trust-remote-code loading it is refused.
    import rcdm.app as app_module

    cache = app_module.ModelCache(discover_models([str(tiny_model)]), "cpu")
    with pytest.raises(RCDMError, match="--trust-remote-code"):
        cache.get("tiny")


def test_the_opt_in_names_the_models_whose_code_it_lets_run(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "mine").symlink_to(tiny_model)
    with caplog.at_level("INFO", logger="rcdm.app.models"):
        discover_models((), [str(runs)], trust_remote_code=True)
    assert (
        "the encoders of 1 model(s) run code when first used: mine (module:encoders_for_tests:" in caplog.text
    )


def test_a_model_folder_s_recorded_guidance_is_the_page_default(tmp_path: Path) -> None:

    import torch

    from rcdm.app import models as app_models
    from rcdm.model import RCDM

    torch.manual_seed(0)
    m = RCDM.from_preset(
        "tiny", representation_dim=12, sample_size=16, null_representation=True, encoder="pixels:2"
    )
    m.save_pretrained(tmp_path / "guided")
    config = json.loads((tmp_path / "guided" / "config.json").read_text())
    config["sampling"] = {"sampler": "dpm++", "steps": 20, "guidance": 3.5}
    (tmp_path / "guided" / "config.json").write_text(json.dumps(config))
    (choice,) = app_models.discover_models([str(tmp_path / "guided")])
    assert choice.guidance == 3.5
    page = build_app([choice], "cpu")
    sliders = [c["props"] for c in page.config["components"] if c.get("type") == "slider"]
    assert [(p["value"], p["visible"]) for p in sliders if p.get("label", "").startswith("guidance")] == [
        (3.5, True)  # shown on first load, before the page's load event has loaded the model
    ]


def test_the_pack_page_offers_its_adapter_beside_its_rcdms(
    extended_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pack's adapter is a model of the page (one image prior, another representation), with the supervised
    encoder's classes for the Attack view; it loads over the bundled base."""
    import rcdm.app.models as app_models
    from rcdm.bundle import ROLES

    monkeypatch.setattr(app_models, "_bundled_pack", lambda: (extended_bundle, ROLES, 5.0))
    monkeypatch.setattr(app_models, "_cached_official", lambda: [])
    choices = {c.label: c for c in discover_models()}
    label = "cifar10-supervised-r8w1 through the VICReg backbone RCDM"
    assert list(choices) == [*(lab for _, lab in ROLES.values()), label]
    adapter = choices[label]
    assert adapter.supervised and len(adapter.classes) == 10 and adapter.guidance == 5.0
    model, encoder = adapter.load(torch.device("cpu"))
    assert model.config.adapter == "linear" and encoder.spec.endswith("cifar10-supervised-r8w1")
