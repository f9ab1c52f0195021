"""Published weight files: the download cache, integrity checks, safe reading and strict key checks.

Files go to `$RCDM_CACHE/official` (default `~/.cache/rcdm/official`). A download shows a tqdm progress bar,
is checked against its published size and sha256 and only then moved into place. Files whose sha256 is not
published (most of them: see `Weights`) get the digest of their first use recorded beside them (FILE.sha256),
and every later use is checked against it: that catches a file that changed, not one that was wrong from the
start. Offline, the error is one line naming the URL and the exact cache path to put the file at. Checkpoints are
read with
`torch.load(weights_only=True)` (never arbitrary unpickling) or safetensors.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import RCDMError, first_line

log = logging.getLogger(__name__)

LICENSE_NOTICE = (
    "The published RCDM checkpoints and their SSL encoders (Meta AI / FAIR) are licensed CC-BY-NC 4.0: "
    "non-commercial use only, with attribution (Bordes, Balestriero, Vincent, TMLR 2022; DINO, SimCLR/VISSL, "
    "Barlow Twins, VICReg). See https://creativecommons.org/licenses/by-nc/4.0/"
)


def cache_dir(*parts: str) -> Path:
    """`$RCDM_CACHE/<parts>` (default ~/.cache/rcdm/<parts>); not created."""
    root = Path(os.environ.get("RCDM_CACHE", Path.home() / ".cache" / "rcdm")).expanduser()
    return root.joinpath(*parts)


def official_cache() -> Path:
    """Where published checkpoints and their converted models live: $RCDM_CACHE/official."""
    return cache_dir("official")


@dataclass(frozen=True)
class Weights:
    """One published weight file (timm-style record): where it is, what it must be, and whose it is."""

    url: str
    filename: str
    size: int | None = None  # bytes; None: not published
    # full hex digest or a prefix of at least 8 hex digits; None: not published, so the first download's digest
    # is recorded beside the file (FILE.sha256) and every later use is checked against it
    sha256: str | None = None
    license: str = "CC-BY-NC-4.0"
    paper: str = ""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def recorded_digest_path(path: Path) -> Path:
    """Where the digest of a file without a published sha256 is recorded: FILE.sha256 beside it."""
    return path.with_name(path.name + ".sha256")


def verify_file(path: Path, remote: Weights) -> None:
    """Raise RCDMError (and keep the file) when `path` does not have the published size / sha256, or, without a
    published sha256, the digest recorded at its first use (recorded now when there is none yet)."""
    if remote.size is not None and path.stat().st_size != remote.size:
        raise RCDMError(
            f"{str(path)!r} has {path.stat().st_size} bytes but {remote.url} has {remote.size}: "
            f"delete it and download again"
        )
    digest = sha256_file(path)
    if remote.sha256 is not None:
        if not digest.startswith(remote.sha256.lower()):
            raise RCDMError(
                f"{str(path)!r} has sha256 {digest[:16]}... but {remote.url} has {remote.sha256[:16]}...: "
                f"delete it and download again"
            )
        return
    record = recorded_digest_path(path)
    if record.is_file():
        first = record.read_text().split()[0]
        if digest != first:
            raise RCDMError(
                f"{str(path)!r} has sha256 {digest[:16]}... but had {first[:16]}... when first used "
                f"(recorded in {record.name}): it changed since; delete both files and download again"
            )
    elif path.suffix != ".part":
        try:
            record.write_text(digest + "\n")
        except OSError:
            log.warning("cannot record the sha256 of %s in %s", path, record)


def _notice_license(folder: Path, license: str) -> None:
    """Log the weights' license once per cache (a marker file remembers it was shown)."""
    if not license.startswith("CC-BY-NC"):
        return
    marker = folder / ".license-shown"
    if marker.exists():
        return
    log.warning(LICENSE_NOTICE)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(LICENSE_NOTICE + "\n")
    except OSError:
        pass


def fetch(
    remote: Weights,
    folder: Path | None = None,
    *,
    progress: bool = True,
    instead: str = "pass --weights PATH",
) -> Path:
    """The local path of `remote`, downloading it into `folder` (default: the official cache) on first use.

    Every call checks the file (`verify_file`: size, published sha256, or else the digest recorded at its first
    use), whether it was downloaded or put there by hand. Raises RCDMError naming the URL and the cache path
    when the download fails (e.g. offline); `instead` ends that line with what else the user can do.
    """
    folder = Path(folder) if folder is not None else official_cache()
    dst = folder / remote.filename
    if not dst.is_file():
        _download(remote, dst, progress, instead)
    verify_file(dst, remote)
    return dst


