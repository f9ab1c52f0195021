"""One writer per folder: a lock file held by a process (pid, host, start time, command), which a second rcdm
process meets as a one-line refusal naming the first.

`run_lock` guards a run folder (`rcdm train`, `rcdm recipe ssl`); `output_lock` guards an output path (`rcdm sample`,
`rcdm encode`). The lock is an flock, released by the kernel when its process dies (even by SIGKILL).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import NO_SPACE_ERRNOS, DiskFullError, RCDMError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the lock falls back to the pid check alone
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _holder(text: str) -> dict | None:
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def _read_holder(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    return _holder(os.read(fd, 4096).decode(errors="replace"))


def _describe(info: dict) -> str:
    return f"{info.get('command', 'rcdm')} (pid {info['pid']} on {info.get('host', '?')} since {info.get('since', '?')})"


def _busy(run_dir: Path, info: dict | None) -> RCDMError:
    who = _describe(info) if info else "another process"
    return RCDMError(
        f"{str(run_dir)!r} is in use by {who}: wait for it to finish or stop it, or choose another --out "
        "(two runs in one folder would delete each other's checkpoints)"
    )


@contextlib.contextmanager
def run_lock(run_dir: str | Path, command: str) -> Iterator[None]:
    """Hold RUN_DIR/.lock (pid, host, start time, command) while the block writes the run folder.

    A second process is refused with an RCDMError that names the holder. The lock is an flock, which the kernel
    releases when its process dies (even by SIGKILL); a lock file left by a process that is gone is taken over
    with a warning. On filesystems without flock the pid in the file is checked instead (this host only).
    """
    run_dir = Path(run_dir)
    with _lock(run_dir / LOCK_NAME, command, lambda info: _busy(run_dir, info), "the run folder's lock file"):
        yield


@contextlib.contextmanager
def _lock(path: Path, command: str, busy: Callable[[dict | None], RCDMError], what: str) -> Iterator[None]:
    """Hold the lock file `path` (see `run_lock`); `busy(holder)` is the error for a second process."""
    host = socket.gethostname()
    fd = -1
    for _ in range(20):  # the holder may unlink the file between our open and our flock: then open it again
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RCDMError(
                f"cannot create {what} {str(path)!r} ({e.strerror or e}): make the folder "
                "writable, or remove what is in the way"
            ) from None
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "no fcntl")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_holder(fd)
            os.close(fd)
            raise busy(info) from None
        except OSError:  # flock unsupported here (some network filesystems): trust a live pid on this host
            info = _read_holder(fd)
            if info and info["pid"] != os.getpid() and (info.get("host") != host or _pid_alive(info["pid"])):
                os.close(fd)
                raise busy(info) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise RCDMError(
            f"could not take the lock {str(path)!r}: it keeps changing; is another rcdm starting?"
        )
    old = _read_holder(fd)
    if old and old["pid"] != os.getpid():
        log.warning("%s was left by %s, which is gone: taking it over", path, _describe(old))
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    mine = json.dumps({"pid": os.getpid(), "host": host, "since": since, "command": command})
    # a full disk fails here first, before any work: say so, and leave no empty lock behind
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, mine.encode())
    except OSError as e:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        if e.errno in NO_SPACE_ERRNOS:
            raise DiskFullError(
                f"the disk holding {str(path.parent)!r} is full: nothing was written; free some space and run again"
            ) from None
        raise RCDMError(
            f"cannot write {what} {str(path)!r} ({e.strerror or e}): make the folder writable"
        ) from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it: a waiting process re-opens the new file
        os.close(fd)


@contextlib.contextmanager
def output_lock(target: str | Path, flag: str = "--out", command: str = "rcdm") -> Iterator[None]:
    """Hold an exclusive lock on an output path (`run_lock`'s kind, in `.NAME.lock` beside it); a second rcdm process
    writing to the same path is refused with a line naming the holder instead of silently overwriting it."""
    target = Path(target)
    lock = target.parent / f".{target.name}.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RCDMError(f"cannot write {flag} {str(target)!r}: {e.strerror or e}") from None

    def busy(info: dict | None) -> RCDMError:
        who = _describe(info) if info else "another process"
        return RCDMError(
            f"{flag} {str(target)!r} is being written by {who}: wait for it to finish, or choose another {flag}"
        )

    with _lock(lock, command, busy, f"the lock file of {flag}"):
        yield
