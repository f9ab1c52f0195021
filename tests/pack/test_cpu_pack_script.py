"""scripts/cpu_pack.sh: the stages that rewrite $WORK/metrics refuse to run beside each other; samplers measures
$SAMPLER_TARGETS only."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cpu_pack.sh"


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock (util-linux) is not installed")
@pytest.mark.parametrize("stage", ["evaluate", "samplers"])
def test_a_second_metrics_stage_is_refused_while_one_runs(stage: str, tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / "cifar" / split).mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "WORK": str(work), "PY": sys.executable, "DATA": str(tmp_path / "cifar")}
    with open(work / ".metrics.lock", "w") as held:  # another evaluate stage, running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        out = subprocess.run(
            ["bash", str(SCRIPT), stage], env=env, capture_output=True, text=True, timeout=120
        )
    assert out.returncode == 2, out.stderr
    assert "another evaluate or samplers stage is running" in out.stderr
    assert (
        not (work / "eval-images").exists() and not (work / "sampler-images").exists()
    )  # nothing was touched


def test_samplers_measures_only_the_sampler_targets(tmp_path: Path) -> None:
    # A stand-in Python records each call: the stage's loop, not the sampling, is under test here.
    work, cifar = tmp_path / "work", tmp_path / "cifar"
    for t in ("rcdm-cifar10-supervised", "rcdm-cifar10-vicreg-backbone"):
        (work / "runs" / t / "model").mkdir(parents=True)
        (work / "runs" / t / "model" / "config.json").write_text("{}")
    (work / "sampler-images").mkdir()
    fake = tmp_path / "python"
    fake.write_text(
        f'#!/usr/bin/env bash\necho "$*" >> {tmp_path}/calls\n[ "$1" = -c ] && echo {cifar}\nexit 0\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "WORK": str(work), "PY": str(fake), "SAMPLERS": "fast:1 fast:5"}
    run = subprocess.run(
        ["bash", str(SCRIPT), "samplers"],
        env={**env, "SAMPLER_TARGETS": "rcdm-cifar10-vicreg-backbone"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    calls = [c for c in (tmp_path / "calls").read_text().splitlines() if "evaluate faithfulness" in c]
    assert len(calls) == 2 and all("runs/rcdm-cifar10-vicreg-backbone/model" in c for c in calls)
    assert sorted(p.name for p in (work / "metrics" / "rcdm-cifar10-vicreg-backbone").iterdir()) == [
        "sampler-fast",
        "sampler-fast-g5",
    ]
    assert not (work / "metrics" / "rcdm-cifar10-supervised").exists()


def test_pack_steps_sets_one_rcdm_apart_in_evaluate_and_pack(tmp_path: Path) -> None:
    # PACK_STEP for every RCDM, PACK_STEPS=TARGET=N over it: evaluate measures, and pack bundles, each at its step.
    work, cifar = tmp_path / "work", tmp_path / "cifar"
    for t in ("rcdm-cifar10-supervised", "rcdm-cifar10-vicreg-backbone"):
        (work / "runs" / t).mkdir(parents=True)
    (work / "eval-images").mkdir()
    fake = tmp_path / "python"
    fake.write_text(
        f'#!/usr/bin/env bash\necho "$*" >> {tmp_path}/calls\n[ "$1" = -c ] && echo {cifar}\nexit 0\n'
    )
    fake.chmod(0o755)
    env = {
        **os.environ,
        "WORK": str(work),
        "PY": str(fake),
        "GUIDANCE": "5",
        "CURVE_EVERY": "0",
        "PACK_STEP": "11000",
        "PACK_STEPS": "rcdm-cifar10-supervised=7000",
    }
    for stage in ("evaluate", "pack"):
        run = subprocess.run(
            ["bash", str(SCRIPT), stage], env=env, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    sampled = [c.split("--model ")[1].split()[0] for c in calls if "evaluate faithfulness" in c]
    assert sorted(sampled) == [
        f"{work}/runs/rcdm-cifar10-supervised/checkpoints/step-00007000/ema",
        f"{work}/runs/rcdm-cifar10-vicreg-backbone/checkpoints/step-00011000/ema",
    ]
    (metrics,) = [c for c in calls if "recipe metrics" in c]
    assert metrics.endswith("--eval-images 1000 --step 11000 --step rcdm-cifar10-supervised=7000")
    (pack,) = [c for c in calls if "recipe pack" in c]
    assert "--step 11000 --step rcdm-cifar10-supervised=7000 " in pack
