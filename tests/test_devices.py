"""rcdm.devices.check_device: a --device that is no device, or not on this machine, is one line before any work;
git_commit names the source's commit in a checkout and in a `git archive` of it."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from rcdm import devices
from rcdm.cli import main
from rcdm.devices import RunClock, archived_commit, check_device
from rcdm.errors import RCDMError


def test_devices_this_machine_has_pass():
    assert check_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(("text", "says"), [("tpu", "is not a device"), ("cuda:x", "is not a device")])
def test_a_name_that_is_no_device_is_refused(text, says):
    with pytest.raises(RCDMError, match=f"--device '{text}' {says}: use cpu, cuda, cuda:N or mps"):
        check_device(text)


def test_a_gpu_this_machine_lacks_is_refused_by_name():
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(RCDMError, match=r"this machine has (no CUDA GPU|[0-9]+ CUDA GPU)"):
        check_device(f"cuda:{n}" if n else "cuda")


def test_every_command_checks_its_device_before_any_work(tmp_path, capsys):
    # the model does not exist: the device is checked first, so its line is the one printed
    args = ["--model", str(tmp_path / "none"), "--images", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(["sample", *args, "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rcdm sample: error: --device 'tpu' is not a device: use cpu, cuda, cuda:N or mps"


def test_run_clock_adds_this_process_s_time_to_what_the_checkpoint_recorded() -> None:
    clock = RunClock(wall_s=100.0, cpu_s=40.0)  # a run resumed from a checkpoint that recorded these
    wall, cpu = clock.wall_s(), clock.cpu_s()
    assert 100.0 <= wall < 101.0 and 40.0 <= cpu < 41.0
    x = torch.randn(256, 256)
    for _ in range(200):  # some CPU work: both clocks move on from there
        x = torch.tanh(x @ x)
    assert clock.wall_s() > wall and clock.cpu_s() > cpu
    fresh = RunClock()
    assert 0.0 <= fresh.wall_s() < 1.0 and 0.0 <= fresh.cpu_s() < 1.0


ROOT = Path(__file__).resolve().parents[1]


def test_an_archive_of_the_source_names_the_commit_it_was_made_from(tmp_path, monkeypatch):
    # The CPU pack trains from `git archive` of the source (no .git): the archive's file holds the commit, which a
    # checkout's does not; outside a checkout git_commit falls back to it.
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if rev.returncode:
        pytest.skip("not a git checkout: nothing to archive")
    head = rev.stdout.strip()
    archive = subprocess.run(
        ["git", "archive", "HEAD", "src/rcdm/assets/archive-commit.txt"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp_path, filter="data")
    archived = tmp_path / "src" / "rcdm" / "assets" / "archive-commit.txt"
    assert archived_commit(archived) == f"{head}+archive"
    assert archived_commit(devices.ARCHIVE_COMMIT) is None  # the checkout's placeholder
    assert archived_commit(tmp_path / "missing.txt") is None
    monkeypatch.setattr(devices, "ARCHIVE_COMMIT", archived)

    def no_git(*args, **kwargs):
        raise subprocess.CalledProcessError(128, "git")

    monkeypatch.setattr(devices.subprocess, "run", no_git)
    assert devices.git_commit() == f"{head}+archive"


def test_run_clock_never_reads_less_than_the_checkpoint_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    # os.times() ticks in hundredths: at 24.04 s of process CPU time, (40 + 24.04) - 24.04 rounds to just under 40,
    # which once failed CI's reading of a resumed run's clock
    monkeypatch.setattr(devices, "cpu_seconds", lambda: 24.04)
    assert RunClock(wall_s=100.0, cpu_s=40.0).cpu_s() == 40.0
