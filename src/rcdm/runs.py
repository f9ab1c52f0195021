"""Run folders: atomic folder writes, training checkpoints (save, find the newest, prune) and provenance.

A run folder holds run.json, checkpoints/step-NNNNNNNN/{model,ema,optimizer.pt,state.json} and, when done,
model/. Every folder is written under a temporary name, fsynced and renamed into place, so a run killed at any
point (even mid-save) leaves only complete folders under their final names.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

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
