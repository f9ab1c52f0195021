"""Files and folders written whole or not at all, and output paths checked before any work.

A folder is written under a temporary name beside its final one (.tmp-NAME-PID), fsynced and renamed into place;
a file is written to a temporary name and renamed. A reader never sees half of either, and a process killed at
any point leaves the previous version under the final name. `output_folder` adds the checks and the lock a
command's --out needs. This module knows nothing of models or checkpoints: data, encoders, metrics, training and
the commands all write through it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import NO_SPACE_ERRNOS, DiskFullError, RCDMError
from .locks import output_lock

# --- a full disk ---------------------------------------------------------------------------------------------


def free_bytes(folder: Path) -> int | None:
    with contextlib.suppress(OSError):
        return shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free
    return None


def is_disk_full(e: BaseException, folder: Path, needed: int | None) -> bool:
    """True for ENOSPC / EDQUOT, however the writer wrapped it (torch's zip writer and safetensors raise their
    own errors), or when a write failed while less than `needed` bytes are free."""
    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
            return True
    text = str(e)
    if "No space left" in text or "os error 28" in text or "Disk quota exceeded" in text:
        return True
    free = free_bytes(folder)
    return needed is not None and free is not None and free < needed


def _disk_full_error(e: BaseException, path: Path, flag: str) -> DiskFullError:
    free = free_bytes(path)
    return DiskFullError(
        f"the disk holding {flag} {str(path)!r} is full"
        + (f" ({free / 1e6:,.1f} MB free)" if free is not None else "")
        + ": nothing was written; free some space and run again"
    )


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
    write (`rcdm.runs.Checkpoints.prune` for checkpoints) removes it.
    """
    final = Path(final)
    tmp = Path(tmp) if tmp is not None else _beside(final, "tmp")
    _fresh_dir(tmp)
    yield tmp
    _swap_into(tmp, final)


def _beside(path: Path, kind: str) -> Path:
    """This process's temporary name for `path`, in its folder: .tmp-NAME-PID (being written), .old-NAME-PID."""
    return path.parent / f".{kind}-{path.name}-{os.getpid()}"


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _swap_into(tmp: Path, final: Path) -> None:
    """fsync `tmp`, then rename it to `final`. An existing `final` is first renamed aside and removed after, so
    `final` is never a mix of old and new files, and it is put back when the second rename fails."""
    fsync_tree(tmp)
    if final.exists():
        old = _beside(final, "old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block completes, rename it to `path` (replacing it), so a
    reader never sees half a file and a killed writer leaves the old one. When the block raises, it is removed."""
    path = Path(path)
    tmp = _beside(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except RCDMError:
        raise
    except Exception as e:
        if is_disk_full(e, path.parent, None):
            raise _disk_full_error(e, path, "the file") from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a small file whole or not at all (temporary file + rename): a reader never sees half of it."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def _check_creatable(path: Path, folder: Path, flag: str) -> None:
    """`folder` exists as a writable folder, or its nearest existing ancestor is one (so it can be created)."""
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not probe.is_dir():
        raise RCDMError(f"cannot write {flag} {str(path)!r}: {str(probe)!r} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RCDMError(f"cannot write {flag} {str(path)!r}: {str(probe)!r} is not a writable folder")


def check_writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse (one RCDMError line) an output folder that is a file or cannot be written; checked before any work.

    The folder need not exist: its nearest existing ancestor must then be a writable folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RCDMError(f"{flag} {str(path)!r} is a file, not a folder: choose a folder")
    _check_creatable(path, path, flag)
    return path


def check_writable_file(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output file that is a folder or cannot be written (checked before any work)."""
    path = Path(path)
    if path.is_dir():
        raise RCDMError(f"{flag} {str(path)!r} is a folder: pass a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise RCDMError(f"cannot write {flag} {str(path)!r}: the file is read-only")
    _check_creatable(path, path.parent, flag)
    return path


@contextlib.contextmanager
def output_folder(
    out: str | Path, *, overwrite: bool = False, marker: str, flag: str = "--out", command: str = "rcdm"
) -> Iterator[Path]:
    """Check and lock an output folder before any work, then yield an empty temporary folder beside it; when the
    block completes, the temporary folder becomes `out` (so `out` holds this run's files only, never a mix).

    `out` may be absent or empty. A folder with files needs `overwrite` and must hold `marker` (the file this
    command writes last), so that only an earlier output of the same command is replaced, never files of
    the user's. When the block raises, `out` is untouched and the temporary folder is removed.
    """
    out = check_writable_dir(out, flag)
    with output_lock(out, flag, command):
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
        tmp = _beside(out, "tmp")
        # the lock is ours, so another .tmp-OUT-PID or .old-OUT-PID is what a killed writer left
        own = re.compile(rf"\.(tmp|old)-{re.escape(out.name)}-\d+")
        for stale in out.parent.glob(f".*-{glob.escape(out.name)}-*"):
            if own.fullmatch(stale.name) and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        try:
            _fresh_dir(tmp)
        except OSError as e:
            raise RCDMError(f"cannot write {flag} {str(out)!r}: {e.strerror or e}") from None
        try:
            yield tmp
            _swap_into(tmp, out)
        except RCDMError:
            raise
        except Exception as e:
            if is_disk_full(e, out, None):
                raise _disk_full_error(e, out, flag) from e
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
