"""Run folders: the lock, checkpoint bookkeeping, damaged checkpoints, a full disk."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rcdm import runs
from rcdm.devices import cpu_seconds
from rcdm.errors import DiskFullError, RCDMError
from rcdm.runs import Checkpoints


def test_latest_and_prune_ignore_incomplete_checkpoints(tmp_path):
    ck = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        (ck / f"step-{step:08d}").mkdir(parents=True)
        (ck / f"step-{step:08d}" / "state.json").write_text("{}")
    (ck / "step-00000004").mkdir()  # interrupted: no state.json
    (ck / ".tmp-step-00000005-1").mkdir()
    ckpts = Checkpoints(tmp_path)
    assert ckpts.latest().name == "step-00000003"
    ckpts.prune(keep=2)
    assert sorted(p.name for p in ck.iterdir()) == ["step-00000002", "step-00000003", "step-00000004"]
    assert Checkpoints(tmp_path / "nothing").latest() is None


# --- interrupted pruning -------------------------------------------------------------------------------------


def test_checkpoints_half_deleted_by_a_killed_pruning_are_removed_at_the_next_save(tmp_path, caplog):
    ck = tmp_path / "checkpoints"
    for step in (3, 5, 7):
        (ck / f"step-{step:08d}" / "model").mkdir(parents=True)
        (ck / f"step-{step:08d}" / "state.json").write_text("{}")
    for step in (1, 2):  # killed inside rmtree: some files gone, state.json among them
        (ck / f"step-{step:08d}" / "ema").mkdir(parents=True)
        (ck / f"step-{step:08d}" / "optimizer.pt").write_bytes(b"x")
    (ck / "step-00000004").mkdir()  # empty
    (ck / "step-00000000" / "notes").mkdir(parents=True)  # not something rcdm writes: left alone
    (ck / "step-00000009" / "model").mkdir(parents=True)  # newer than the newest complete one: left alone
    with caplog.at_level(logging.INFO, logger="rcdm.runs"):
        Checkpoints(tmp_path).prune(keep=2)
    assert sorted(p.name for p in ck.iterdir()) == [
        "step-00000000",
        "step-00000005",
        "step-00000007",
        "step-00000009",
    ]
    assert "step-00000001" in caplog.text and "interrupted pruning" in caplog.text


def test_pruning_deletes_state_json_first(tmp_path, monkeypatch):
    """A kill inside the deletion must not leave a folder that still looks complete."""
    ck = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        (ck / f"step-{step:08d}" / "model").mkdir(parents=True)
        (ck / f"step-{step:08d}" / "state.json").write_text("{}")

    def killed(path, ignore_errors=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        Checkpoints(tmp_path).prune(keep=2)
    assert [p.name for p in Checkpoints(tmp_path).complete()] == ["step-00000002", "step-00000003"]


# --- damaged checkpoints and a full disk ----------------------------------------------------------------------


def _save(run: Path, step: int) -> Path:
    from rcdm.model import RCDM

    torch.manual_seed(0)
    model = RCDM.from_preset("tiny", representation_dim=3, encoder="pixels:1", feature="backbone")
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 3, 16, 16), torch.zeros(1, dtype=torch.long), torch.zeros(1, 3)).sum().backward()
    opt.step()
    return Checkpoints(run).save(step, {"step": step}, model=model, ema=model, optimizer=opt)


def test_a_damaged_checkpoint_is_named_with_its_file_and_the_newest_intact_one(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    ckpts = Checkpoints(tmp_path)
    assert ckpts.resume().name == "step-00000003"
    ck = tmp_path / "checkpoints"
    safetensors = ck / "step-00000003" / "model" / "diffusion_pytorch_model.rcdm.safetensors"
    safetensors.write_bytes(safetensors.read_bytes()[:5000])
    (ck / "step-00000002" / "optimizer.pt").write_bytes(b"not a zip")
    with pytest.raises(RCDMError) as e:
        ckpts.resume()
    msg = str(e.value)
    assert "step-00000003" in msg and "model/diffusion_pytorch_model.rcdm.safetensors" in msg
    assert "step-00000001 is intact" in msg and "mv " in msg and "\n" not in msg
    assert ckpts.problem(ck / "step-00000002").startswith("optimizer.pt: ")
    (ck / "step-00000001" / "state.json").write_text('{"step": ')
    assert "state.json" in ckpts.problem(ck / "step-00000001")
    with pytest.raises(RCDMError, match="no older checkpoint is intact"):
        ckpts.resume()


def test_resume_takes_the_newest_complete_checkpoint_and_save_prune_keep_n(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    ck = tmp_path / "checkpoints"
    (ck / "step-00000004" / "model").mkdir(parents=True)  # a folder without state.json is not a checkpoint
    (ck / ".tmp-step-00000005-1").mkdir()
    ckpts = Checkpoints(tmp_path)
    assert ckpts.resume() == ck / "step-00000003" == ckpts.latest()
    with pytest.raises(RCDMError, match="already holds checkpoints: pass --resume"):
        ckpts.start(resume=False)
    assert ckpts.start(resume=True) == ck / "step-00000003"
    assert not (ck / ".tmp-step-00000005-1").exists()  # swept
    ckpts.prune(keep=2)
    assert [p.name for p in ckpts.complete()] == ["step-00000002", "step-00000003"]
    assert Checkpoints(tmp_path / "empty").start(resume=True) is None


def test_prune_keeps_n_counted_checkpoints_and_only_the_newest_interim_one(tmp_path):
    ck = tmp_path / "checkpoints"
    for step in (10, 13, 20, 27, 30, 34):
        (ck / f"step-{step:08d}").mkdir(parents=True)
        (ck / f"step-{step:08d}" / "state.json").write_text("{}")
    ckpts = Checkpoints(tmp_path)
    assert ckpts.number(ck / "step-00000034") == 34
    ckpts.prune(keep=2, every=10)
    assert [p.name for p in ckpts.complete()] == ["step-00000020", "step-00000030", "step-00000034"]
    (ck / "step-00000040").mkdir()
    (ck / "step-00000040" / "state.json").write_text("{}")
    ckpts.prune(keep=2, every=10)  # 34 is no longer the newest
    assert [p.name for p in ckpts.complete()] == ["step-00000030", "step-00000040"]


def test_save_writes_each_part_by_its_kind_and_read_gives_it_back(tmp_path):
    from rcdm.model import RCDM

    saved = _save(tmp_path, 7)
    assert saved.name == "step-00000007"
    assert sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file()) == sorted(
        runs.STEP_FILES
    )
    ckpts = Checkpoints(tmp_path)
    model = ckpts.read(saved, "model/", RCDM)
    assert isinstance(model, RCDM) and model.config.representation_dim == 3
    assert ckpts.read(saved, "optimizer.pt")["state"]  # plain tensors, one step's moments
    assert ckpts.state(saved, "step") == {"step": 7}

    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    epochs = Checkpoints(tmp_path / "ssl", "epoch-*", ("net.safetensors", "optimizer.pt", "state.json"), 4)
    one = epochs.save(1, {"epoch": "1", "step": 3}, net=net, optimizer=opt)
    assert one.name == "epoch-0001" and epochs.problem(one) is None
    assert torch.equal(epochs.read(one, "net.safetensors")["weight"], net.weight)
    assert epochs.state(one, "epoch", "step") == {"epoch": 1, "step": 3}
    (one / "state.json").write_text('{"epoch": 1}')
    with pytest.raises(RCDMError, match=r"epoch-0001 .* is damaged \(state\.json: KeyError: 'step'\)"):
        epochs.state(one, "epoch", "step")


def test_a_save_that_fails_leaves_no_checkpoint_and_the_next_save_sweeps_its_folder(tmp_path, monkeypatch):
    first = _save(tmp_path, 1)

    def dies(*a, **kw):
        raise KeyboardInterrupt  # a kill in the middle of writing optimizer.pt

    monkeypatch.setattr(runs.torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2)
    monkeypatch.undo()
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == [f".tmp-step-00000002-{os.getpid()}", "step-00000001"]
    assert Checkpoints(tmp_path).resume() == first  # the partial one is not a checkpoint
    _save(tmp_path, 2)
    Checkpoints(tmp_path).prune(keep=0)
    assert sorted(p.name for p in ck.iterdir()) == ["step-00000001", "step-00000002"]


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1)

    def no_space(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.torch, "save", no_space)
    with pytest.raises(DiskFullError) as e:
        _save(tmp_path, 2)
    msg = str(e.value)
    assert "is full" in msg and "checkpoint step-00000002" in msg and "needs about" in msg
    assert "step-00000001, is intact" in msg and "--resume" in msg and "\n" not in msg
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]  # partial one removed

    # torch's zip writer reports a full disk as a RuntimeError about positions: free space tells
    def torch_full(*a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 686080 vs 685972")

    monkeypatch.setattr(runs.torch, "save", torch_full)
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda p: SimpleNamespace(free=1000))
    with pytest.raises(DiskFullError, match=r"0\.0 MB free"):
        _save(tmp_path, 2)
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda p: SimpleNamespace(free=10**12))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of space: not a full disk, not hidden
        _save(tmp_path, 2)


def test_cpu_seconds_do_not_count_sleeping():
    c0 = cpu_seconds()
    time.sleep(0.3)
    assert cpu_seconds() - c0 < 0.15
