"""Run folders: atomic folder writes, training checkpoints (save, find the newest, prune) and provenance.

A run folder holds run.json, checkpoints/step-NNNNNNNN/{model,ema,optimizer.pt,state.json} and, when done,
model/. Every folder is written under a temporary name, fsynced and renamed into place, so a run killed at any
point (even mid-save) leaves only complete folders under their final names.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from .errors import RCDMError

CHECKPOINTS = "checkpoints"


def fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(final: str | Path, tmp: str | Path | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block completes, fsync it and rename it to `final` (replacing it).

    tmp: the temporary folder (default: `.tmp-<name>-<pid>` beside `final`). When the block raises (or the process
    dies) `final` is untouched and the temporary folder stays, as after a kill: readers ignore it and the next
    write (`prune_checkpoints` for checkpoints) removes it.
    """
    final = Path(final)
    tmp = Path(tmp) if tmp is not None else final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)


def _nearest_existing(path: Path) -> Path:
    return next((p for p in (path, *path.parents) if p.exists()), Path("."))


def check_writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse (one RCDMError line) an output folder that is a file or cannot be written; checked before any work.

    The folder need not exist: its nearest existing ancestor must then be a writable folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RCDMError(f"{flag} {str(path)!r} is a file, not a folder: choose a folder")
    probe = _nearest_existing(path)
    if not probe.is_dir():
        raise RCDMError(f"cannot write {flag} {str(path)!r}: {str(probe)!r} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RCDMError(f"cannot write {flag} {str(path)!r}: {str(probe)!r} is not a writable folder")
    return path


def check_writable_file(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output file that is a folder or cannot be written (checked before any work)."""
    path = Path(path)
    if path.is_dir():
        raise RCDMError(f"{flag} {str(path)!r} is a folder: pass a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise RCDMError(f"cannot write {flag} {str(path)!r}: the file is read-only")
    probe = _nearest_existing(path.parent)
    if not probe.is_dir():
        raise RCDMError(f"cannot write {flag} {str(path)!r}: {str(probe)!r} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RCDMError(f"cannot write {flag} {str(path)!r}: {str(probe)!r} is not a writable folder")
    return path


@contextlib.contextmanager
def output_lock(target: str | Path, flag: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on an output path for this process; a second rcdm process writing to the same path
    is refused with a line naming the holder (pid, host, start time) instead of silently overwriting it.

    The lock is `.NAME.lock` beside `target` (flock: released by the kernel if the holder dies).
    """
    target = Path(target)
    lock = target.parent / f".{target.name}.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 300).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RCDMError(
                    f"{flag} {str(target)!r} is being written by another rcdm process ({holder}): wait for it "
                    f"to finish, or choose another {flag}"
                ) from None
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:  # its previous holder removed it as we opened it: take a new one
                same = False
            if same:
                break
            os.close(fd)
    except OSError as e:
        raise RCDMError(f"cannot write {flag} {str(target)!r}: {e.strerror or e}") from None
    try:
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


@contextlib.contextmanager
def output_folder(
    out: str | Path, *, overwrite: bool = False, marker: str, flag: str = "--out"
) -> Iterator[Path]:
    """Check and lock an output folder before any work, then yield an empty temporary folder beside it; when the
    block completes, the temporary folder becomes `out` (so `out` holds this run's files only, never a mix).

    `out` may be absent or empty. A folder with files needs `overwrite` and must hold `marker` (the file this
    command writes last), so that only an earlier output of the same command is replaced, never files of
    the user's. When the block raises, `out` is untouched and the temporary folder is removed.
    """
    out = check_writable_dir(out, flag)
    with output_lock(out, flag):
        if out.is_dir() and any(out.iterdir()):
            if not (out / marker).is_file():
                raise RCDMError(
                    f"{flag} {str(out)!r} holds files that rcdm did not write (it has no {marker}): choose "
                    f"an empty or new {flag}"
                )
            if not overwrite:
                raise RCDMError(
                    f"{flag} {str(out)!r} already holds an earlier output: pass --overwrite to replace it, or "
                    f"choose a new {flag}"
                )
        tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        except OSError as e:
            raise RCDMError(f"cannot write {flag} {str(out)!r}: {e.strerror or e}") from None
        try:
            yield tmp
            fsync_tree(tmp)
            if out.exists():
                old = out.parent / f".old-{out.name}-{os.getpid()}"
                os.rename(out, old)
                os.rename(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def complete_checkpoints(run_dir: str | Path, pattern: str = "step-*") -> list[Path]:
    """The complete checkpoints (with state.json) of a run, oldest first; interrupted saves are ignored."""
    ck = Path(run_dir) / CHECKPOINTS
    return sorted(p for p in ck.glob(pattern) if (p / "state.json").is_file()) if ck.is_dir() else []


def latest_checkpoint(run_dir: str | Path, pattern: str = "step-*") -> Path | None:
    """The newest complete checkpoint of a run (temporary folders from an interrupted save are ignored)."""
    done = complete_checkpoints(run_dir, pattern)
    return done[-1] if done else None


def prune_checkpoints(run_dir: str | Path, keep: int, pattern: str = "step-*") -> None:
    """Keep the newest `keep` complete checkpoints (all when keep <= 0) and drop leftover temporary folders."""
    done = complete_checkpoints(run_dir, pattern)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in (Path(run_dir) / CHECKPOINTS).glob(f".tmp-{pattern}"):
        shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    ema_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    keep: int,
) -> Path:
    """Write RUN_DIR/checkpoints/step-NNNNNNNN atomically (temp folder + rename) and prune old ones."""
    ck = run_dir / CHECKPOINTS
    ck.mkdir(parents=True, exist_ok=True)
    final = ck / f"step-{step:08d}"
    with atomic_dir(final, ck / f".tmp-step-{step:08d}-{os.getpid()}") as tmp:
        model.save_pretrained(tmp / "model")
        ema_model.save_pretrained(tmp / "ema")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step}))
    prune_checkpoints(run_dir, keep)
    return final


def git_commit() -> str | None:
    """The rcdm source tree's git commit (with '+dirty' when modified), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({os.cpu_count()} cores visible)"
