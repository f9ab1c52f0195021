"""rcdm.devices.check_device: a --device that is no device, or not on this machine, is one line before any work."""

from __future__ import annotations

import pytest
import torch

from rcdm.cli import main
from rcdm.devices import RunClock, check_device
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
