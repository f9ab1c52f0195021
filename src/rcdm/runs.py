"""Run folders: training checkpoints (save, check, find the newest, read, prune) and disk-full reporting.

A run folder holds run.json, checkpoints/step-NNNNNNNN/{model,ema,optimizer.pt,state.json} and, when done,
model/. Every folder is written through `rcdm.files.atomic_dir` (temporary name, fsync, rename), so a run killed
at any point (even mid-save) leaves only complete folders under their final names. One process at a time writes
a run folder: it holds RUN/.lock (`rcdm.locks.run_lock`), which names it to anyone else who tries.
`Checkpoints` is the one object the training loops (train, prior, pack.ssl) find, read and write them through.
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
from typing import Any

import torch
from diffusers.models.modeling_utils import ModelMixin
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import DiskFullError, RCDMError
from .files import atomic_dir, free_bytes, is_disk_full
from .model import WEIGHTS_FILE

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
# The files of a complete rcdm.train checkpoint, relative to its folder (what its `Checkpoints.save` writes).
STEP_FILES: tuple[str, ...] = (
    "model/config.json",
    f"model/{WEIGHTS_FILE}",
    "ema/config.json",
    f"ema/{WEIGHTS_FILE}",
    "optimizer.pt",
    "state.json",
)


def _reason(e: BaseException) -> str:
    if isinstance(e, pickle.UnpicklingError):
        return "it holds pickled objects or is not a torch file; rcdm reads only plain tensors (weights_only)"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


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


class Checkpoints:
    """The checkpoints of one run folder, RUN/checkpoints/NAME: find, check, read, save and prune them.

    Checkpoint n is named `pattern` with its '*' replaced by n in `digits` digits ('step-*' -> step-00001000) and
    holds `files`; its state.json, written last, marks it complete. Only the holder of the run's lock (or the one
    process writing the run) may save, prune or sweep: another run's temporary folder is in use.
    """

    def __init__(
        self,
        run_dir: str | Path,
        pattern: str = "step-*",
        files: tuple[str, ...] = STEP_FILES,
        digits: int = 8,  # of n in a checkpoint's name
    ) -> None:
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / CHECKPOINTS
        self.pattern, self.files, self.digits = pattern, files, digits

    def name(self, n: int) -> str:
        """Checkpoint n's folder name: 'step-*' -> step-00001000."""
        return self.pattern.replace("*", f"{n:0{self.digits}d}")

    def number(self, ckpt: Path) -> int:
        """n of checkpoint folder `ckpt` (`name`'s inverse): step-00001000 -> 1000."""
        head, _, tail = self.pattern.partition("*")
        return int(ckpt.name.removeprefix(head).removesuffix(tail))

    # --- finding -------------------------------------------------------------------------------------------

    def complete(self) -> list[Path]:
        """The complete checkpoints (with state.json), oldest first; interrupted saves are ignored."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(self.pattern) if (p / "state.json").is_file())

    def holds(self, n: int) -> bool:
        """Is checkpoint n complete (its state.json written)?"""
        return (self.folder / self.name(n) / "state.json").is_file()

    def latest(self) -> Path | None:
        """The newest complete checkpoint (temporary folders from an interrupted save are ignored)."""
        done = self.complete()
        return done[-1] if done else None

    def resume(self) -> Path | None:
        """The newest complete checkpoint to resume from, checked (`problem`); None when there is none.

        A damaged one raises `damaged`'s error: it is never skipped silently for an older one.
        """
        ckpt = self.latest()
        if ckpt is not None and (problem := self.problem(ckpt)) is not None:
            raise self.damaged(ckpt, problem)
        return ckpt

    def start(self, resume: bool, *, sweep: bool = True) -> Path | None:
        """The checkpoint a run starts from: with `resume`, `resume()` (and leftovers swept when `sweep`); without,
        None, refusing a run folder that already holds checkpoints."""
        if not resume:
            if self.latest() is not None:
                raise RCDMError(
                    f"{str(self.run_dir)!r} already holds checkpoints: pass --resume to continue, or a new --out"
                )
            return None
        ckpt = self.resume()  # a damaged newest one is named, never skipped
        if sweep:
            self.sweep()
        return ckpt

    # --- damage ----------------------------------------------------------------------------------------------

    def problem(self, ckpt: Path) -> str | None:
        """Why a checkpoint folder cannot be resumed from ('optimizer.pt: BadZipFile: ...'), or None when it reads.

        Checks structure, cheaply: every file present; JSON parses (state.json to an object); a safetensors
        header parses and covers its file; a .pt file's zip directory reads. Values are not checked (there is no
        checksum).
        """
        for name in self.files:
            path = ckpt / name
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

    def damaged(self, ckpt: Path, problem: str) -> RCDMError:
        """The one-line error for a damaged checkpoint: which file, why, and the newest intact older checkpoint."""
        older = [p for p in reversed(self.complete()) if p.name < ckpt.name]
        intact = next((p for p in older if self.problem(p) is None), None)
        aside = self.run_dir / f"damaged-{ckpt.name}"
        if intact is not None:
            fix = (
                f"{intact.name} is intact: move the damaged one aside (mv {shlex.quote(str(ckpt))} "
                f"{shlex.quote(str(aside))}) and run with --resume again to continue from {intact.name}"
            )
        else:
            fix = "no older checkpoint is intact: restore the file, or start again with a new --out"
        return RCDMError(f"checkpoint {ckpt.name} in {str(self.run_dir)!r} is damaged ({problem}); {fix}")

    # --- reading -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def reading(self, ckpt: Path, name: str) -> Iterator[None]:
        """Turn a failure to read `name` from checkpoint `ckpt` (damage `problem` missed) into `damaged`'s error."""
        try:
            yield
        except RCDMError:
            raise
        except Exception as e:
            raise self.damaged(ckpt, f"{name}: {_reason(e)}") from e

    def read(self, ckpt: Path, name: str, cls: type[ModelMixin] | None = None) -> Any:
        """One part of checkpoint `ckpt` as `save` wrote it: a folder NAME/ by `cls.from_pretrained`, NAME.safetensors
        as its tensors, NAME.pt as its state (plain tensors only: weights_only) on the CPU. A part that does not
        read raises `damaged`'s error, naming it."""
        path = ckpt / name
        with self.reading(ckpt, name):
            if cls is not None:
                return cls.from_pretrained(path)
            if path.suffix == ".safetensors":
                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)

    def state(self, ckpt: Path, *counts: str) -> dict:
        """Checkpoint `ckpt`'s state.json, its `counts` (e.g. "step") as ints; a missing or bad one names the file."""
        with self.reading(ckpt, "state.json"):
            state = json.loads((ckpt / "state.json").read_text())
            return {**state, **{k: int(state[k]) for k in counts}}

    # --- writing -------------------------------------------------------------------------------------------

    def save(self, n: int, state: Mapping, **parts: nn.Module | torch.optim.Optimizer) -> Path:
        """Write checkpoint n atomically (temporary folder + rename): each part by its kind, then state.json.

        A diffusers model -> NAME/ (save_pretrained); another module -> NAME.safetensors (its state dict); an
        optimizer -> NAME.pt (its state dict). A full disk raises DiskFullError (the partial folder removed, the
        previous checkpoint intact).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / self.name(n)
        tmp = self.folder / f".tmp-{final.name}-{os.getpid()}"
        needed = nbytes(*(p.state_dict() if isinstance(p, nn.Module) else p.state for p in parts.values()))
        with (
            self.reporting_full_disk(f"checkpoint {final.name}", needed=needed, partial=tmp),
            atomic_dir(final, tmp) as out,
        ):
            for name, part in parts.items():
                if isinstance(part, ModelMixin):
                    part.save_pretrained(out / name)
                elif isinstance(part, nn.Module):
                    tensors = {k: v.detach().cpu().contiguous() for k, v in part.state_dict().items()}
                    save_file(tensors, str(out / f"{name}.safetensors"))
                else:
                    torch.save(part.state_dict(), out / f"{name}.pt")
            (out / "state.json").write_text(json.dumps(state))
        return final

    def _leftovers(self) -> list[Path]:
        """Checkpoint folders that a kill during pruning left half deleted: rcdm's own name, no state.json, only
        files rcdm writes there, and older than the newest complete checkpoint (saves are renamed into place
        complete, so nothing else can be missing its state.json)."""
        newest = self.latest()
        if newest is None or not self.folder.is_dir():
            return []
        own = re.compile(re.escape(self.pattern).replace(r"\*", r"\d+") + "$")  # the '*' is digits
        known = {f.split("/")[0] for f in self.files}
        return sorted(
            p
            for p in self.folder.glob(self.pattern)
            if p.is_dir()
            and own.match(p.name)
            and p.name < newest.name
            and not (p / "state.json").exists()
            and all(c.name in known for c in p.iterdir())
        )

    def prune(self, keep: int, every: int | None = None) -> None:
        """Keep the newest `keep` complete checkpoints (all when keep <= 0), then `sweep`. every: only the
        checkpoints whose n it divides count towards `keep`; the others are interim ones (written on time, not on
        a step count), of which only the newest checkpoint of all survives."""
        done = self.complete()
        if every:
            regular = [p for p in done if self.number(p) % every == 0]
            interim = [p for p in done if self.number(p) % every and p != done[-1]]
            doomed = (regular[:-keep] if keep > 0 else []) + interim
        else:
            doomed = done[:-keep] if keep > 0 else []
        for old in doomed:
            # state.json first: a kill in the middle leaves a folder that readers already ignore
            (old / "state.json").unlink(missing_ok=True)
            shutil.rmtree(old, ignore_errors=True)
        self.sweep()

    def sweep(self) -> None:
        """Remove what interrupted saves and prunings left: temporary folders and half-deleted checkpoints (see
        `_leftovers`)."""
        for stale in self.folder.glob(f".tmp-{self.pattern}"):
            shutil.rmtree(stale, ignore_errors=True)
        for half in self._leftovers():
            log.info(
                "removing %s: an incomplete checkpoint (no state.json) left by an interrupted pruning", half
            )
            shutil.rmtree(half, ignore_errors=True)

    # --- a full disk -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def reporting_full_disk(
        self, what: str, *, needed: int | None = None, partial: Path | None = None
    ) -> Iterator[None]:
        """Turn a write that failed for lack of space into a one-line DiskFullError: where, how much was needed
        (when known), and which checkpoint is intact; the partial write `partial` is removed to give the space
        back."""
        try:
            yield
        except RCDMError:
            raise
        except Exception as e:
            if not is_disk_full(e, self.run_dir, needed):
                raise
            if partial is not None:
                shutil.rmtree(partial, ignore_errors=True)
            full, disk = self.run_dir, f"the disk holding {str(self.run_dir)!r}"
            if (
                partial is None and isinstance(e, OSError) and e.filename
            ):  # the file may be elsewhere (/dev/shm)
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
            kept = self.latest()
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
