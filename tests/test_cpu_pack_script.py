"""scripts/cpu_pack.sh: `all` runs every stage in order, and a stage whose job fails (one run side by side
included) stops it. Python is replaced by a stand-in that logs each rcdm command, so nothing trains."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Stands in for the venv's python: `-c` snippets (a CIFAR root, a packed model folder) print a folder, but the one
# asking a run's trained steps (`trained_steps RUN`) prints RUN/fake-trained-steps, else 0 (and fails when that
# file says "fail"); `-m rcdm.cli
# ARGS` logs ARGS (and, in FAKE_LOG.events, its start with OMP_NUM_THREADS, its end, or its stop by SIGTERM), takes
# S seconds the first time ARGS hold WORD for each WORD:S in FAKE_SLOW, writes what `recipe ssl` would leave (the
# encoder's card) and fails when ARGS hold FAKE_FAIL. The PYTHONPATH it ran under goes to FAKE_LOG.pythonpath.
FAKE_PY = """#!/usr/bin/env bash
if [ "$1" = -c ]; then
    case "$2" in
    *trained_steps*) steps=$(cat "$3/fake-trained-steps" 2>/dev/null || echo 0)
        [ "$steps" = fail ] && { echo "Traceback: cannot read $3" >&2; exit 1; }
        echo "$steps" ;;
    *) echo "$FAKE_DIR" ;;
    esac
    exit 0
fi
shift 2
echo "$PYTHONPATH" > "$FAKE_LOG.pythonpath"
ARGS="$*"
echo "$ARGS" >> "$FAKE_LOG"
echo "start $OMP_NUM_THREADS $ARGS" >> "$FAKE_LOG.events"
trap 'echo "stopped $ARGS" >> "$FAKE_LOG.events"; exit 143' TERM
for pair in $FAKE_SLOW; do
    case " $ARGS " in *" ${pair%%:*} "*)
        [ "$(grep -c -F -- " ${pair%%:*} " "$FAKE_LOG.events")" = 1 ] && { sleep "${pair#*:}" & wait $!; } ;;
    esac
