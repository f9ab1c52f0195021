"""rcdm.demo.page: the pack demo page's model table and metrics section."""

from __future__ import annotations

from rcdm.demo.page import models_html


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


def test_the_samples_caption_says_where_the_pages_one_guidance_came_from() -> None:
    from types import SimpleNamespace

    from rcdm.demo.page import _guidance_source
    from rcdm.diffusion import SamplingConfig

    why = "the VICReg backbone RCDM's measured default (rcdm recipe guidance --record)"
    bundle = SimpleNamespace(index={"guidance": 3.0, "guidance_chosen_by": why}, guidance=3.0)
    ctx = SimpleNamespace(bundle=bundle, settings=SimpleNamespace(sampling=SamplingConfig(guidance=3.0)))
    assert _guidance_source(ctx) == f" (guidance: {why})"
    ctx.settings.sampling = SamplingConfig(guidance=1.0)  # `rcdm demo --guidance 1`: not the bundle's reason
    assert _guidance_source(ctx) == ""
    ctx.bundle.index = {"guidance": 3.0}  # a bundle packed before the reason was recorded
    ctx.settings.sampling = SamplingConfig(guidance=3.0)
    assert _guidance_source(ctx) == ""
