"""rcdm.pack.ssl: the encoder recipe at tiny scale on the CPU (VICReg loss, encoders saved and read back, resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rcdm.encoders import create_encoder
from rcdm.encoders.cifar import CifarEncoderArch, CifarEncoderNet, default_preprocessing
from rcdm.errors import RCDMError, TrainingInterrupted
from rcdm.metrics.knn import encoder_features, knn_accuracy
from rcdm.pack.cifar10 import labelled_files, load_uint8
from rcdm.pack.ssl import EPOCH_FILES, SSLConfig, train_encoder, vicreg_loss
from rcdm.runs import Checkpoints

from .conftest import TINY


def test_vicreg_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    net = CifarEncoderNet(CifarEncoderArch(depth=8, width=1, projector=(32, 32)))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(12, 3, 32, 32)
    a, b = x + 0.05 * torch.randn_like(x), x.flip(-1)
    losses = []
    for _ in range(6):
        z1, z2 = net.projector(net(a)), net.projector(net(b))
        loss = vicreg_loss(z1, z2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses
    # Invariance term only: identical, whitened embeddings with unit std cost nothing.
    z = torch.linalg.qr(torch.randn(64, 8))[0] * 8  # orthogonal columns: zero covariance off the diagonal
    z = z - z.mean(0)
    z = z / z.std(0)
    assert float(vicreg_loss(z, z)) < 0.05


def test_saved_encoder_round_trips_through_the_registry(runs: Path, cifar_root: Path) -> None:
    folder = runs / "ssl" / "encoder"
    card = json.loads((folder / "card.json").read_text())
    assert card["smoke"] is True and card["epochs"] == 1 and card["steps"] == 2 and card["images_seen"] == 20
    assert card["cpu_time_s"] > 0 and card["cpu_time_from_epoch"] == 0  # CPU time beside the wall time
    assert "| CPU time |" in (folder / "README.md").read_text()
    assert set(card["knn_accuracy"]) == {"backbone", "projector"}
    assert card["identity"].startswith("rcdm-cifar@sha256:") and "license" in card["data"]
    net = CifarEncoderNet(CifarEncoderArch.from_dict(card["arch"])).eval()
    net.load_state_dict(load_file(str(folder / "encoder.safetensors")), strict=True)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        h = net(default_preprocessing()(x))
        z = net.projector(h)
    backbone = create_encoder(f"rcdm-cifar:{folder}", feature="backbone")
    projector = create_encoder(f"rcdm-cifar:{folder}", feature="projector")
    assert backbone.dim == 64 and projector.dim == 32
    assert torch.equal(backbone(x), h) and torch.equal(projector(x), z)
    assert backbone.identity == projector.identity == card["identity"]
    # The card's k-NN numbers are those of the saved weights.
    files, labels, _ = labelled_files(cifar_root / "train", 20)
    tfiles, tlabels, _ = labelled_files(cifar_root / "test", 20)
    f, tf = encoder_features(backbone, load_uint8(files)), encoder_features(backbone, load_uint8(tfiles))
    for name in ("backbone", "projector"):
        acc = knn_accuracy(f[name], torch.tensor(labels), tf[name], torch.tensor(tlabels))
        assert acc == pytest.approx(card["knn_accuracy"][name], abs=1e-6)


def test_supervised_encoder_keeps_its_classifier(runs: Path) -> None:
    enc = create_encoder(f"rcdm-cifar:{runs / 'supervised' / 'encoder'}")
    assert enc.logits(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(RCDMError, match="no projector"):
        create_encoder(f"rcdm-cifar:{runs / 'supervised' / 'encoder'}", feature="projector")
    with pytest.raises(RCDMError, match="neither a folder"):
        create_encoder("rcdm-cifar:no-such-encoder")


def test_ssl_run_refuses_to_overwrite(runs: Path, cifar_root: Path) -> None:
    with pytest.raises(RCDMError, match="--resume"):
        train_encoder(SSLConfig(data=str(cifar_root), **TINY), runs / "ssl", progress=False)


def test_ssl_run_resumes_exactly_after_an_interruption(cifar_root: Path, tmp_path: Path) -> None:
    cfg = SSLConfig(data=str(cifar_root), **{**TINY, "epochs": 2, "limit": 20})

    def stop_at_3(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_encoder(cfg, tmp_path / "cut", progress=False, on_step=stop_at_3)
    assert not (tmp_path / "cut" / "encoder").exists()
    resumed = train_encoder(cfg, tmp_path / "cut", resume=True, progress=False)
    whole = train_encoder(cfg, tmp_path / "whole", progress=False)
    assert resumed.steps == whole.steps == 4 and resumed.losses == whole.losses
    a = load_file(str(resumed.encoder_dir / "encoder.safetensors"))
    b = load_file(str(whole.encoder_dir / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize(
    ("stop_after", "where", "checkpoint"),
    [
        (
            6,
            r"step 6 \(batch 2 of 4 in epoch 2 of 2\)",
            "epoch-0002",
        ),  # mid-epoch: the step under way is kept
        (4, r"epoch 1 of 2", "epoch-0001"),  # at an epoch's end: that epoch's own checkpoint
    ],
)
def test_ssl_sigterm_checkpoints_the_step_under_way_and_the_resume_is_exact(
    cifar_root: Path, tmp_path: Path, stop_after: int, where: str, checkpoint: str
) -> None:
    cfg = SSLConfig(
        data=str(cifar_root), **{**TINY, "epochs": 2, "batch_size": 5, "limit": 20}
    )  # 4 steps/epoch
    before = signal.getsignal(signal.SIGTERM)

    def notice(step: int, loss: float) -> None:  # a scheduler's notice, once step `stop_after` is done
        if step == stop_after:
            os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted, match=f"SIGTERM: stopped at the checkpoint of {where} in ") as e:
        train_encoder(cfg, run, progress=False, on_step=notice)
    assert e.value.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) == before
    latest = Checkpoints(run, "epoch-*", EPOCH_FILES, digits=4).latest()
    assert latest is not None and latest.name == checkpoint and not (run / "encoder").exists()
    assert json.loads((latest / "state.json").read_text())["step"] == stop_after
    resumed = train_encoder(cfg, run, resume=True, progress=False)
    whole = train_encoder(cfg, tmp_path / "whole", progress=False)
    assert resumed.steps == whole.steps == 8 and resumed.losses == whole.losses
    a = load_file(str(resumed.encoder_dir / "encoder.safetensors"))
    b = load_file(str(whole.encoder_dir / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_ssl_cli_stops_at_a_checkpoint_on_sigterm_with_the_signal_s_exit_code(
    cifar_root: Path, tmp_path: Path
) -> None:
    """A real SIGTERM to `rcdm recipe ssl` (a scheduler's preemption): one line naming the checkpoint, exit 143,
    no traceback, and the checkpoint it names is on disk."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "rcdm.cli", "recipe", "ssl", "--data", str(cifar_root), "--out", str(run)]
    args += ["--epochs", "100000", "--batch-size", "5", "--limit", "20", "--depth", "8", "--width", "1"]
    args += ["--projector", "32", "32", "--num-workers", "0", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoints").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # the loop has finished an epoch
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    line = next(
        x for x in err.splitlines() if x.startswith("rcdm recipe: SIGTERM: stopped at the checkpoint of")
    )
    assert line.endswith(f"in {run}; resuming (--resume) goes on from it") and "Traceback" not in err
    latest = Checkpoints(run, "epoch-*", EPOCH_FILES, digits=4).latest()
    assert latest is not None
    state = json.loads((latest / "state.json").read_text())
    named = f"step {state['step']} (batch {state['batch']} of 4 in epoch {state['epoch'] + 1} of 100000)"
    assert f"of {named} in" in line if state["batch"] else f"of epoch {state['epoch']} of 100000 in" in line


def test_ssl_resume_names_a_damaged_checkpoint_and_a_second_run_is_refused(
    runs: Path, cifar_root: Path, tmp_path: Path
) -> None:
    import shutil

    from rcdm.locks import run_lock

    run = tmp_path / "ssl"
    shutil.copytree(runs / "ssl", run)
    shutil.rmtree(run / "encoder")
    cfg = SSLConfig(data=str(cifar_root), **TINY)
    with (
        run_lock(run, "rcdm recipe ssl"),
        pytest.raises(RCDMError, match=r"is in use by rcdm recipe ssl \(pid"),
    ):
        train_encoder(cfg, run, resume=True, progress=False)
    net = run / "checkpoints" / "epoch-0001" / "net.safetensors"
    net.write_bytes(net.read_bytes()[:1000])
    with pytest.raises(
        RCDMError, match=r"epoch-0001 .* is damaged \(net\.safetensors: .*no older checkpoint"
    ):
        train_encoder(cfg, run, resume=True, progress=False)


def test_ssl_cpu_time_of_a_run_resumed_from_an_older_checkpoint_says_what_it_covers(
    runs: Path, cifar_root: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "ssl"
    shutil.copytree(runs / "ssl", run)
    shutil.rmtree(run / "encoder")
    state = run / "checkpoints" / "epoch-0001" / "state.json"
    old = {k: v for k, v in json.loads(state.read_text()).items() if not k.startswith("cpu_")}
    state.write_text(json.dumps(old))  # as written before CPU time was recorded
    result = train_encoder(
        SSLConfig(data=str(cifar_root), **{**TINY, "epochs": 2}), run, resume=True, progress=False
    )
    card = json.loads((result.encoder_dir / "card.json").read_text())
    assert result.cpu_time_from_epoch == card["cpu_time_from_epoch"] == 1 and card["cpu_time_s"] > 0
    assert card["wall_time_s"] > old["wall_time_s"]
    assert "epochs 2-2 only" in (result.encoder_dir / "README.md").read_text()
