"""The representation cache: the representations of a list of image files under one encoder, as safetensors.

One file holds `representations` (N, dim) (each file's centre square) and, when asked for, `flipped` (N, dim)
(its mirror image). Its metadata is the key: encoder identity + feature + the file list's digest; a file with
another key is refused, never silently reused. `train --feature-cache FILE` and `analyze manipulate --cache DIR`
both use it; large caches are read slice by slice (memory-mapped), never whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data import batched, center_square, files_digest, resize
from ..errors import RCDMError, first_line
from ..files import atomic_file
from .base import Encoder

log = logging.getLogger(__name__)


def cache_key(encoder: Encoder, files: Sequence[Path]) -> dict[str, str]:
    """What a cache must match to be reused: encoder identity, feature and the files' digest."""
    return {"encoder_identity": encoder.identity, "feature": encoder.feature, "files": files_digest(files)}


def cache_file(folder: str | Path, encoder: Encoder, files: Sequence[Path]) -> Path:
    """FOLDER/reps-<16 hex of the key>.safetensors: one file per (encoder, feature, file list)."""
    key = hashlib.sha256(json.dumps(cache_key(encoder, files), sort_keys=True).encode()).hexdigest()[:16]
    return Path(folder).expanduser() / f"reps-{key}.safetensors"


def check_cache(encoder: Encoder, files: Sequence[Path], path: str | Path) -> Path:
    """`path` when its key matches (encoder identity, feature, files); else RCDMError saying to delete it."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            names = set(f.keys())
    except Exception as e:
        raise RCDMError(
            f"representation cache {str(path)!r} is not a readable safetensors file ({first_line(e)}): pass "
            "a new path (rcdm writes the cache there on first use), or delete the file to rebuild it"
        ) from None
    if "representations" not in names:
        raise RCDMError(
            f"{str(path)!r} is not a representation cache (it has no 'representations' tensor): pass a new "
            "path, or delete the file to rebuild it"
        )
    want = cache_key(encoder, files)
    if {k: meta.get(k) for k in want} != want:
        raise RCDMError(
            f"representation cache {str(path)!r} was made for another encoder, feature or file list: "
            "delete it to rebuild"
        )
    return Path(path)


def cached_representations(
    encoder: Encoder,
    files: Sequence[Path],
    path: str | Path,
    *,
    flipped: bool = False,
    batch_size: int = 256,
    progress: bool = False,
    decoded: torch.Tensor | None = None,
) -> Path:
    """The cache at `path` for (encoder, files): built on first use, its key checked on every later one.

    Built atomically (temp file + rename), with a FILE.json beside it that lists the files (for people; the key
    lives in the safetensors metadata). flipped: also hold the mirror images' representations. decoded: the
    files' pixels already in memory, (N, 3, H, W) uint8 (`data.decode_images`), read instead of the files.
    """
    path = Path(path)
    if path.is_dir():
        raise RCDMError(f"representation cache {str(path)!r} is a folder: pass a FILE.safetensors path")
    if path.is_file():
        return check_cache(encoder, files, path)
    t0 = time.perf_counter()
    tensors = {"representations": _encode(encoder, files, batch_size, False, progress, decoded)}
    if flipped:
        tensors["flipped"] = _encode(encoder, files, batch_size, True, progress, decoded)
    log.info(
        "representation cache: %d images at %.0f img/s", len(files), len(files) / (time.perf_counter() - t0)
    )
    meta = {**cache_key(encoder, files), "encoder": encoder.spec}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    path.with_suffix(".json").write_text(json.dumps({**meta, "paths": [str(p) for p in files]}))
    return path


def _encode(
    encoder: Encoder,
    files: Sequence[Path],
    batch_size: int,
    flip: bool,
    progress: bool,
    decoded: torch.Tensor | None,
) -> torch.Tensor:
    """(N, dim) of the files' centre squares (mirrored when `flip`), from `decoded` pixels when given."""
    if decoded is None or encoder.preprocessing.resample != "antialias":
        return encoder.encode_files(files, batch_size, flip=flip, progress=progress).contiguous()
    size, out = encoder.preprocessing.input_size, []
    for s, e in tqdm(
        list(batched(len(files), batch_size)), disable=None if progress else True, desc="encoding"
    ):
        views = resize(center_square(decoded[s:e].float() / 255.0), size)
        out.append(encoder.encode(views.flip(-1) if flip else views, batch_size))
    return torch.cat(out).contiguous()


def load_cache(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a cache file, in memory, each checked finite."""
    tensors = load_file(str(path))
    for name, t in tensors.items():
        check_finite_rows(t, path, name)
    return tensors


def check_finite_rows(
    rows: torch.Tensor, path: str | Path, name: str = "representations", start: int = 0
) -> None:
    """Refuse cached rows holding NaN or inf (a damaged or edited cache), naming the file and the first bad row:
    a representation of NaN would train on garbage or make every neighbour's cosine undefined, silently."""
    bad = ~torch.isfinite(rows.reshape(rows.shape[0], -1)).all(-1) if rows.ndim else ~torch.isfinite(rows)
    if bool(bad.any()):
        first = start + int(bad.nonzero()[0, 0]) if rows.ndim else 0
        raise RCDMError(
            f"representation cache {str(path)!r} holds non-finite values ({name}, row {first}, "
            f"{int(bad.sum())} row(s) in all): delete it to rebuild"
        )
