"""rcdm.train: run folders, exact resume, kills and full disks, and a tiny RCDM that learns to carry its
representation."""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rcdm.cli import main
from rcdm.data import list_images, load_views
from rcdm.diffusion import SamplingConfig, sample, sample_many
from rcdm.encoders import create_encoder
from rcdm.errors import NonFiniteLossError, RCDMError
from rcdm.loading import encoder_for, load_model, recorded_sampling
from rcdm.model import RCDM
from rcdm.monitor import read_metrics
from rcdm.pack.evaluation import record_model_sampling
from rcdm.runs import Checkpoints
from rcdm.train import TrainConfig, learning_rate, train
from training_for_tests import assert_same, records, tiny_argv, tiny_config, weights
from training_for_tests import tiny_config as config

# a 4-step fp32 run logging every step (the run.json and gradient-accumulation tests)
logged = functools.partial(tiny_config, steps=4, log_every=1, mixed_precision="fp32")

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
    ck = Checkpoints(reference).latest()
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
    assert Checkpoints(run).latest().name == "step-00000002"

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
    assert Checkpoints(run).latest().name == "step-00000002"

    result = train(config(few_images), run, resume=True, progress=False)
    assert result.steps == 6
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert_same(weights(run / "model"), weights(reference / "model"))  # EMA
    assert_same(
        weights(Checkpoints(run).latest() / "model"), weights(Checkpoints(reference).latest() / "model")
    )


def test_interim_checkpoints_on_time_keep_only_the_newest_and_resume_exactly(few_images, reference, tmp_path):
    """A checkpoint every log step by the clock (save_every_minutes ~ 0), one by count every 4 steps: a kill after
    step 3 loses nothing, only the newest interim checkpoint stays beside the counted ones, and the resumed run is
    the uninterrupted one."""
    run = tmp_path / "run"
    cfg = config(few_images, save_every=4, save_every_minutes=1e-9, log_every=1, keep_checkpoints=5)

    def kill_at_3(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, progress=False, on_step=kill_at_3)
    assert [p.name for p in Checkpoints(run).complete()] == ["step-00000003"]  # steps 1 and 2 pruned
    train(cfg, run, resume=True, progress=False)
    # step 4 by count; 5 pruned once 6 (the last, kept as the newest) was written
    assert [p.name for p in Checkpoints(run).complete()] == ["step-00000004", "step-00000006"]
    assert_same(weights(run / "model"), weights(reference / "model"))
    # off: only the counted checkpoints and the last
    off = tmp_path / "off"
    train(config(few_images, save_every=4, save_every_minutes=0, log_every=1), off, progress=False)
    assert [p.name for p in Checkpoints(off).complete()] == ["step-00000004", "step-00000006"]
    with pytest.raises(RCDMError, match="--save-every-minutes -1"):
        train(config(few_images, save_every_minutes=-1), tmp_path / "bad", progress=False)


def test_existing_run_needs_resume(few_images, reference):
    with pytest.raises(RCDMError, match="--resume"):
        train(config(few_images), reference, progress=False)


def test_resuming_a_finished_run_keeps_its_model_folder_and_what_was_recorded_in_it(
    few_images, reference, tmp_path
):
    """--resume on a run already at its steps trains nothing and leaves model/ as it is: the sampling that `rcdm
    recipe guidance --record` wrote into its config stays (it used to be overwritten, so a plain `rcdm sample` lost
    the measured guidance). Extending the run writes the new model, without the old weights' record."""
    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    record_model_sampling(run / "model", {"sampler": "dpm++", "steps": 20, "guidance": 3.0})
    assert train(config(few_images), run, resume=True, progress=False).steps == 6
    assert recorded_sampling(run / "model")["guidance"] == 3.0
    assert_same(weights(run / "model"), weights(reference / "model"))
    assert train(config(few_images, steps=8), run, resume=True, progress=False).steps == 8
    assert recorded_sampling(run / "model") == {}
    assert not all(
        torch.equal(a, b)
        for a, b in zip(weights(run / "model").values(), weights(reference / "model").values(), strict=True)
    )


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
    assert Checkpoints(tmp_path / "run").latest().name == "step-00000002"


