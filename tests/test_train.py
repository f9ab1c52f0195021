from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rcdm.errors import NonFiniteLossError, RCDMError
from rcdm.model import RCDM
from rcdm.runs import latest_checkpoint
from rcdm.train import train
from training_for_tests import assert_same, weights
from training_for_tests import tiny_config as config

train_mod = importlib.import_module("rcdm.train")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference(few_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 6-step run."""
    run = tmp_path_factory.mktemp("ref")
    train(config(few_images), run, progress=False)
    return run


def test_run_folder_layout(reference: Path):
    assert (reference / "model" / "config.json").is_file()
    assert (reference / "run.json").is_file()
    ck = latest_checkpoint(reference)
    assert ck is not None and ck.name == "step-00000006"
    assert {p.name for p in ck.iterdir()} == {"model", "ema", "optimizer.pt", "state.json"}
    # keep_checkpoints=2: older ones are pruned
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    cfg = RCDM.from_pretrained(reference / "model").config
    assert cfg.encoder == "pixels:2" and cfg.representation_dim == 12 and cfg.learned_variance


def test_exact_resume_after_a_kill_and_a_kill_during_save(few_images, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"

    def kill_at_3(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt  # killed between checkpoints (last complete: step 2)

    with pytest.raises(KeyboardInterrupt):
        train(config(few_images), run, progress=False, on_step=kill_at_3)
    assert latest_checkpoint(run).name == "step-00000002"

    # Resume; killed in the middle of writing the step-4 checkpoint (model and EMA written, optimizer not).
    real_save = torch.save

    def dying_save(obj, f, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(config(few_images), run, resume=True, progress=False)
    monkeypatch.setattr(train_mod.torch, "save", real_save)
    assert list((run / "checkpoints").glob(".tmp-step-00000004-*")), (
        "the interrupted save left its temp folder"
    )
    assert latest_checkpoint(run).name == "step-00000002"

    result = train(config(few_images), run, resume=True, progress=False)
    assert result.steps == 6
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert_same(weights(run / "model"), weights(reference / "model"))  # EMA
    assert_same(weights(latest_checkpoint(run) / "model"), weights(latest_checkpoint(reference) / "model"))


def test_existing_run_needs_resume(few_images, reference):
    with pytest.raises(RCDMError, match="--resume"):
        train(config(few_images), reference, progress=False)


def test_resume_with_another_encoder_is_refused(few_images, reference, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    with pytest.raises(RCDMError, match="encoder 'pixels:2' -> 'pixels:4'"):  # run.json says otherwise
        train(config(few_images, encoder="pixels:4", steps=8), run, resume=True, progress=False)
    (run / "run.json").unlink()  # the checkpoint itself records its encoder too
    with pytest.raises(RCDMError, match="trained on 'pixels:2'"):
        train(config(few_images, encoder="pixels:4", steps=8), run, resume=True, progress=False)


def test_non_finite_loss_stops_and_keeps_the_checkpoint(few_images, tmp_path):
    cfg = config(few_images, encoder="module:encoders_for_tests:nan_after_two")
    with pytest.raises(NonFiniteLossError, match=r"nan at step 2.*step-00000002"):
        train(cfg, tmp_path / "run", progress=False)
    assert latest_checkpoint(tmp_path / "run").name == "step-00000002"


def test_unreadable_images_are_skipped(few_images, tmp_path, caplog):
    data = tmp_path / "data" / "nested" / "deeper"
    data.mkdir(parents=True)
    for p in sorted(few_images.iterdir())[:3]:
        shutil.copy(p, data / p.name)
    (data / "broken.png").write_bytes(b"not a png")
    train(config(data.parent.parent, steps=2, save_every=2), tmp_path / "run", progress=False)
    assert "broken.png" in caplog.text
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_feature_cache_matches_on_the_fly(few_images, tmp_path):
    cache = tmp_path / "feats.safetensors"
    a = train(config(few_images, steps=2, min_scale=1.0), tmp_path / "a", progress=False)
    b = train(config(few_images, steps=2, feature_cache=str(cache)), tmp_path / "b", progress=False)
    assert cache.is_file()
    assert abs(a.last_loss - b.last_loss) < 1e-4
    assert_same(weights(tmp_path / "a" / "model"), weights(tmp_path / "b" / "model"))


def test_cond_drop_trains_a_null_representation(few_images, tmp_path):
    train(config(few_images, steps=2, cond_drop=0.5), tmp_path / "run", progress=False)
    m = RCDM.from_pretrained(tmp_path / "run" / "model")
    assert m.null_rep is not None and m.null_rep.abs().sum() > 0


def test_sigkill_then_resume_from_the_cli(few_images, reference, tmp_path):
    """A real SIGKILL of `rcdm train`, then `--resume`: the result equals the uninterrupted run."""
    run = tmp_path / "run"
    args = [
        sys.executable, "-m", "rcdm.cli", "train", "--data", str(few_images), "--encoder", "pixels:2",
        "--preset", "tiny", "--image-size", "16", "--steps", "6", "--batch-size", "4", "--lr", "1e-3",
        "--ema-decay", "0.9", "--save-every", "1", "--num-workers", "0", "--no-progress", "--out", str(run),
    ]  # fmt: skip
    # The reference ran in this process: the same thread count gives the same bf16 kernels' rounding.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while latest_checkpoint(run) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(run) is not None and not (run / "model").exists()
    done = subprocess.run([*args, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same(weights(run / "model"), weights(reference / "model"))


def test_two_cpu_processes_train_the_one_process_model(few_images, tmp_path):
    """torchrun with 2 CPU processes (gloo): each takes half of every global batch, and the model is the one a
    single process trains (up to float rounding of the gradient all-reduce). Both in fp32: bf16 rounding
    depends on the batch split and would hide the noise-stream check."""
    if torch.cuda.is_available():
        pytest.skip("checks the CPU (gloo) process group; on a GPU machine processes take GPUs")
    run = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    args = [
        str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "rcdm.cli", "train",
        "--data", str(few_images), "--encoder", "pixels:2", "--preset", "tiny", "--image-size", "16",
        "--steps", "6", "--batch-size", "4", "--lr", "1e-3", "--ema-decay", "0.9", "--save-every", "2",
        "--num-workers", "0", "--no-progress", "--mixed-precision", "fp32", "--out", str(run),
    ]  # fmt: skip
    reference = tmp_path / "reference"
    train(config(few_images, mixed_precision="fp32"), reference, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "run.json").read_text())["num_processes"] == 2
    two, one = weights(run / "model"), weights(reference / "model")
    assert two.keys() == one.keys()
    # measured: 1.3e-4 (Adam magnifies the all-reduce rounding where gradients are tiny); with rank 1 drawing
    # the noise of other rows instead of its own: 1e-2
    worst = max((two[k] - one[k]).abs().max().item() for k in one)
    assert worst < 1e-3, worst
