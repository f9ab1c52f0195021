"""scripts/cpu_pack.sh: `all` runs every stage in order, and a stage whose job fails (one run side by side
included) stops it. Python is replaced by a stand-in that logs each rcdm command, so nothing trains."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Stands in for the venv's python: `-c` snippets (a CIFAR root, a packed model folder) print a folder; `-m rcdm.cli
# ARGS` logs ARGS, writes what `recipe ssl` would leave (the encoder's card) and fails when ARGS hold FAKE_FAIL.
FAKE_PY = """#!/usr/bin/env bash
[ "$1" = -c ] && { echo "$FAKE_DIR"; exit 0; }
shift 2
echo "$*" >> "$FAKE_LOG"
case " $* " in *" $FAKE_FAIL "*) exit 3 ;; esac
if [ "$1 $2" = "recipe ssl" ]; then
    while [ $# -gt 0 ]; do [ "$1" = --out ] && mkdir -p "$2/encoder" && touch "$2/encoder/card.json"; shift; done
fi
exit 0
"""


def run_all(tmp_path: Path, fail: str = "-") -> tuple[subprocess.CompletedProcess, list[str]]:
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
    }
    done = subprocess.run(
        ["bash", "scripts/cpu_pack.sh", "all"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    return done, log.read_text().splitlines() if log.is_file() else []


def kinds(lines: list[str]) -> list[str]:
    return [" ".join(line.split()[:2]) for line in lines]


def test_all_runs_every_stage_in_order_then_the_findings_unguided(tmp_path: Path) -> None:
    done, lines = run_all(tmp_path)
    assert done.returncode == 0, done.stderr
    assert kinds(lines) == [
        *["recipe ssl"] * 2,
        *["recipe rcdm"] * 3,
        *["recipe guidance"] * 3,
        "recipe evaluate",
        "recipe samplers",
        "recipe pack",
        "adapt --model",
        "recipe add",
        *["recipe findings"] * 6,
    ]
    rcdms = [line for line in lines if line.startswith("recipe rcdm ")]
    assert "--only rcdm-cifar10-vicreg-projector" in rcdms[2]  # after the side-by-side pair
    assert all("--scores" in line for line in lines if line.startswith("recipe guidance"))
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
    done, lines = run_all(tmp_path, fail)
    assert done.returncode == 1
    assert f"the {stage} stage failed" in done.stderr and "again to resume" in done.stderr
    assert kinds(lines)[-1] == last and len(kinds(lines)) == 2 + 2 * (stage == "rcdms")