def test_unreadable_images_are_skipped(few_images, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rcdm.train")
    data = tmp_path / "data" / "nested" / "deeper"
    data.mkdir(parents=True)
    for p in sorted(few_images.iterdir())[:3]:
        shutil.copy(p, data / p.name)
    (data / "broken.png").write_bytes(b"not a png")
    train(config(data.parent.parent, steps=2, save_every=2), tmp_path / "run", progress=False)
    assert "broken.png" in caplog.text
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    # the start-up summary says what the encoder sees: its input size and normalisation
    enc = create_encoder(config(data).encoder)
    assert f"sees {enc.preprocessing.summary()}" in caplog.text


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
    while Checkpoints(run).latest() is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Checkpoints(run).latest() is not None and not (run / "model").exists()
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


# --- faults: a damaged checkpoint, a full disk, a second run in the folder, --data a file -------------------

MODEL_FILE = "model/diffusion_pytorch_model.rcdm.safetensors"


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def _damage(ck: Path, how: str) -> str:
    """Damage checkpoint folder ck as the probe table's K rows did; returns the file the message must name."""
    if how == "model-cut":  # K-3
        f = ck / MODEL_FILE
        f.write_bytes(f.read_bytes()[:5000])
        return MODEL_FILE
    if how == "state-cut":  # K-4
        (ck / "state.json").write_text('{"step": ')
        return "state.json"
    if how == "optimizer-cut":  # K-1
        f = ck / "optimizer.pt"
        f.write_bytes(f.read_bytes()[:3000])
        return "optimizer.pt"
    torch.save({"state": _Evil()}, ck / "optimizer.pt")  # K-2: a valid zip that pickles os.system
    return "optimizer.pt"


@pytest.mark.parametrize("how", ["model-cut", "state-cut", "optimizer-cut", "optimizer-evil"])
def test_resume_from_a_damaged_checkpoint_names_the_file_and_the_intact_one(
    few_images, reference, tmp_path, capsys, monkeypatch, how
):

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "model")  # as if killed before the end: resume must finish from a checkpoint
    ck = run / "checkpoints"
    name = _damage(ck / "step-00000006", how)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"checkpoint step-00000006 in {str(run)!r} is damaged ({name}" in err
    assert "step-00000004 is intact" in err and "Traceback" not in err and "weights_only=False" not in err
    assert not (tmp_path / "PWNED_MARKER").exists()
    assert (ck / "step-00000006").is_dir() and not (run / "model").exists()  # nothing deleted or trained
    if how == "model-cut":  # the suggested command, then --resume, continues from step 4 to the same model
        mv = err.split("(mv ")[1].split(")")[0].split()
        shutil.move(mv[0], mv[1])
        assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
        assert_same(weights(run / "model"), weights(reference / "model"))


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_run_resumes(
    few_images, reference, tmp_path, capsys, monkeypatch
):
    import errno

    from rcdm import runs

    run = tmp_path / "run"
    args = [*tiny_argv(few_images), "--steps", "6", "--no-progress", "--out", str(run)]
    real_save, calls = torch.save, []

    def fills_up(*a, **kw):
        calls.append(1)
        if len(calls) == 2:  # the step-4 checkpoint's optimizer state
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*a, **kw)

    monkeypatch.setattr(runs.torch, "save", fills_up)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert f"the disk holding {str(run)!r} is full: could not write checkpoint step-00000004" in err
    assert "step-00000002, is intact" in err and "--resume" in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]  # no partial folder left
    monkeypatch.setattr(runs.torch, "save", real_save)

    # The final model write fails the same way; the last checkpoint stays, and --resume writes model/.
    real_atomic = train_mod.atomic_dir

    def final_full(final, tmp=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(final))

    monkeypatch.setattr(train_mod, "atomic_dir", final_full)
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "could not write the final model/" in err and "step-00000006, is intact" in err, err
    monkeypatch.setattr(train_mod, "atomic_dir", real_atomic)
    assert main([*args, "--resume"]) == 0
    assert_same(weights(run / "model"), weights(reference / "model"))