def _download(remote: Weights, dst: Path, progress: bool, instead: str) -> None:
    """Download to DST.part, check it against the published size / sha256, then move it into place."""
    _notice_license(dst.parent, remote.license)
    log.info("downloading %s to %s", remote.url, dst)
    part = dst.with_name(dst.name + ".part")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(remote.url, str(part), progress=progress)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise RCDMError(
            f"cannot download {remote.url} ({reason}): if offline, put the file at {dst} (or {instead})"
        ) from None
    try:
        verify_file(part, remote)
    except RCDMError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dst)


def _numpy_scalar_globals() -> list:
    """numpy scalars and dtypes, which training loops store next to their tensors (iteration counts, meters).

    These rebuild plain values only; torch's weights_only documentation names them as safe to allow.
    """
    import numpy as np

    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    dtype_classes = [
        type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?")
    ]
    return [scalar, np.dtype, *dtype_classes]


# Harmless classes that published training checkpoints pickle next to their tensors (DINO stores its argparse
# Namespace; VISSL-style checkpoints may hold numpy scalars). Nothing else is unpickled.
_SAFE_GLOBALS = [argparse.Namespace, *_numpy_scalar_globals()]


def _unsafe_globals(path: Path) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # an unreadable file: the caller's message says so
        return ""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _SAFE_GLOBALS}
    names = [n for n in names if n not in allowed]
    return f"it pickles {', '.join(names)}, which rcdm does not unpickle" if names else ""


def read_checkpoint(path: str | Path) -> Mapping:
    """A `.pt/.pth/.torch` (torch.load, weights_only=True) or `.safetensors` file -> its (nested) dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RCDMError(f"checkpoint not found: {str(path)!r}; pass the path of a .pt or .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise RCDMError(f"cannot read safetensors file {str(path)!r}: {first_line(e)}") from None
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        why = _unsafe_globals(path) or f"{type(e).__name__}: not a readable torch file"
        raise RCDMError(
            f"cannot read {str(path)!r} with torch.load(weights_only=True) ({why}): "
            f"rcdm reads only plain state dicts; re-save it with torch.save(state_dict) or as .safetensors"
        ) from None
    if not isinstance(obj, Mapping):
        raise RCDMError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict")
    return obj


def check_keys(
    state: Mapping[str, torch.Tensor | tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...] | torch.Size],
    what: str,
    layout: str = "the published layout",
) -> None:
    """Refuse `state` unless its keys and shapes are exactly `expected` (key -> shape); names the bad keys.

    state: key -> tensor, or key -> shape (e.g. read from a safetensors header without loading the data).
    """

    def shape(v: torch.Tensor | tuple[int, ...]) -> tuple[int, ...]:
        return tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)

    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    misshapen = [
        f"{k} {shape(state[k])} (expected {tuple(expected[k])})"
        for k in expected
        if k in state and shape(state[k]) != tuple(expected[k])
    ]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", extra), ("misshapen keys", misshapen)):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            problems.append(f"{label} {', '.join(keys[:5])}{more}")
    if problems:
        raise RCDMError(f"{what} does not match {layout}: {'; '.join(problems)}")


def subtree(obj: Mapping, path: str, what: str) -> Mapping:
    """obj['a']['b']... for path 'a.b'; RCDMError naming the first absent key."""
    node: object = obj
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            have = ", ".join(list(node)[:8]) if isinstance(node, Mapping) else type(node).__name__
            raise RCDMError(f"{what} has no {path!r} (stopped at {part!r}; found: {have})")
        node = node[part]
    if not isinstance(node, Mapping):
        raise RCDMError(f"{what}: {path!r} is a {type(node).__name__}, not a state dict")
    return node


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    what: str,
    *,
    optional: tuple[str, ...] = (),
    layout: str = "the network",
) -> None:
    """Load every key of `module` from `state` (same names and shapes, nothing left over), else RCDMError.

    BatchNorm's `num_batches_tracked` counters (unused in eval mode) may be absent: they are zero-filled.
    optional: key prefixes that the file may lack (e.g. a classifier that an encoder-only file leaves out);
    those keep the module's values. Floating tensors are loaded as float32. A module built on the meta device
    takes the file's tensors as they are (no random init happened).
    """
    current = module.state_dict()
    expected = {k: v.shape for k, v in current.items()}
    state = dict(state)
    for k in expected:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)
    need = {k: s for k, s in expected.items() if k in state or not (optional and k.startswith(optional))}
    check_keys(state, need, what, layout)
    meta = any(v.is_meta for v in current.values())
    module.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()},
        strict=len(need) == len(expected),
        assign=meta,
    )


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """key -> shape of a .safetensors file, read from its header only (no tensor data); one-line RCDMError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:
        raise RCDMError(f"cannot read safetensors file {str(path)!r}: {first_line(e)}") from None


def first_nonfinite(state: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding a NaN or inf, or None (one pass over each tensor)."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None
