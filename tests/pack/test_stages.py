"""rcdm.pack.stages (`rcdm recipe evaluate | samplers | findings | eval-images`): which models each stage scores,
where the scores land, resuming, the metrics lock, and the findings on the shipped pack."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import rcdm.pack.stages as stages
from rcdm.bundle import bundled_pack
from rcdm.diffusion import SamplingConfig
from rcdm.errors import RCDMError
from rcdm.locks import output_lock
from rcdm.pack.gates import gate_metrics

from .test_evaluation import BASE

SUPERVISED, BACKBONE, PROJECTOR = (
    "rcdm-cifar10-supervised",
    "rcdm-cifar10-vicreg-backbone",
    "rcdm-cifar10-vicreg-projector",
)
# the scorer's record of a 4-image evaluation (rank-1 0.25, agreement 0.5, 2 s), one sample each
SCORE = replace(
    BASE,
    num_images=4,
    class_agreement=0.5,
    rank1=0.25,
    mean_rank=2.0,
    frechet=3.0,
    own_rank1=0.5,
    diversity=None,
    pixel_spread=None,
    num_samples=1,
    wall_s=2.0,
    cpu_s=2.0,
)


def _run(root: Path, name: str, steps: list[int], final: bool, batch: int = 64) -> None:
    run = root / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"batch_size": batch, "steps": max(steps)}))
    for s in steps:
        ck = run / "checkpoints" / f"step-{s:08d}"
        (ck / "ema").mkdir(parents=True)
        (ck / "ema" / "config.json").write_text("{}")
        (ck / "state.json").write_text(json.dumps({"step": s}))
    if final:
        (run / "model").mkdir()
        (run / "model" / "config.json").write_text("{}")


@pytest.fixture
def scored(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """Stand-ins for loading and scoring: the stages' choice of models is under test, not the sampling."""
    calls: list[tuple[str, float]] = []

    def fake_score(model, encoder, judge, images, sampling, **kw):
        calls.append((model, sampling.guidance))
        return replace(SCORE, guidance=sampling.guidance, num_images=len(images))

    monkeypatch.setattr(stages, "load_model", lambda folder, device=None: str(folder))
    monkeypatch.setattr(stages, "encoder_for", lambda model: type("E", (), {"to": lambda self, d: self})())
    monkeypatch.setattr(stages, "score_model", fake_score)
    return calls


def test_evaluate_scores_the_packed_model_and_the_curve_once(tmp_path: Path, scored) -> None:
    runs, metrics, images = tmp_path / "runs", tmp_path / "metrics", [Path(f"i{k}.jpg") for k in range(4)]
    _run(runs, SUPERVISED, [1000, 2000, 3000], final=True)
    _run(runs, BACKBONE, [1000, 2000], final=False, batch=128)  # not finished: its newest checkpoint
    _run(runs, PROJECTOR, [1000, 2000], final=True)
    # the supervised model records its default sampling (`recipe guidance --record`): scored there too
    (runs / SUPERVISED / "model" / "config.json").write_text(json.dumps({"sampling": {"guidance": 3.0}}))
    plan = stages.Evaluation(guidance=(1.0, 5.0), curve_guidance=(5.0,), curve_every=2000)
    stages.evaluate_runs(runs, metrics, images, judge=None, plan=plan, steps={PROJECTOR: 1000})
    got = {t.name: sorted(p.name for p in t.iterdir()) for t in metrics.iterdir()}
    assert got == {
        SUPERVISED: ["final", "final-g3", "final-g5", "step-00002000-g5"],
        BACKBONE: ["step-00002000", "step-00002000-g5"],  # the newest checkpoint, also a curve point
        PROJECTOR: ["step-00001000", "step-00001000-g5", "step-00002000-g5"],  # the step asked for
    }
    record = json.loads((metrics / BACKBONE / "step-00002000" / "score.json").read_text())
    assert record["images_seen"] == 2000 * 128 and record["model"].endswith("step-00002000/ema")
    assert record["rank1"] == 0.25 and record["guidance"] == 1.0
    n = len(scored)
    stages.evaluate_runs(runs, metrics, images, judge=None, plan=plan, steps={PROJECTOR: 1000})
    assert len(scored) == n  # everything already scored for the same models: nothing sampled again
    m = gate_metrics(metrics, "4", None, {PROJECTOR: 1000})
    assert m[BACKBONE][
        "curve (images seen: rank-1 / class agreement; dpm++ 20, guidance 5; ResNet-56 judge)"
    ] == ("256000: 0.250 / 0.500")
    # a finished run's final model (step 3,000 of 64) closes its curves: the guidance-5 one, and alone at 1 and 3
    sup = m[SUPERVISED]
    assert sup["curve (images seen: rank-1 / class agreement; dpm++ 20, guidance 5; ResNet-56 judge)"] == (
        "128000: 0.250 / 0.500; 192000: 0.250 / 0.500"
    )
    assert (
        sup["curve (images seen: rank-1 / class agreement; dpm++ 20; ResNet-56 judge)"]
        == "192000: 0.250 / 0.500"
    )
    # trained on after it was scored (resumed with more --steps): its final model is scored again
    (runs / SUPERVISED / "run.json").write_text(json.dumps({"batch_size": 64, "steps": 4000}))
    stages.evaluate_runs(runs, metrics, images, judge=None, plan=plan, steps={PROJECTOR: 1000})
    assert len(scored) == n + 3  # final at guidance 1, 3 and 5
    assert json.loads((metrics / SUPERVISED / "final" / "score.json").read_text())["step"] == 4000
    n = len(scored)
    with pytest.raises(RCDMError, match=r"no complete checkpoint at step 1500: choose one of \[1000, 2000\]"):
        stages.evaluate_runs(runs, metrics, images, judge=None, plan=plan, steps={PROJECTOR: 1500})
    shutil.rmtree(runs / SUPERVISED / "model")
    shutil.rmtree(runs / SUPERVISED / "checkpoints")  # nothing trained: skipped, not an error
    stages.evaluate_runs(runs, metrics, images, judge=None, plan=plan, steps={PROJECTOR: 1000})
    assert len(scored) == n


