"""scripts/cpu_pack.sh: the stages that rewrite $WORK/metrics refuse to run beside each other."""

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
