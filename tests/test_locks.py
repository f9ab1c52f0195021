"""rcdm.locks: one writer per run or output folder (the holder named, a killed holder's lock taken over, a full
disk in one line)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rcdm import files
from rcdm.errors import DiskFullError, RCDMError
from rcdm.locks import LOCK_NAME, run_lock
from test_files import _no_space


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken_over(
    tmp_path, caplog
):
    run = tmp_path / "run"
    run.mkdir()
    proc = _holder(run)
    try:
        with pytest.raises(RCDMError) as e, run_lock(run, "rcdm train"):
            pass
        msg = str(e.value)
        assert f"pid {proc.pid} on {socket.gethostname()} since 20" in msg and "test holder" in msg
        assert "\n" not in msg and "another --out" in msg
    finally:
        proc.send_signal(signal.SIGKILL)  # dies holding it: the kernel drops the flock, the file stays
        proc.wait()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == proc.pid
    with caplog.at_level(logging.WARNING, logger="rcdm.locks"), run_lock(run, "rcdm train"):
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"pid {proc.pid}" in caplog.text and "which is gone" in caplog.text
    assert not (run / LOCK_NAME).exists()  # released: nothing left behind


def test_the_lock_is_one_holder_at_a_time_even_in_one_process(tmp_path):
    with (
        run_lock(tmp_path, "first"),
        pytest.raises(RCDMError, match=rf"in use by first \(pid {os.getpid()} "),
        run_lock(tmp_path, "second"),
    ):
        pass
    with run_lock(tmp_path, "third"):  # free again once released
        pass


def test_a_disk_too_full_for_the_lock_file_is_one_line_and_leaves_no_empty_lock(tmp_path, monkeypatch):
    from rcdm import locks

    monkeypatch.setattr(locks.os, "write", _no_space)  # a 0-byte disk: the first write is the lock's
    with (
        pytest.raises(DiskFullError, match="is full: nothing was written"),
        files.output_folder(tmp_path / "out", marker="done.txt"),
    ):
        pass
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def _holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


HOLD = "import sys, time; from rcdm.locks import run_lock\nwith run_lock(sys.argv[1], 'test holder'):\n"
HOLD += "    print('held', flush=True); time.sleep(120)\n"