def test_a_model_folder_that_is_not_a_training_run_is_named_not_crashed_on(tmp_path: Path, scored) -> None:
    """--runs pointed at a folder of models (a bundle copied beside a run, a model alone): one line naming the
    folder and what --runs takes, before anything is sampled."""
    runs = tmp_path / "runs"
    (runs / BACKBONE / "model").mkdir(parents=True)
    (runs / BACKBONE / "model" / "config.json").write_text("{}")
    with pytest.raises(
        RCDMError, match=rf"{BACKBONE}' holds no run.json, so it is not a training run: --runs"
    ):
        stages.evaluate_runs(
            runs, tmp_path / "metrics", [Path("a.jpg")], judge=None, plan=stages.Evaluation()
        )
    assert scored == []


def test_samplers_score_the_newest_model_of_the_runs_asked_for(tmp_path: Path, scored) -> None:
    runs, metrics = tmp_path / "runs", tmp_path / "metrics"
    _run(runs, SUPERVISED, [1000], final=True)
    _run(runs, BACKBONE, [1000, 1500], final=False)
    settings = [stages.parse_setting("fast:1"), stages.parse_setting("paired:5")]
    stages.score_samplers(runs, metrics, [Path("a.jpg")], None, settings, only=[BACKBONE])
    assert [m for m, _ in scored] == [str(runs / BACKBONE / "checkpoints" / "step-00001500" / "ema")] * 2
    assert sorted(p.name for p in (metrics / BACKBONE).iterdir()) == ["sampler-fast", "sampler-paired-g5"]
    assert not (metrics / SUPERVISED).exists()
    table = gate_metrics(metrics, "1")[BACKBONE][
        "sampler table (setting: rank-1 / class agreement / s per image, CPU)"
    ]
    assert table.endswith("(step-00001500)") and "/ 2.00" in table  # 2 s for 1 image
    only_sup = dict(only=[SUPERVISED])
    stages.score_samplers(runs, metrics, [Path("a.jpg")], None, settings[:1], **only_sup)
    stages.score_samplers(runs, metrics, [Path("a.jpg")], None, settings[:1], **only_sup)
    assert len(scored) == 3  # the final model once
    (runs / SUPERVISED / "run.json").write_text(json.dumps({"batch_size": 64, "steps": 2000}))  # trained on
    stages.score_samplers(runs, metrics, [Path("a.jpg")], None, settings[:1], **only_sup)
    assert len(scored) == 4


