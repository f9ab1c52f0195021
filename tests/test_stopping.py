"""rcdm.stopping and training's clean stop: a SIGINT or SIGTERM during training writes a checkpoint at the end of
the step and stops, resumably; a second one, or one before the loop, acts as it did before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rcdm.errors import TrainingInterrupted
from rcdm.runs import Checkpoints
from rcdm.stopping import StopSignals
from rcdm.train import train
from training_for_tests import assert_same, tiny_argv, tiny_config, weights

ROOT = Path(__file__).resolve().parents[1]


def test_sigterm_checkpoints_the_step_under_way_and_the_resume_is_exact(
    few_images: Path, tmp_path: Path
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    reference = tmp_path / "ref"
    train(tiny_config(few_images), reference, progress=False)

    def kill_after_4(step: int, loss: float) -> None:  # a scheduler's notice, once step 4 is done
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "run"
    # step 5, under way when it came, ends the run with a checkpoint between the counted ones (every 2 steps)
    with pytest.raises(TrainingInterrupted, match="SIGTERM: stopped at the checkpoint of step 5 of 6") as e:
        train(tiny_config(few_images), run, progress=False, on_step=kill_after_4)
    assert e.value.signum == signal.SIGTERM
    assert Checkpoints(run).latest().name == "step-00000005" and not (run / "model").exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the process's own handling is back
    train(tiny_config(few_images), run, resume=True, progress=False)
    assert_same(weights(run / "model"), weights(reference / "model"))


def _sigint_as_at_a_terminal() -> None:
    """The child's SIGINT as a terminal's foreground job has it. A test runner started in the background (`cmd &`,
    nohup) ignores SIGINT and its children inherit that; rcdm rightly keeps an ignored signal ignored
    (test_an_ignored_signal_stays_ignored), so without this the Ctrl-C tests would fail there."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_cli_at_a_checkpoint_with_the_signal_s_exit_code(
    few_images: Path, tmp_path: Path
) -> None:
    """A real SIGINT to `rcdm train` (Ctrl-C): one line naming the checkpoint, exit 130, and the step it names is
    on disk."""
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "rcdm.cli",
        *tiny_argv(few_images),
        "--steps",
        "100000",
        "--save-every",
        "100000",
    ]
    args += ["--log-every", "1", "--no-progress", "--out", str(run)]
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_as_at_a_terminal,
    )
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # the loop has run a step
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-2000:]
    line = next(x for x in err.splitlines() if x.startswith("rcdm train: SIGINT: stopped at the checkpoint"))
    step = int(line.split("step ")[1].split()[0])
    assert 0 < step < 100000 and Checkpoints(run).latest().name == f"step-{step:08d}"
    assert "Traceback" not in err


def test_a_second_signal_or_one_outside_the_loop_acts_as_before() -> None:
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal (see above)
    try:
        _second_signal_or_one_outside_the_loop()
    finally:
        signal.signal(signal.SIGINT, before)


def _second_signal_or_one_outside_the_loop() -> None:
    with StopSignals() as stop:
        with pytest.raises(KeyboardInterrupt):  # not armed (set-up): Ctrl-C interrupts at once
            os.kill(os.getpid(), signal.SIGINT)
        stop.armed = True
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # again: at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_signal_stays_ignored() -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            stop.armed = True
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.received is None and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_sigterm_to_torchrun_stops_both_processes_at_one_checkpoint(few_images: Path, tmp_path: Path) -> None:
    """torchrun passes a SIGTERM on to its 2 CPU processes; they stop together, at the main process's log step,
    and the checkpoint is written once (a rank stopping alone would leave the other waiting in a collective)."""
    if torch.cuda.is_available():
        pytest.skip("checks the CPU (gloo) process group; on a GPU machine processes take GPUs")
    run = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    args = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "rcdm.cli", *tiny_argv(few_images)]
    args += [
        "--steps",
        "100000",
        "--save-every",
        "100000",
        "--log-every",
        "2",
        "--no-progress",
        "--out",
        str(run),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    lines = [x for x in err.splitlines() if "rcdm train: SIGTERM: stopped at the checkpoint of step" in x]
    assert len(lines) == 1, err[-2000:]  # said once, by the main process
    line = lines[0]
    step = int(line.split("step ")[1].split()[0])
    assert step % 2 == 0 and Checkpoints(run).latest().name == f"step-{step:08d}", err[-2000:]
    assert not (run / "model").exists()