done
echo "end $ARGS" >> "$FAKE_LOG.events"
case " $* " in *" $FAKE_FAIL "*) exit 3 ;; esac
if [ "$1 $2" = "recipe ssl" ]; then
    while [ $# -gt 0 ]; do [ "$1" = --out ] && mkdir -p "$2/encoder" && touch "$2/encoder/card.json"; shift; done
fi
exit 0
"""


def run_stage(
    tmp_path: Path, fail: str = "-", slow: str = "-", stage: str = "all", **env_vars: str
) -> tuple[subprocess.CompletedProcess, list[str]]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    log = tmp_path / "commands.log"
    env = {
        **os.environ,
        "PY": str(fake),
        "WORK": str(tmp_path / "work"),
        "FAKE_DIR": str(tmp_path / "somewhere"),
        "FAKE_LOG": str(log),
        "FAKE_FAIL": fail,
        "FAKE_SLOW": slow,
        **env_vars,
    }
    done = subprocess.run(
        ["bash", "scripts/cpu_pack.sh", stage], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    return done, log.read_text().splitlines() if log.is_file() else []


def kinds(lines: list[str]) -> list[str]:
    return [" ".join(line.split()[:2]) for line in lines]


def test_all_runs_every_stage_in_order_then_the_findings_unguided(tmp_path: Path) -> None:
    # the supervised job ends last, after the projector's: it is resumed on both cores (the test below); its wait is
    # cut short by that stop, so a long one costs nothing and leaves a loaded machine time to end the projector first
    done, lines = run_stage(tmp_path, slow="rcdm-cifar10-supervised:30")
    assert done.returncode == 0, done.stderr
    assert kinds(lines) == [
        *["recipe rcdm"] * 4,
        *["recipe guidance"] * 3,
        "recipe pack",  # packed once before the measuring stages (the weights can land), again after them
        "adapt --model",
        "recipe add",
        *["recipe evaluate"] * 2,
        "recipe samplers",
        "recipe pack",
        "adapt --model",
        "recipe add",
        *["recipe findings"] * 6,
    ]
    rcdms = [line for line in lines if line.startswith("recipe rcdm ")]
    # the side-by-side pair, then the projector on the first core they free (events: the test below)
    assert sorted(line.split("--only ")[1].split()[0] for line in rcdms) == [
        "rcdm-cifar10-supervised",
        "rcdm-cifar10-supervised",
        "rcdm-cifar10-vicreg-backbone",
        "rcdm-cifar10-vicreg-projector",
    ]
    assert all("--scores" in line for line in lines if line.startswith("recipe guidance"))
    # the evaluate stage: two jobs side by side, the supervised RCDM's scores and the two VICReg RCDMs'
    evaluations = [
        line.split("--only ")[1].split(" --")[0] for line in lines if line.startswith("recipe evaluate")
    ]
    assert sorted(evaluations) == [
        "rcdm-cifar10-supervised",
        "rcdm-cifar10-vicreg-backbone rcdm-cifar10-vicreg-projector",
    ]
    findings = [line for line in lines if line.startswith("recipe findings")]
    assert [("--guidance 1" in f) for f in findings] == [False] * 3 + [True] * 3
    assert findings[2].endswith("--parts table") and findings[5].endswith("--parts table")


@pytest.mark.parametrize(
    ("fail", "stage", "last"),
    [
        ("vicreg", "encoders", "recipe ssl"),  # the job run in the background (&) fails
        ("rcdm-cifar10-vicreg-backbone", "rcdms", "recipe rcdm"),  # the one in the foreground fails
    ],
)
def test_a_failed_job_stops_all_at_its_stage(tmp_path: Path, fail: str, stage: str, last: str) -> None:
    done, lines = run_stage(tmp_path, fail, KEEP_ENCODERS="0")
    assert done.returncode == 1
    assert f"the {stage} stage failed" in done.stderr and "again to resume" in done.stderr
    if stage == "encoders":
        assert kinds(lines) == ["recipe ssl"] * 2
    else:  # the projector may have started on the core the supervised model freed; nothing after the stage ran
        assert kinds(lines)[:4] == ["recipe ssl"] * 2 + ["recipe rcdm"] * 2 and set(kinds(lines)) == {
            "recipe ssl",
            "recipe rcdm",
        }


def test_the_encoders_stage_keeps_the_shipped_encoders_unless_told_to_train(tmp_path: Path) -> None:
    # The pack keeps its encoders: by default the stage copies the bundled ones whole into the runs folder, where the
    # RCDM stage finds them finished; KEEP_ENCODERS=0 trains both with `recipe ssl` instead.
    assets = ROOT / "src" / "rcdm" / "assets" / "models"
    done, lines = run_stage(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "recipe ssl" not in kinds(lines)
    for run, shipped in (("ssl", "cifar10-vicreg-r20w1"), ("supervised", "cifar10-supervised-r20w1")):
        copied = tmp_path / "work" / "runs" / run / "encoder"
        assert sorted(f.name for f in copied.iterdir()) == sorted(
            f.name for f in (assets / shipped).iterdir()
        )
        assert (copied / "card.json").read_bytes() == (assets / shipped / "card.json").read_bytes()
        assert not (copied.parent / "encoder.part").exists()
    (tmp_path / "b").mkdir()
    done, lines = run_stage(tmp_path / "b", KEEP_ENCODERS="0")
    assert done.returncode == 0, done.stderr
    ssl = [line for line in lines if line.startswith("recipe ssl")]
    assert len(ssl) == 2 and sorted(line.split("--objective ")[1].split()[0] for line in ssl) == [
        "supervised",
        "vicreg",
    ]


def rcdm_events(tmp_path: Path) -> list[tuple[str, str, str | None]]:
    """(start, end or stopped, target, OMP_NUM_THREADS at its start) of each `recipe rcdm --only TARGET` job, in
    order."""
    events = []
    for line in (tmp_path / "commands.log.events").read_text().splitlines():
        words = line.split()
        if "recipe rcdm" in line:
            events.append(
                (words[0], words[words.index("--only") + 1], words[1] if words[0] == "start" else None)
            )
    return events


def of_job(events: list[tuple[str, str, str | None]], target: str) -> list[tuple[str, str | None]]:
    """(start, end or stopped; OMP_NUM_THREADS at a start) of TARGET's jobs, in order."""
    return [(kind, n) for kind, job, n in events if job == target]


def test_the_projector_starts_on_the_first_core_the_backbone_pair_frees(tmp_path: Path) -> None:
    # The supervised model trains on (2 s) after the VICReg backbone one ends: the projector model starts beside
    # it with one thread, rather than waiting for the pair with a core idle; the next stage waits for all three.
    done, lines = run_stage(tmp_path, slow="rcdm-cifar10-supervised:2")
    assert done.returncode == 0, done.stderr
    events = rcdm_events(tmp_path)
    order = [(kind, target) for kind, target, _ in events]
    assert order.index(("start", "rcdm-cifar10-vicreg-projector")) < order.index(
        ("end", "rcdm-cifar10-supervised")
    )
    threads = {target: n for kind, target, n in events if kind == "start"}
    assert threads["rcdm-cifar10-vicreg-projector"] == "1"  # beside the supervised job: one core, one thread
    assert kinds(lines)[5] == "recipe guidance"  # after the three RCDM jobs (and only after)


def encoders_finished(tmp_path: Path) -> None:
    """As if the encoders stage had run (each encoder folder holds its card)."""
    for enc in ("supervised", "ssl"):
        (tmp_path / "work" / "runs" / enc / "encoder").mkdir(parents=True, exist_ok=True)
        (tmp_path / "work" / "runs" / enc / "encoder" / "card.json").touch()


def trained(tmp_path: Path, target: str, steps: str) -> None:
    """As if TARGET's final model were trained to STEPS (what the fake python answers for rcdm.pack.trained_steps)."""
    run = tmp_path / "work" / "runs" / target
    run.mkdir(parents=True)
    (run / "fake-trained-steps").write_text(steps)


def test_each_rcdm_trains_to_its_steps_and_a_shorter_run_is_extended(tmp_path: Path) -> None:
    # The supervised RCDM trains on to 22,000 steps by default (RCDM_TARGET_STEPS), the two others to RCDM_STEPS:
    # a supervised model trained to 11,000 is resumed towards 22,000, a VICReg backbone one at 11,000 is done.
    encoders_finished(tmp_path)
    trained(tmp_path, "rcdm-cifar10-supervised", "11000")
    trained(tmp_path, "rcdm-cifar10-vicreg-backbone", "11000")
    (tmp_path / "work" / "runs" / "rcdm-cifar10-supervised" / "checkpoints").mkdir()
    done, lines = run_stage(tmp_path, slow="rcdm-cifar10-supervised:1")
    assert done.returncode == 0, done.stderr
    steps = {
        line.split("--only ")[1].split()[0]: line.split("--steps ")[1].split()[0]
        for line in lines
        if line.startswith("recipe rcdm ")
    }
    assert steps == {"rcdm-cifar10-supervised": "22000", "rcdm-cifar10-vicreg-projector": "11000"}
    assert "--resume" in next(line for line in lines if "--only rcdm-cifar10-supervised" in line)
    # RCDM_STEPS / RCDM_TARGET_STEPS set them
    (tmp_path / "b").mkdir()
    done, lines = run_stage(
        tmp_path / "b",
        RCDM_STEPS="300",
        RCDM_TARGET_STEPS="rcdm-cifar10-vicreg-backbone=500",
        RCDM_INIT="rcdm-cifar10-vicreg-projector=/runs/backbone/model",
    )
    assert done.returncode == 0, done.stderr
    starts = {  # RCDM_INIT: that run starts from that model, the others from random weights
        line.split("--only ")[1].split()[0]: line.split("--init-from ")[1].split()[0]
        if "--init-from" in line
        else None
        for line in lines
        if line.startswith("recipe rcdm ")
    }
    assert starts == {
        "rcdm-cifar10-supervised": None,
        "rcdm-cifar10-vicreg-backbone": None,
        "rcdm-cifar10-vicreg-projector": "/runs/backbone/model",
    }
    steps = {
        line.split("--only ")[1].split()[0]: line.split("--steps ")[1].split()[0]
        for line in lines
        if line.startswith("recipe rcdm ")
    }
    assert steps == {
        "rcdm-cifar10-supervised": "300",
        "rcdm-cifar10-vicreg-backbone": "500",
        "rcdm-cifar10-vicreg-projector": "300",
    }


def test_an_unreadable_run_fails_the_stage_without_starting_its_job(tmp_path: Path) -> None:
    # a broken Python (say, started from a removed folder) once read as "not trained": the job then started, and
    # failed only later; now the stage fails, naming the run, and that run's training never starts
    encoders_finished(tmp_path)
    trained(tmp_path, "rcdm-cifar10-vicreg-backbone", "fail")
    done, lines = run_stage(tmp_path, stage="rcdms")
    assert done.returncode != 0
    assert "cannot read how far rcdm-cifar10-vicreg-backbone is trained" in done.stderr
    assert "integer expression expected" not in done.stderr
    started = [line.split("--only ")[1].split()[0] for line in lines if line.startswith("recipe rcdm ")]
    assert "rcdm-cifar10-supervised" in started and "rcdm-cifar10-vicreg-backbone" not in started


def test_the_projector_takes_both_cores_when_it_starts_alone(tmp_path: Path) -> None:
    # Both backbone models already trained: their jobs end at once, so the projector starts alone with ALONE_THREADS
    # (2 by default).
    for name, enc, steps in (
        ("rcdm-cifar10-supervised", "supervised", "22000"),
        ("rcdm-cifar10-vicreg-backbone", "ssl", "11000"),
    ):
        trained(tmp_path, name, steps)
        (tmp_path / "work" / "runs" / enc / "encoder").mkdir(parents=True, exist_ok=True)
        (tmp_path / "work" / "runs" / enc / "encoder" / "card.json").touch()
    done, _ = run_stage(tmp_path)
    assert done.returncode == 0, done.stderr
    starts = [(target, n) for kind, target, n in rcdm_events(tmp_path) if kind == "start"]
    assert starts == [("rcdm-cifar10-vicreg-projector", "2")]  # the pair had nothing left to train


def test_the_projector_gets_both_cores_once_the_pair_has_ended(tmp_path: Path) -> None:
    # The projector started beside the supervised model with one thread and is still training when that one ends:
    # it is stopped with SIGTERM (training writes a checkpoint of the step under way) and resumed with two.
    done, _ = run_stage(tmp_path, slow="rcdm-cifar10-supervised:2 rcdm-cifar10-vicreg-projector:60")
    assert done.returncode == 0, done.stderr
    events = [(kind, target, n) for kind, target, n in rcdm_events(tmp_path)]
    projector = of_job(events, "rcdm-cifar10-vicreg-projector")
    assert projector == [("start", "1"), ("stopped", None), ("start", "2"), ("end", None)]
    order = [(kind, target) for kind, target, _ in events]
    assert order.index(("end", "rcdm-cifar10-supervised")) < order.index(
        ("stopped", "rcdm-cifar10-vicreg-projector")
    )


def test_the_rcdm_left_training_when_the_projector_ends_gets_both_cores(tmp_path: Path) -> None:
    # The projector (one thread, beside the supervised model) ends first: the supervised job is stopped with SIGTERM
    # (a checkpoint of the step under way) and resumed with two threads, rather than leaving a core idle.
    encoders_finished(tmp_path)
    done, _ = run_stage(
        tmp_path, stage="rcdms", slow="rcdm-cifar10-supervised:60 rcdm-cifar10-vicreg-projector:1"
    )
    assert done.returncode == 0, done.stderr
    events = rcdm_events(tmp_path)
    supervised = of_job(events, "rcdm-cifar10-supervised")
    assert supervised == [("start", "1"), ("stopped", None), ("start", "2"), ("end", None)]
    projector = of_job(events, "rcdm-cifar10-vicreg-projector")
    assert projector == [("start", "1"), ("end", None)]
    order = [(kind, target) for kind, target, _ in events]
    assert order.index(("end", "rcdm-cifar10-vicreg-projector")) < order.index(
        ("stopped", "rcdm-cifar10-supervised")
    )
    # ALONE_THREADS=1: nothing to widen, nothing stopped
    encoders_finished(tmp_path / "b")
    done, _ = run_stage(
        tmp_path / "b",
        stage="rcdms",
        slow="rcdm-cifar10-supervised:2 rcdm-cifar10-vicreg-projector:1",
        ALONE_THREADS="1",
    )
    assert done.returncode == 0, done.stderr
    assert [kind for kind, _, _ in rcdm_events(tmp_path / "b")].count("stopped") == 0


def test_a_projector_started_from_the_backbone_rcdm_waits_for_that_model(tmp_path: Path) -> None:
    # RCDM_INIT names the VICReg backbone RCDM's final model, not written yet, and the supervised model ends first:
    # the projector waits for the backbone job (rather than failing on a missing folder), then takes both cores.
    init = tmp_path / "work" / "runs" / "rcdm-cifar10-vicreg-backbone" / "model"
    encoders_finished(tmp_path)
    done, _ = run_stage(
        tmp_path,
        stage="rcdms",
        slow="rcdm-cifar10-vicreg-backbone:30",  # cut short: stopped to resume on both threads
        RCDM_INIT=f"rcdm-cifar10-vicreg-projector={init}",
    )
    assert done.returncode == 0, done.stderr
    events = rcdm_events(tmp_path)
    order = [(kind, target) for kind, target, _ in events]
    assert order.index(("end", "rcdm-cifar10-supervised")) < order.index(
        ("end", "rcdm-cifar10-vicreg-backbone")
    )
    assert order.index(("end", "rcdm-cifar10-vicreg-backbone")) < order.index(
        ("start", "rcdm-cifar10-vicreg-projector")
    )
    assert [
        n for kind, target, n in events if target == "rcdm-cifar10-vicreg-projector" and kind == "start"
    ] == ["2"]
    # while the projector waits, the backbone job is alone: stopped at a checkpoint and resumed with both threads
    backbone = of_job(events, "rcdm-cifar10-vicreg-backbone")
    assert backbone == [("start", "1"), ("stopped", None), ("start", "2"), ("end", None)]
    # a model that is there already (or a bundled name) does not hold it back: it starts beside the supervised job
    encoders_finished(tmp_path / "b")
    init.mkdir(parents=True)
    done, _ = run_stage(
        tmp_path / "b",
        stage="rcdms",
        slow="rcdm-cifar10-supervised:2",
        RCDM_INIT=f"rcdm-cifar10-vicreg-projector={init}",
    )
    assert done.returncode == 0, done.stderr
    order = [(kind, target) for kind, target, _ in rcdm_events(tmp_path / "b")]
    assert order.index(("start", "rcdm-cifar10-vicreg-projector")) < order.index(
        ("end", "rcdm-cifar10-supervised")
    )


def test_status_asks_recipe_status_with_the_steps_and_budget_the_pack_plans(tmp_path: Path) -> None:
    absent = str(tmp_path / "absent.tar.gz")  # the status needs no data
    done, lines = run_stage(tmp_path, stage="status", DATA=absent, BUDGET_CPU_H="30")
    assert done.returncode == 0, done.stderr
    runs = tmp_path / "work" / "runs"
    assert lines == [
        f"recipe status --runs {runs} --steps 11000 rcdm-cifar10-supervised=22000 --budget-cpu-h 30"
    ]


def test_the_stages_import_the_code_and_bundle_of_the_tree_the_script_is_in(tmp_path: Path) -> None:
    # a snapshot (git archive) borrows the work tree's venv, whose editable install points at the work tree
    done, _ = run_stage(tmp_path, stage="status", PYTHONPATH="/elsewhere")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "commands.log.pythonpath").read_text().strip() == f"{ROOT}/src:/elsewhere"


def test_the_pack_stage_gives_the_cards_the_gates_numbers_once_evaluate_has_written_them(
    tmp_path: Path,
) -> None:
    _, before = run_stage(tmp_path, stage="pack")
    (tmp_path / "work" / "metrics.json").write_text("{}")
    _, both = run_stage(tmp_path, stage="pack")
    packs = [line for line in both if line.startswith("recipe pack")]
    assert len(packs) == 2 and "--metrics" not in packs[0]
    assert f"--metrics {tmp_path / 'work' / 'metrics.json'}" in packs[1]
    assert before == both[: len(before)]