def test_a_second_metrics_stage_is_refused_on_an_rcdm_one_scores_and_not_on_another(
    tmp_path: Path, scored
) -> None:
    runs, metrics = tmp_path / "runs", tmp_path / "metrics"
    _run(runs, SUPERVISED, [1000], final=True)
    _run(runs, BACKBONE, [1000], final=True)
    # another evaluate (or samplers) stage, scoring the supervised RCDM
    with output_lock(metrics / SUPERVISED, flag="--metrics"):
        with pytest.raises(RCDMError, match="is being written by"):
            stages.evaluate_runs(runs, metrics, [Path("a.jpg")], None, only=[SUPERVISED])
        with pytest.raises(RCDMError, match="is being written by"):
            stages.score_samplers(runs, metrics, [Path("a.jpg")], None, [("fast", 1.0)], only=[SUPERVISED])
        assert scored == []
        # the VICReg backbone RCDM's scores go on beside it (scripts/cpu_pack.sh's evaluate stage runs two jobs)
        stages.evaluate_runs(runs, metrics, [Path("a.jpg")], None, only=[BACKBONE])
    assert scored and all(str(runs / BACKBONE) in m for m, _ in scored)
    assert not (metrics / SUPERVISED).exists()


def test_findings_on_the_shipped_pack_write_results_and_tables_and_keep_them(
    cifar_root: Path, tmp_path: Path, monkeypatch
) -> None:
    pack = bundled_pack()
    if pack is None:
        pytest.skip("no pack is installed in src/rcdm/assets/models")
    images = sorted((cifar_root / "test" / "cat").glob("*.jpg"))[:2]
    out = tmp_path / "findings"
    cheap = SamplingConfig(sampler="dpm++", steps=2, guidance=1.0)
    for part in ("invariance", "adversarial"):  # one part per call, as the launcher runs them side by side
        assert stages.findings(pack, images, out, sampling=cheap, num_samples=1, parts=[part]) is None
    table = stages.findings(pack, images, out, parts=["table"])
    text = table.read_text()
    assert "Invariance, 2 CIFAR-10 test images" in text and "| vflip |" in text
    rows = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 2 |", "| 3 |"))]
    assert len(rows) == 3 and all(r.rstrip(" |").rsplit("| ", 1)[1] in {"yes", "partly", "no"} for r in rows)
    results = json.loads((out / "adversarial" / "results.json").read_text())["results"]
    assert [r["label"] for r in results] == ["VICReg backbone", "supervised backbone"]
    assert (out / "invariance" / "figure.png").is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(stages, "invariance", refuse)
    monkeypatch.setattr(stages, "adversarial", refuse)
    for part in ("invariance", "adversarial"):  # run again (a later part was cut short): both kept
        assert stages.findings(pack, images, out, sampling=cheap, num_samples=1, parts=[part]) is None
    assert json.loads((out / "adversarial" / "results.json").read_text())["results"] == results
    with pytest.raises(AssertionError, match="measured again"):  # other sampling
        stages.findings(
            pack, images, out, sampling=cheap.replace(steps=3), num_samples=1, parts=["invariance"]
        )
    with pytest.raises(AssertionError, match="measured again"):  # other images
        stages.findings(pack, images[:1], out, sampling=cheap, num_samples=1, parts=["adversarial"])
    monkeypatch.setattr(stages, "FINDING_ATTACK", {**stages.FINDING_ATTACK, "eps": 8 / 255})
    with pytest.raises(AssertionError, match="measured again"):  # another attack
        stages.findings(pack, images, out, sampling=cheap, num_samples=1, parts=["adversarial"])
    monkeypatch.setattr(stages, "__version__", "0.0.0+other")
    with pytest.raises(AssertionError, match="measured again"):  # another rcdm release
        stages.findings(pack, images, out, sampling=cheap, num_samples=1, parts=["invariance"])


def test_findings_sample_every_model_with_the_bundles_one_guidance(tmp_path: Path, monkeypatch) -> None:
    """Guidance reads as invariance: the models a finding compares share the bundle's weight, not their own."""
    pack = bundled_pack()
    if pack is None:
        pytest.skip("no pack is installed in src/rcdm/assets/models")
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    index = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps({**index, "guidance": 2.0}))  # the models' own: 5

    class Stop(Exception):
        pass

    seen = []

    def fake_invariance(model, encoder, images, **kw):
        seen.append(kw["sampling"].guidance)
        raise Stop

    monkeypatch.setattr(stages, "invariance", fake_invariance)
    with pytest.raises(Stop):
        stages.findings(copy, [], tmp_path / "out", parts=["invariance"])
    assert seen == [2.0]
