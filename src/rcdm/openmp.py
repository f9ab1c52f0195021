"""OpenMP's wait policy, chosen by how busy the CPU is when rcdm starts.

Torch's OpenMP threads that wait at the end of a parallel region spin by default. On a CPU that other processes
keep busy, a spinning thread takes the core that the thread it waits for needs, and two torch threads run
several-fold slower: beside two busy one-thread jobs on a 2-core Xeon, `rcdm sample` of 32 samples took 75.2 s
spinning and 17.5 s with OMP_WAIT_POLICY=PASSIVE, and `rcdm demo` 853 s against 82 s. On an idle CPU sleeping
threads cost instead (a tiny model's 2-thread training about 30% slower), so PASSIVE is chosen only when torch's
threads would share the CPUs with other runnable tasks at start-up (docs/speed.md). OpenMP reads the policy once,
when torch loads it, so this has to run before the first `import torch`; no library offers it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

LOADAVG = Path("/proc/loadavg")


def others_running(loadavg: str) -> int:
    """Runnable tasks other than the reader, from /proc/loadavg's fourth field ("running/total"), which counts
    the tasks runnable at that instant (the reading process included), unlike the averages that lag a minute."""
    return max(0, int(loadavg.split()[3].split("/")[0]) - 1)


def wait_policy(environ: Mapping[str, str], others: int, cpus: int) -> str | None:
    """PASSIVE when torch's threads (OMP_NUM_THREADS, else one per CPU) and the `others` runnable tasks outnumber
    the CPUs; None where OpenMP's default stays: a policy the user set, one thread (no one waits), a free CPU."""
    if "OMP_WAIT_POLICY" in environ:
        return None
    try:
        threads = int(environ.get("OMP_NUM_THREADS") or cpus)
    except ValueError:  # OpenMP's own list form ("4,2"): leave it to the user
        return None
    if threads <= 1:
        return None
    return "PASSIVE" if others + threads > cpus else None


def choose_wait_policy() -> str | None:
    """Set OMP_WAIT_POLICY for this process by `wait_policy`, if torch is not loaded yet; returns what it set."""
    if "torch" in sys.modules:
        return None
    try:
        others = others_running(LOADAVG.read_text())
    except (OSError, ValueError, IndexError):  # not Linux, or an unexpected format: OpenMP's default
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    policy = wait_policy(os.environ, others, cpus)
    if policy:
        os.environ["OMP_WAIT_POLICY"] = policy
    return policy
