"""rcdm.pack.rcdms: the pack's RCDM runs (their records, the CPU profile, the time budget)."""

from __future__ import annotations

import json
from pathlib import Path

from rcdm.cli import main
from rcdm.pack.rcdms import run_progress, trained_steps

from .conftest import TARGET


def _supervised_cpu_argv(runs: Path, few_images: Path, root: Path, steps: int) -> list[str]:
    """`rcdm recipe rcdm --profile cpu` for a tiny supervised RCDM (tests only) in ROOT, a copy of the fixture's
    runs folder holding its supervised encoder."""
    import shutil

    shutil.copytree(runs / "supervised", root / "supervised")
    argv = ["recipe", "rcdm", "--profile", "cpu", "--runs", str(root), "--data", str(few_images)]
    argv += ["--only", "rcdm-cifar10-supervised", "--preset", "tiny", "--batch-size", "4"]
    return [*argv, "--steps", str(steps), "--no-progress"]


def test_rcdm_recipe_records_its_run(runs: Path) -> None:
    rec = json.loads((runs / TARGET / "recipe.json").read_text())
    assert rec["steps"] == 2 and rec["images_seen"] == 8 and rec["smoke"] is True
    assert rec["cpu_time_s"] > 0 and rec["cpu_time_from_step"] == 0
    assert rec["target"]["feature"] == "projector" and rec["device"].startswith("cpu")


