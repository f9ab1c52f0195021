"""Run folders: training checkpoints (save, check, find the newest, prune) and disk-full reporting.

A run folder holds run.json, checkpoints/step-NNNNNNNN/{model,ema,optimizer.pt,state.json} and, when done,
model/. Every folder is written through `rcdm.files.atomic_dir` (temporary name, fsync, rename), so a run killed
at any point (even mid-save) leaves only complete folders under their final names. One process at a time writes
a run folder: it holds RUN/.lock (`rcdm.locks.run_lock`), which names it to anyone else who tries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shlex
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .errors import DiskFullError, RCDMError
from .files import atomic_dir, free_bytes, is_disk_full
from .model import WEIGHTS_VARIANT

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
# The files of a complete rcdm.train checkpoint, relative to its folder (what `save_checkpoint` writes).
# Checkpoints saved before rcdm's weights name (model.WEIGHTS_VARIANT) hold diffusion_pytorch_model.safetensors.
STEP_FILES: tuple[str, ...] = (
    "model/config.json",
    f"model/diffusion_pytorch_model.{WEIGHTS_VARIANT}.safetensors",
    "ema/config.json",
    f"ema/diffusion_pytorch_model.{WEIGHTS_VARIANT}.safetensors",
    "optimizer.pt",
    "state.json",
)


def complete_checkpoints(run_dir: str | Path, pattern: str = "step-*") -> list[Path]:
    """The complete checkpoints (with state.json) of a run, oldest first; interrupted saves are ignored."""
    ck = Path(run_dir) / CHECKPOINTS
    return sorted(p for p in ck.glob(pattern) if (p / "state.json").is_file()) if ck.is_dir() else []


def latest_checkpoint(run_dir: str | Path, pattern: str = "step-*") -> Path | None:
    """The newest complete checkpoint of a run (temporary folders from an interrupted save are ignored)."""
    done = complete_checkpoints(run_dir, pattern)
    return done[-1] if done else None


def _own_name(pattern: str) -> re.Pattern:
    """'step-*' -> the names rcdm gives such checkpoints (step-00001000): the '*' is digits."""
    return re.compile(re.escape(pattern).replace(r"\*", r"\d+") + "$")


def _leftovers(run_dir: Path, pattern: str, files: tuple[str, ...]) -> list[Path]:
    """Checkpoint folders that a kill during pruning left half deleted: rcdm's own name, no state.json, only
    files rcdm writes there, and older than the newest complete checkpoint (saves are renamed into place
    complete, so nothing else can be missing its state.json)."""
    ck = run_dir / CHECKPOINTS
    newest = latest_checkpoint(run_dir, pattern)
    if newest is None or not ck.is_dir():
        return []
    own, known = _own_name(pattern), {f.split("/")[0] for f in files}
    return sorted(
        p
        for p in ck.glob(pattern)
        if p.is_dir()
        and own.match(p.name)
        and p.name < newest.name
        and not (p / "state.json").exists()
        and all(c.name in known for c in p.iterdir())
    )


def prune_checkpoints(
    run_dir: str | Path, keep: int, pattern: str = "step-*", files: tuple[str, ...] = STEP_FILES
) -> None:
    """Keep the newest `keep` complete checkpoints (all when keep <= 0); drop leftover temporary folders and
    the half-deleted folders of a pruning that was killed. Only the holder of the run's lock may call it."""
    run_dir = Path(run_dir)
    done = complete_checkpoints(run_dir, pattern)
    for old in done[:-keep] if keep > 0 else []:
        # state.json first: a kill in the middle leaves a folder that readers already ignore
        (old / "state.json").unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)
    sweep_checkpoints(run_dir, pattern, files)


def sweep_checkpoints(
    run_dir: str | Path, pattern: str = "step-*", files: tuple[str, ...] = STEP_FILES
) -> None:
    """Remove what interrupted saves and prunings left: temporary folders and half-deleted checkpoints (see
    `_leftovers`). Only the holder of the run's lock may call it (another run's temporary folder is in use)."""
    run_dir = Path(run_dir)
    for stale in (run_dir / CHECKPOINTS).glob(f".tmp-{pattern}"):
        shutil.rmtree(stale, ignore_errors=True)
    for half in _leftovers(run_dir, pattern, files):
        log.info("removing %s: an incomplete checkpoint (no state.json) left by an interrupted pruning", half)
        shutil.rmtree(half, ignore_errors=True)


# --- damaged checkpoints -------------------------------------------------------------------------------------


def _reason(e: BaseException) -> str:
    if isinstance(e, pickle.UnpicklingError):
        return "it holds pickled objects or is not a torch file; rcdm reads only plain tensors (weights_only)"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def checkpoint_problem(ckpt: Path, files: tuple[str, ...] = STEP_FILES) -> str | None:
    """Why a checkpoint folder cannot be resumed from ('optimizer.pt: BadZipFile: ...'), or None when it reads.

    Checks structure, cheaply: every file present; JSON parses (state.json to an object); a safetensors header
    parses and covers its file; a .pt file's zip directory reads. Values are not checked (there is no checksum).
    """
    for name in files:
        path = ckpt / name
        legacy = path.with_name(path.name.replace(f".{WEIGHTS_VARIANT}.", "."))
        if not path.is_file() and legacy.is_file():  # saved before the rcdm weights name
            name, path = str(legacy.relative_to(ckpt)), legacy
        try:
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size == 0:
                return f"{name} is empty"
            if path.suffix == ".json":
                value = json.loads(path.read_text())
                if name == "state.json" and not isinstance(value, dict):
                    return f"{name} holds no state object"
            elif path.suffix == ".safetensors":
                with safe_open(str(path), "pt"):
                    pass
            elif path.suffix == ".pt":
                with zipfile.ZipFile(path) as z:
                    z.infolist()
        except Exception as e:
            return f"{name}: {_reason(e)}"
    return None