def test_a_second_train_in_the_same_folder_is_refused_naming_the_first(few_images, tmp_path, capsys):
    import socket

    run = tmp_path / "run"
    run.mkdir()
    hold = "import sys, time; from rcdm.locks import run_lock\nwith run_lock(sys.argv[1], 'rcdm train'):\n"
    hold += "    print('held', flush=True); time.sleep(120)\n"
    other = subprocess.Popen([sys.executable, "-c", hold, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        args = ["train", "--data", str(few_images), "--encoder", "pixels:2", "--preset", "tiny"]
        args += [
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--num-workers",
            "0",
            "--no-progress",
            "--out",
            str(run),
        ]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert f"is in use by rcdm train (pid {other.pid} on {socket.gethostname()} since" in err, err
        assert err.count("\n") == 0 and not (run / "checkpoints").exists()
    finally:
        other.kill()
        other.wait()
    assert main(args) == 0  # the holder is gone (SIGKILL): its lock is taken over
    assert not (run / ".lock").exists()


def test_data_that_is_a_file_but_not_an_image_is_named(tmp_path, capsys):

    notes = tmp_path / "README.txt"
    notes.write_text("not an image")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    args = ["train", "--encoder", "pixels:2", "--preset", "tiny", "--steps", "2", "--batch-size", "4"]
    args += ["--num-workers", "0", "--no-progress"]
    assert main([*args, "--data", str(notes), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{str(notes)!r} is a file, not an image folder" in err
    assert main([*args, "--data", str(broken), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(broken) in err and "--data" in err


def test_resuming_a_finished_run_says_there_is_nothing_to_train(reference, tmp_path, capsys):

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out and "already at step 6 of 6" in out and "nan" not in out
    assert_same(weights(run / "model"), weights(reference / "model"))


def test_a_time_budget_stops_at_a_checkpoint_and_the_run_stays_usable(few_images, tmp_path, capsys):
    from rcdm.loading import resolve_model_dir

    run = tmp_path / "run"
    args = ["train", "--data", str(few_images), "--encoder", "pixels:2", "--preset", "tiny", "--steps", "6"]
    args += [
        "--batch-size",
        "2",
        "--save-every",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
        "--out",
        str(run),
    ]
    assert main([*args, "--time-budget-s", "1e-9"]) == 0  # past the budget at the first checkpoint
    assert "stopped by --time-budget-s 1e-09 at the checkpoint of step 2 of 6" in capsys.readouterr().out
    assert resolve_model_dir(run).parent.name == "step-00000002"  # sample reads the newest checkpoint's EMA
    assert main([*args, "--resume"]) == 0 and (run / "model" / "config.json").is_file()
    assert "trained 6 steps; mean loss" in capsys.readouterr().out
    assert main([*args[:-2], "--out", str(tmp_path / "r2"), "--time-budget-s", "-5"]) == 2
    assert "--time-budget-s -5.0 must be a positive number of seconds" in capsys.readouterr().err
    # an interim checkpoint (on the clock) ends a run past its budget as a counted one does
    clock = [*args[:-2], "--out", str(tmp_path / "r3"), "--save-every", "4", "--save-every-minutes", "1e-9"]
    assert main([*clock, "--log-every", "1", "--time-budget-s", "1e-9"]) == 0
    assert "at the checkpoint of step 1 of 6" in capsys.readouterr().out


def test_train_called_with_a_time_budget_returns_at_a_checkpoint_and_resumes_exactly(
    few_images, reference, tmp_path
):
    """The Python API: past its budget `train` returns at the first checkpoint, flagged, with no final model;
    resumed without one, it ends with the uninterrupted run's weights."""
    run = tmp_path / "run"
    cut = train(config(few_images), run, progress=False, time_budget_s=1e-9)
    assert cut.stopped_early and cut.steps == 2 and not (run / "model").exists()
    assert [p.name for p in Checkpoints(run).complete()] == ["step-00000002"]
    done = train(config(few_images), run, resume=True, progress=False, time_budget_s=3600)
    assert not done.stopped_early and done.steps == 6
    assert_same(weights(run / "model"), weights(reference / "model"))
    with pytest.raises(RCDMError, match="--time-budget-s nan must be a positive number"):
        train(config(few_images), tmp_path / "r2", progress=False, time_budget_s=float("nan"))
    assert not (tmp_path / "r2").exists()  # refused before any work


def test_samples_are_retrieved_by_their_own_representation(few_images, tmp_path):
    cfg = TrainConfig(
        data=str(few_images),
        encoder="pixels:4",  # weight-free 48-d representation: the image average-pooled to 4x4
        preset="tiny",
        image_size=16,
        steps=500,
        batch_size=16,
        lr=3e-3,
        ema_decay=0.98,
        save_every=500,
        num_workers=0,
        min_scale=1.0,
    )
    train(cfg, tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run")
    enc = encoder_for(model)
    files = list_images(few_images)
    _, views = load_views(files, 16, enc.preprocessing.input_size)
    reps = enc.encode(views)
    n = 4
    source = torch.arange(len(files)).repeat_interleave(n)
    rates = {}
    for sampler, steps in (("ddpm", 50), ("ddim", 25), ("dpm++", 20)):
        samples = sample_many(model, reps, n, SamplingConfig(sampler=sampler, steps=steps, seed=0))
        nearest = torch.cdist(enc.encode(samples.flatten(0, 1)), reps).argmin(1)
        rates[sampler] = float((nearest == source).float().mean())
    chance = 1 / len(files)
    print(f"rank-1 retrieval of samples among {len(files)} images (chance {chance:.3f}): {rates}")
    assert rates["ddpm"] >= 5 * chance
    assert min(rates.values()) >= 3 * chance


def test_warmup_rises_linearly_then_holds(tmp_path):
    cfg = tiny_config(tmp_path, lr=1e-3, warmup_steps=4)
    assert [learning_rate(cfg, s) for s in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    )
    assert learning_rate(tiny_config(tmp_path, lr=1e-3), 0) == 1e-3


def test_a_run_with_the_new_knobs_records_them_and_logs_the_warmup(few_images: Path, tmp_path):
    cfg = tiny_config(
        few_images,
        steps=4,
        prediction="v_prediction",
        loss_weighting="min-snr",
        timestep_sampling="logit-normal",
        warmup_steps=2,
        dropout=0.1,
        cond_drop=0.2,
        log_every=1,
    )
    train(cfg, tmp_path / "run", progress=False)
    model = RCDM.from_pretrained(tmp_path / "run" / "model")
    assert model.prediction_type == "v_prediction" and model.config.dropout == 0.1
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["lr"] == pytest.approx(cfg.lr / 2)  # step 1 of a 2-step warm-up
    imgs = sample(
        model, torch.randn(2, model.config.representation_dim), SamplingConfig(steps=3, guidance=2.0)
    )
    assert torch.isfinite(imgs).all()


def test_standardized_training_records_statistics_and_logs_a_summary(
    few_images, resnet20_spec, tmp_path, caplog
):
    cfg = TrainConfig(
        data=str(few_images),
        encoder=resnet20_spec,
        preset="tiny",
        steps=2,
        batch_size=4,
        save_every=2,
        num_workers=0,
        standardize=True,
    )
    with caplog.at_level(logging.INFO, logger="rcdm.train"):
        train(cfg, tmp_path / "run", progress=False)
    model = RCDM.from_pretrained(tmp_path / "run" / "model")
    assert model.config.standardize_representation
    assert model.rep_std.shape == (64,) and float(model.rep_std.min()) > 0
    assert float(model.rep_mean.abs().max()) > 0  # real statistics, not the zero initialisation
    text = caplog.text
    assert "8 images (decoded in memory)" in text and "global batch 4" in text
    assert "step 2/2: mean loss" in text and "img/s; saved" in text


def test_training_loss_falls_under_bf16_as_under_fp32(few_images, tmp_path):
    def run(precision: str) -> list[float]:
        cfg = TrainConfig(
            data=str(few_images),
            encoder="pixels:4",
            preset="tiny",
            image_size=16,
            steps=40,
            batch_size=8,
            lr=2e-3,
            save_every=40,
            num_workers=0,
            loss="simple",
            mixed_precision=precision,
        )
        return train(cfg, tmp_path / precision, progress=False).history

    bf16, fp32 = run("bf16"), run("fp32")
    assert bf16 != fp32  # bf16 autocast did run
    for history in (bf16, fp32):
        first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
        assert last < 0.5 * first, (first, last)
    assert abs(sum(bf16[-10:]) - sum(fp32[-10:])) / 10 < 0.05, (bf16[-10:], fp32[-10:])


def test_resume_reads_run_json_and_refuses_changed_settings(few_images, tmp_path, capsys):
    run = tmp_path / "run"
    argv = tiny_argv(few_images)
    argv += ["--log-every", "1", "--mixed-precision", "fp32", "--no-progress", "--out", str(run)]
    assert main([*argv, "--steps", "2"]) == 0
    # Changed settings are refused, each named with both values; nothing is trained or rewritten.
    before = (run / "run.json").read_text()
    for flag, value, name in [
        ("--lr", "1e-2", "lr"),
        ("--batch-size", "8", "batch_size"),
        ("--seed", "3", "seed"),
    ]:
        assert main(["train", "--out", str(run), "--resume", flag, value]) == 2
        err = capsys.readouterr().err
        assert f"{name} " in err and value.replace("1e-2", "0.01") in err and "run.json" in err
    assert (run / "run.json").read_text() == before
    # No flag but --steps: the run continues with its own settings.
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"]) == 0
    assert json.loads((run / "run.json").read_text())["steps"] == 4
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4]  # each step once
    straight = tmp_path / "straight"
    assert main([*argv[:-1], str(straight), "--steps", "4"]) == 0
    a, b = weights(run / "model"), weights(straight / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_gradient_accumulation_trains_the_same_model_and_resumes_exactly(few_images, tmp_path):
    one = tmp_path / "k1"
    train(logged(few_images), one, progress=False)
    two = tmp_path / "k2"
    train(logged(few_images, gradient_accumulation_steps=2), two, progress=False)
    still = tmp_path / "k0"  # the same start, trained with a learning rate too small to move it
    train(logged(few_images, steps=1, lr=1e-30), still, progress=False)
    a, b, start = weights(one / "model"), weights(two / "model"), weights(still / "model")
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    moved = torch.cat([(a[k] - start[k]).abs().flatten() for k in a])
    # The same images, noise and mean loss: float rounding only, which the summation order (threads, CPU) sets.
    # Adam turns a rounding flip of a near-zero gradient into a step of about lr, so a few weights may differ by
    # ~1e-4 (2 threads on an AVX2 EPYC: 1.2e-4); on average they agree to ~1e-5 of how far training moved them
    # (measured 7e-6), where a wrong accumulation (one micro-batch's gradient, say) differs by a large fraction.
    assert diff.mean() < 1e-3 * moved.mean() and diff.max() < 0.25 * moved.max(), (diff.mean(), diff.max())
    part = tmp_path / "k2-resumed"
    train(logged(few_images, gradient_accumulation_steps=2, steps=2), part, progress=False)
    train(logged(few_images, gradient_accumulation_steps=2), part, resume=True, progress=False)
    c = weights(part / "model")
    assert all(torch.equal(b[k], c[k]) for k in b)
    with pytest.raises(RCDMError, match="gradient-accumulation-steps 3"):
        train(logged(few_images, gradient_accumulation_steps=3), tmp_path / "bad", progress=False)