def test_cpu_profile_trains_a_standardized_model_and_keeps_its_checkpoints(
    runs: Path, few_images: Path, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    argv = _supervised_cpu_argv(runs, few_images, root, steps=4)
    assert main([*argv, "--save-every", "1"]) == 0
    run = root / "rcdm-cifar10-supervised"
    rec = json.loads((run / "recipe.json").read_text())["recipe"]
    assert rec["standardize"] is True and rec["lr"] == 5e-4 and rec["batch_size"] == 4  # profile, then flags
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["standardize_representation"] is True
    assert rec["cond_drop"] == 0.1 and config["null_representation"] is True  # its samples can be guided
    # the recipe A/B's lead: v-prediction under Min-SNR-gamma weighting
    assert rec["prediction"] == "v_prediction" and config["prediction_type"] == "v_prediction"
    assert rec["loss_weighting"] == "min-snr" and rec["snr_gamma"] == 5.0
    assert len(list((run / "checkpoints").glob("step-*"))) == 4  # the CPU profile keeps the curve
    # Resumed after a session whose CPU time is unknown (here: recorded before CPU time was): the record says
    # which steps its CPU time covers.
    record = json.loads((run / "recipe.json").read_text())
    old = {k: v for k, v in record.items() if not k.startswith("cpu_")}
    (run / "recipe.json").write_text(json.dumps(old))
    longer = [("5" if i == argv.index("--steps") + 1 else x) for i, x in enumerate(argv)]
    assert main([*longer, "--save-every", "1", "--resume"]) == 0
    rec = json.loads((run / "recipe.json").read_text())
    assert rec["steps"] == 5 and rec["cpu_time_from_step"] == 4 and rec["cpu_time_s"] > 0
    # every checkpoint of the longer run is kept too (its curve): the profile keeps all, however long the run
    settings = json.loads((run / "run.json").read_text())
    assert settings["steps"] == 5 and settings["keep_checkpoints"] == 5 // 1 + 1
    assert len(list((run / "checkpoints").glob("step-*"))) == 5
    assert trained_steps(run) == 5  # what cpu_pack.sh compares with the steps it asks for


def test_recipe_knobs_given_as_flags_win_over_the_profile(
    runs: Path, few_images: Path, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    argv = _supervised_cpu_argv(runs, few_images, root, steps=1)
    argv += ["--prediction", "epsilon", "--loss-weighting", "min-snr", "--snr-gamma", "3", "--dropout", "0.1"]
    assert main([*argv, "--timestep-sampling", "logit-normal", "--warmup-steps", "5"]) == 0
    run = json.loads((root / "rcdm-cifar10-supervised" / "run.json").read_text())  # what rcdm.train was given
    assert (run["prediction"], run["loss_weighting"], run["snr_gamma"]) == ("epsilon", "min-snr", 3.0)
    assert (run["timestep_sampling"], run["warmup_steps"], run["dropout"]) == ("logit-normal", 5, 0.1)


def test_init_from_reaches_training(runs: Path, few_images: Path, tmp_path: Path) -> None:
    """`rcdm recipe rcdm --init-from MODEL` starts the run from MODEL's UNet, as `rcdm train --init-from` does."""
    root = tmp_path / "runs"
    start = (
        runs / TARGET / "model"
    )  # the fixture's tiny projector RCDM: another encoder, the same UNet layout
    assert main([*_supervised_cpu_argv(runs, few_images, root, steps=1), "--init-from", str(start)]) == 0
    run = root / "rcdm-cifar10-supervised"
    assert json.loads((run / "run.json").read_text())["init_from"] == str(start)
    record = json.loads((run / "model" / "config.json").read_text())["initialised_from"]
    assert (
        record["model"] == str(start.resolve())
        and record["copied"] > 0
        and "rep_proj.weight" in record["fresh"]
    )


def test_compile_reaches_training_and_may_change_on_resume(
    runs: Path, few_images: Path, tmp_path: Path, monkeypatch
) -> None:
    """--compile is how the same steps run, not what they compute: a resume may turn it on or off. torch.compile itself is replaced by a recorder (compiling takes minutes)."""
    import torch

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(type(self).__name__))
    root = tmp_path / "runs"
    argv = _supervised_cpu_argv(runs, few_images, root, steps=1)
    assert main(argv) == 0 and compiled == []
    run_json = root / "rcdm-cifar10-supervised" / "run.json"
    assert json.loads(run_json.read_text())["compile"] is False
    longer = [("2" if i == argv.index("--steps") + 1 else x) for i, x in enumerate(argv)]
    assert main([*longer, "--compile", "--resume"]) == 0
    assert compiled == ["UNet2DModel"] and json.loads(run_json.read_text())["compile"] is True
    rec = json.loads((root / "rcdm-cifar10-supervised" / "recipe.json").read_text())
    assert rec["steps"] == 2 and rec["recipe"]["compile"] is True


def test_a_time_budget_that_is_not_positive_is_refused(runs: Path, cifar_root: Path, capsys) -> None:
    argv = ["recipe", "rcdm", "--runs", str(runs), "--data", str(cifar_root), "--time-budget-s", "-5"]
    assert main([*argv, "--only", TARGET]) == 2
    assert "--time-budget-s -5.0 must be a positive number of seconds" in capsys.readouterr().err


def test_a_time_budget_stops_at_the_first_checkpoint_past_it_and_says_so(
    runs: Path, few_images: Path, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    argv = _supervised_cpu_argv(runs, few_images, root, steps=6)
    assert main([*argv, "--save-every", "3", "--time-budget-s", "1e-9"]) == 0
    rec = json.loads((root / "rcdm-cifar10-supervised" / "recipe.json").read_text())
    assert rec["stopped_early"] is True and rec["steps"] == 3  # its first checkpoint, not step 1 or 6
    assert (
        trained_steps(root / "rcdm-cifar10-supervised") == 0
    )  # no final model: not done (cpu_pack.sh resumes it)


def _logged(run_dir: Path, planned: int, sessions: list[list[tuple[int, float, float]]]) -> None:
    """A run folder whose metrics.jsonl holds these sessions of (step, elapsed_s, cpu_s) rows, as a resumed
    `rcdm train` leaves it (each session's clock starts again)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"steps": planned, "batch_size": 64}))
    rows = [dict(step=s, loss=0.1, elapsed_s=e, cpu_s=c) for seg in sessions for s, e, c in seg]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_status_sums_cpu_over_sessions_and_projects_each_run_at_its_recent_rate(
    tmp_path: Path, capsys
) -> None:
    """`rcdm recipe status`: CPU spent is summed over a run's sessions (a resume restarts the clock), the steps
    left are priced at the recent rate (the newest sessions back to 500 steps), a run not started at the others' mean rate, and the whole is set
    against the budget."""
    runs = tmp_path / "runs"
    # backbone: 30 CPU s to step 30, resumed at 20: 20 more to step 40 at 1 CPU s per step; 60 steps left
    _logged(
        runs / "rcdm-cifar10-vicreg-backbone",
        100,
        [[(10, 1, 10), (20, 2, 20), (30, 3, 30)], [(25, 1, 5), (40, 2, 20)]],
    )
    _logged(runs / "rcdm-cifar10-supervised", 50, [[(10, 1, 30), (20, 2, 60)]])  # 3 CPU s per step, 30 left
    rows = {
        r.target: r
        for r in (
            run_progress(runs / name, name, 11000)
            for name in (
                "rcdm-cifar10-vicreg-backbone",
                "rcdm-cifar10-supervised",
                "rcdm-cifar10-vicreg-projector",
            )
        )
    }
    backbone, supervised, projector = (
        rows[n]
        for n in ("rcdm-cifar10-vicreg-backbone", "rcdm-cifar10-supervised", "rcdm-cifar10-vicreg-projector")
    )
    assert (backbone.step, backbone.planned_steps, backbone.cpu_s, backbone.cpu_s_per_step) == (
        40,
        100,
        50.0,
        1.0,
    )
    assert backbone.projected_cpu_s(None) == 50.0 + 60 * 1.0
    assert (supervised.cpu_s, supervised.cpu_s_per_step, supervised.projected_cpu_s(None)) == (
        60.0,
        3.0,
        150.0,
    )
    assert not projector.started and projector.projected_cpu_s(2.0) == 11000 * 2.0
    # the CLI: the projector planned at 10 steps, priced at the mean rate 2: 110 + 150 + 20 = 280 CPU s
    assert (
        main(
            [
                "recipe",
                "status",
                "--runs",
                str(runs),
                "--steps",
                "rcdm-cifar10-vicreg-projector=10",
                "--budget-cpu-h",
                "0.1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| rcdm-cifar10-vicreg-backbone | 40 | 100 | 0.01 | 1.00 | 0.03 |" in out
    assert "| rcdm-cifar10-vicreg-projector | 0 | 10 | 0.00 | not started | 0.01 |" in out
    assert "spent 0.03 CPU h; at the planned steps 0.08 CPU h" in out and "0.02 CPU h under it" in out
    # 360 CPU s of budget, 260 planned for the started runs: 100 left, 50 steps at the mean rate 2
    assert "about 50 steps each" in out and 'RCDM_TARGET_STEPS="rcdm-cifar10-vicreg-projector=50")' in out
    # a session just resumed (one row) does not make the rate unknown: the sessions before it give it
    _logged(runs / "rcdm-cifar10-supervised", 50, [[(10, 1, 30), (20, 2, 60)], [(21, 1, 2)]])
    assert run_progress(runs / "rcdm-cifar10-supervised", "x", 1).cpu_s_per_step == 3.0
    _logged(runs / "rcdm-cifar10-supervised", 50, [[(10, 1, 30), (20, 2, 60)]])
    assert main(["recipe", "status", "--runs", str(runs), "--budget-cpu-h", "0.05"]) == 0  # projector at 8000
    out = capsys.readouterr().out
    assert "over it" in out and "use the whole budget: none left for rcdm-cifar10-vicreg-projector" in out


def test_status_refuses_bad_input_in_one_line(tmp_path: Path, capsys) -> None:
    for argv, message in (
        (["--runs", str(tmp_path / "nowhere")], "is not a folder"),
        (["--runs", str(tmp_path), "--steps", "backbone=5"], "no such RCDM; the targets are"),
        (["--runs", str(tmp_path), "--steps", "x"], "give a step N or TARGET=N"),
        (["--runs", str(tmp_path), "--budget-cpu-h", "-1"], "must be a positive number"),
    ):
        assert main(["recipe", "status", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