def damaged_checkpoint(
    ckpt: Path, problem: str, pattern: str = "step-*", files: tuple[str, ...] = STEP_FILES
) -> RCDMError:
    """The one-line error for a damaged checkpoint: which file, why, and the newest intact older checkpoint."""
    run_dir = ckpt.parent.parent
    older = [p for p in reversed(complete_checkpoints(run_dir, pattern)) if p.name < ckpt.name]
    intact = next((p for p in older if checkpoint_problem(p, files) is None), None)
    aside = run_dir / f"damaged-{ckpt.name}"
    if intact is not None:
        fix = (
            f"{intact.name} is intact: move the damaged one aside (mv {shlex.quote(str(ckpt))} "
            f"{shlex.quote(str(aside))}) and run with --resume again to continue from {intact.name}"
        )
    else:
        fix = "no older checkpoint is intact: restore the file, or start again with a new --out"
    return RCDMError(f"checkpoint {ckpt.name} in {str(run_dir)!r} is damaged ({problem}); {fix}")


def resume_checkpoint(
    run_dir: str | Path, pattern: str = "step-*", files: tuple[str, ...] = STEP_FILES
) -> Path | None:
    """The newest complete checkpoint to resume from, checked (`checkpoint_problem`); None when there is none.

    A damaged one raises `damaged_checkpoint`'s error: it is never skipped silently for an older one.
    """
    ckpt = latest_checkpoint(run_dir, pattern)
    if ckpt is not None and (problem := checkpoint_problem(ckpt, files)) is not None:
        raise damaged_checkpoint(ckpt, problem, pattern, files)
    return ckpt


@contextlib.contextmanager
def reading_checkpoint(
    ckpt: Path, name: str, pattern: str = "step-*", files: tuple[str, ...] = STEP_FILES
) -> Iterator[None]:
    """Turn a failure to read `name` from checkpoint `ckpt` (damage the cheap check missed) into its error."""
    try:
        yield
    except RCDMError:
        raise
    except Exception as e:
        raise damaged_checkpoint(ckpt, f"{name}: {_reason(e)}", pattern, files) from e


# --- a full disk --------------------------------------------------------------------------------------------


def nbytes(*states: Mapping) -> int:
    """Bytes of the tensors in (nested) state dicts: what writing them needs, about."""
    total = 0
    for state in states:
        for v in state.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
            elif isinstance(v, Mapping):
                total += nbytes(v)
    return total


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


@contextlib.contextmanager
def reporting_full_disk(
    run_dir: Path,
    what: str,
    *,
    needed: int | None = None,
    partial: Path | None = None,
    pattern: str = "step-*",
) -> Iterator[None]:
    """Turn a write that failed for lack of space into a one-line DiskFullError: where, how much was needed (when
    known), and which checkpoint is intact; the partial write `partial` is removed to give the space back."""
    try:
        yield
    except RCDMError:
        raise
    except Exception as e:
        if not is_disk_full(e, run_dir, needed):
            raise
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        full, disk = run_dir, f"the disk holding {str(run_dir)!r}"
        if partial is None and isinstance(e, OSError) and e.filename:  # the file may be elsewhere (/dev/shm)
            full, disk, what = Path(e.filename), "the disk", repr(str(e.filename))
        free = free_bytes(full)
        sizes = ", ".join(
            s
            for s in (
                f"needs about {_mb(needed)}" if needed is not None else "",
                f"{_mb(free)} free" if free is not None else "",
            )
            if s
        )
        kept = latest_checkpoint(run_dir, pattern)
        where = (
            f"the last checkpoint, {kept.name}, is intact"
            if kept is not None
            else "no checkpoint was written yet"
        )
        raise DiskFullError(
            f"{disk} is full: could not write {what}"
            + (f" ({sizes})" if sizes else "")
            + f"; {where}: free some space (or move the run folder) and run again with --resume"
        ) from e


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    ema_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    keep: int,
) -> Path:
    """Write RUN_DIR/checkpoints/step-NNNNNNNN atomically (temp folder + rename) and prune old ones.

    A full disk raises DiskFullError (the partial folder removed, the previous checkpoint intact)."""
    ck = run_dir / CHECKPOINTS
    ck.mkdir(parents=True, exist_ok=True)
    final = ck / f"step-{step:08d}"
    tmp = ck / f".tmp-step-{step:08d}-{os.getpid()}"
    needed = nbytes(model.state_dict(), ema_model.state_dict(), *optimizer.state.values())
    with (
        reporting_full_disk(run_dir, f"checkpoint {final.name}", needed=needed, partial=tmp),
        atomic_dir(final, tmp) as out,
    ):
        model.save_pretrained(out / "model")
        ema_model.save_pretrained(out / "ema")
        torch.save(optimizer.state_dict(), out / "optimizer.pt")
        (out / "state.json").write_text(json.dumps({"step": step}))
    prune_checkpoints(run_dir, keep)
    return final
