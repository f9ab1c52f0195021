"""rcdm.metrics.generate (`rcdm evaluate generate`): samples drawn once, deterministic, resumable, split between processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rcdm.cli import main
from rcdm.metrics.generate import sample_path


def _pixels(path: Path) -> torch.Tensor:
    from torchvision.io import read_image

    return read_image(str(path)).int()


def test_cli_generate_is_resumable_and_deterministic(
    tiny_run: Path, few_images: Path, tmp_path: Path, capsys
):
    out = tmp_path / "gen"
    argv = ["evaluate", "generate", "--model", str(tiny_run), "--images", str(few_images), "--steps", "2"]
    argv += ["--batch-size", "2", "--precision", "fp32", "--out", str(out)]  # fp32: batch-size invariant
    assert main([*argv, "--total-samples", "5"]) == 0
    assert "5 samples drawn, 0 already there" in capsys.readouterr().out
    first = _pixels(sample_path(out, 4))
    sample_path(out, 4).unlink()
    assert main([*argv, "--total-samples", "7"]) == 0  # redraws the batch [4, 6) and draws 6
    assert "3 samples drawn, 4 already there" in capsys.readouterr().out
    # Same noise and representation, now in a batch of 2 instead of 1: equal up to float rounding of the kernels.
    again = _pixels(sample_path(out, 4))
    assert (again - first).abs().max() <= 2 and (again - first).abs().float().mean() < 0.05
    assert main([*argv, "--total-samples", "7", "--seed", "1"]) == 2
    assert "seed" in capsys.readouterr().err
    # --num-samples counts per reference image, as in every other command: 1 x 8 images.
    assert main([*argv[:-1], str(tmp_path / "per-image"), "--num-samples", "1"]) == 0
    assert "8 samples drawn, 0 already there" in capsys.readouterr().out
    assert main([*argv, "--num-samples", "1", "--total-samples", "8"]) == 2
    assert "--total-samples" in capsys.readouterr().err


def test_generate_splits_between_torchrun_processes_on_cpu(tiny_run: Path, few_images: Path, tmp_path: Path):
    """Two CPU processes (torchrun, gloo) share the batches and draw exactly the images one process draws."""
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("checks the CPU (gloo) process group; on a GPU machine processes take GPUs")
    torchrun = Path(sys.executable).with_name("torchrun")
    args = ["evaluate", "generate", "--model", str(tiny_run), "--images", str(few_images), "--steps", "2"]
    args += ["--batch-size", "2", "--total-samples", "6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both runs on one thread each: the same float kernels
    cli = [sys.executable, "-m", "rcdm.cli", *args]
    one = subprocess.run(
        [*cli, "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=300
    )
    assert one.returncode == 0, one.stderr[-2000:]
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from rcdm.devices import process_state\n"
        "s = process_state()\n"
        "with s.split_between_processes(list(range(6))) as mine:\n"
        "    print(f'rank {s.process_index} of {s.num_processes}: {mine}', flush=True)\n"
    )
    run = [str(torchrun), "--standalone", "--nproc-per-node", "2"]
    shares = subprocess.run([*run, str(probe)], capture_output=True, text=True, env=env, timeout=300)
    assert "rank 0 of 2: [0, 1, 2]" in shares.stdout and "rank 1 of 2: [3, 4, 5]" in shares.stdout
    two = subprocess.run(
        [*run, "-m", "rcdm.cli", *args, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    for g in range(6):
        assert torch.equal(
            _pixels(sample_path(tmp_path / "one", g)), _pixels(sample_path(tmp_path / "two", g))
        )
