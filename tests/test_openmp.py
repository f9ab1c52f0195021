"""rcdm.openmp: OpenMP threads sleep rather than spin when the CPU is busy at start-up, and only then."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rcdm.openmp import others_running, wait_policy


def test_the_runnable_count_is_read_from_loadavg_without_the_reader() -> None:
    assert others_running("1.71 1.83 1.77 4/112 2785\n") == 3
    assert others_running("0.00 0.01 0.05 1/80 17") == 0


@pytest.mark.parametrize(
    ("environ", "others", "cpus", "expected"),
    [
        ({}, 0, 2, None),  # idle: spinning is the faster wait
        ({}, 1, 2, "PASSIVE"),  # one busy task: one of two threads shares its core
        ({}, 2, 2, "PASSIVE"),
        ({"OMP_NUM_THREADS": "4"}, 3, 8, None),  # 4 threads + 3 tasks fit 8 CPUs
        ({"OMP_NUM_THREADS": "4"}, 5, 8, "PASSIVE"),
        ({"OMP_NUM_THREADS": "1"}, 5, 2, None),  # one thread: nobody waits at a barrier
        ({"OMP_NUM_THREADS": "4,2"}, 5, 2, None),  # OpenMP's nested form: the user's business
        ({"OMP_WAIT_POLICY": "ACTIVE"}, 5, 2, None),  # the user's choice stands
    ],
)
def test_passive_only_when_torch_threads_and_other_tasks_outnumber_the_cpus(
    environ: dict, others: int, cpus: int, expected: str | None
) -> None:
    assert wait_policy(environ, others, cpus) == expected


# Prints OMP_WAIT_POLICY as it is when `import rcdm` first asks for torch (which reads it once, as it loads), and
# stops there: the rest of the import is not what is tested.
_POLICY_AT_TORCH = """
import os, sys
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print(os.environ.get("OMP_WAIT_POLICY"), flush=True)
            os._exit(0)
sys.meta_path.insert(0, Spy())
import rcdm
"""


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="reads /proc/loadavg (Linux)")
@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_import_rcdm_lets_threads_sleep_beside_busy_processes_unless_the_user_chose(
    given: str | None, expected: str
) -> None:
    """With two busy processes running, `import rcdm` (and so every command) sets OMP_WAIT_POLICY=PASSIVE before
    torch loads OpenMP; a policy the user set is kept. (Beside two busy jobs on a 2-core Xeon, 32 samples took
    23 and 29 s against 84 s spinning: docs/speed.md.)"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if given:
        env["OMP_WAIT_POLICY"] = given
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        done = subprocess.run(
            [sys.executable, "-c", _POLICY_AT_TORCH], env=env, capture_output=True, text=True
        )
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [expected]
