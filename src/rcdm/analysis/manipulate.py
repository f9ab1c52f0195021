"""Manipulation by the dimensions an image shares with its nearest neighbours (the paper's finding 4).

The published algorithm: take the k nearest neighbours (cosine, k = 20) of the source's representation among a
set of representations; a dimension is "common" when it is non-zero (> threshold) in more than n_common of them
(14). Setting the common dimensions to zero keeps what is specific to the image; copying them from a target image
transfers what the target shares with its kind. "Non-zero" fits post-ReLU features (ResNet pooled features are
>= 0); for features with negative values raise `threshold` or use this with care.

Neighbour search never builds an N x N matrix: `topk_cosine` scans the bank in chunks (a tensor, or a
memory-mapped safetensors cache read slice by slice), or uses faiss when installed and the bank is in memory.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from tqdm.auto import tqdm

from ..data import batched, list_images, load_views
from ..diffusion import SamplingConfig, resolve_sampling, sample_many
from ..encoders import Encoder
from ..encoders.cache import cache_file, cached_representations, check_finite_rows
from ..errors import RCDMError
from ..figures import grid, number
from ..model import RCDM
from ._common import image_paths

Bank = torch.Tensor | str | Path  # (N, dim) tensor, or a safetensors file holding 'representations' (N, dim)


def bank_size(bank: Bank) -> tuple[int, int]:
    """(N, dim) of a bank without reading it."""
    if isinstance(bank, torch.Tensor):
        return int(bank.shape[0]), int(bank.shape[1])
    with safe_open(str(bank), framework="pt") as f:
        n, d = f.get_slice("representations").get_shape()
    return int(n), int(d)


def iter_bank(bank: Bank, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, rows (c, dim) float32) over the bank; a file is read one slice at a time (memory-mapped)."""
    if isinstance(bank, torch.Tensor):
        for s, e in batched(bank.shape[0], chunk):
            yield s, bank[s:e].float()
        return
    with safe_open(str(bank), framework="pt") as f:
        sl = f.get_slice("representations")
        n = sl.get_shape()[0]
        for s, e in batched(n, chunk):
            rows = sl[s:e].float()
            check_finite_rows(rows, bank, start=s)
            yield s, rows


def topk_cosine(
    queries: torch.Tensor,
    bank: Bank,
    k: int,
    *,
    chunk: int = 65_536,
    use_faiss: bool | None = None,  # None: faiss when installed and the bank is an in-memory tensor
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k rows of `bank` with the highest cosine to each query.

    queries (Q, dim); bank (N, dim) tensor or safetensors path. Returns (scores (Q, k) float32 descending,
    indices (Q, k) int64). Memory: O(Q * (chunk + k)), never O(N^2).
    """
    n, dim = bank_size(bank)
    if k < 1 or k > n:
        raise RCDMError(f"cannot take k={k} nearest neighbours among {n} representations: use 1 <= k <= {n}")
    if queries.shape[-1] != dim:
        raise RCDMError(f"queries are {queries.shape[-1]}-d but the bank holds {dim}-d representations")
    q = F.normalize(queries.float(), dim=-1)
    faiss_ok = importlib.util.find_spec("faiss") is not None
    if (use_faiss or (use_faiss is None and faiss_ok)) and isinstance(bank, torch.Tensor) and faiss_ok:
        import faiss

        index = faiss.IndexFlatIP(dim)
        index.add(F.normalize(bank.float(), dim=-1).numpy())
        scores, idx = index.search(q.numpy(), k)
        return torch.from_numpy(scores), torch.from_numpy(idx).long()
    best_s = torch.full((q.shape[0], 0), -float("inf"))
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
    for start, rows in tqdm(
        iter_bank(bank, chunk), total=-(-n // chunk), disable=None if progress else True, desc="neighbours"
    ):
        sims = q @ F.normalize(rows, dim=-1).T
        cand_s = torch.cat([best_s, sims], dim=1)
        cand_i = torch.cat([best_i, torch.arange(start, start + rows.shape[0]).expand(q.shape[0], -1)], dim=1)
        top = cand_s.topk(min(k, cand_s.shape[1]), dim=1)
        best_s, best_i = top.values, cand_i.gather(1, top.indices)
    return best_s, best_i


log = logging.getLogger(__name__)

# A manipulation where at least this share of the dimensions counts as common is flagged: nothing specific remains.
MOSTLY_COMMON = 0.9


def common_dimensions(neighbours: torch.Tensor, n_common: int = 14, threshold: float = 0.0) -> torch.Tensor:
    """neighbours (k, dim) -> (dim,) bool: dimensions > threshold in MORE than n_common of the k rows."""
    return (neighbours > threshold).sum(0) > n_common


@dataclass
class RepresentationSet:
    """The representations of a folder: files (N,), representations (N, dim) tensor or a safetensors path."""

    files: list[Path]
    bank: Bank

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """(K,) indices -> (K, dim) float32."""
        if isinstance(self.bank, torch.Tensor):
            return self.bank[indices].float()
        with safe_open(str(self.bank), framework="pt") as f:
            sl = f.get_slice("representations")
            return torch.cat([sl[int(i) : int(i) + 1].float() for i in indices])


def folder_representations(
    encoder: Encoder,
    folder: str | Path,
    *,
    cache: str | Path | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> RepresentationSet:
    """Encode every image under `folder`; with `cache` (a folder) reuse or write one representation cache file
    there (`rcdm.encoders.cache`), returned as a path that the neighbour search reads in chunks."""
    files = list_images(folder)
    if cache is None:
        return RepresentationSet(
            files, encoder.encode_files(files, batch_size, progress=progress).contiguous()
        )
    path = cache_file(cache, encoder, files)
    return RepresentationSet(
        files, cached_representations(encoder, files, path, batch_size=batch_size, progress=progress)
    )


@dataclass
class ManipulationResult:
    """source / target (3, S, S) in [0, 1]; representations (3, dim): source, common dims zeroed, common dims
    from the target; samples (3, N, 3, S, S) in [0, 1] (column j shares noise across rows); common (dim,) bool;
    neighbours: the k files with their cosine to the source."""

    names: list[str]
    source: torch.Tensor
    target: torch.Tensor
    representations: torch.Tensor
    samples: torch.Tensor
    common: torch.Tensor
    neighbours: list[tuple[str, float]]
    settings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    ROWS = ("source", "common dims zeroed", "common dims from target")

    def summary(self) -> dict:
        return {
            "source": self.names[0],
            "target": self.names[1],
            "rows": list(self.ROWS),
            "num_common": int(self.common.sum()),
            "common_dimensions": [int(i) for i in self.common.nonzero().flatten()],
            "neighbours": [{"file": f, "cosine": number(c)} for f, c in self.neighbours],
            "settings": self.settings,
            "warnings": self.warnings,
        }


def manipulate(
    model: RCDM,
    encoder: Encoder,
    source: str | Path,
    target: str | Path,
    neighbours: str | Path | RepresentationSet,
    *,
    k: int = 20,
    n_common: int = 14,
    threshold: float = 0.0,
    cache: str | Path | None = None,
    num_samples: int = 4,
    sampling: SamplingConfig | None = None,
    progress: bool = False,
) -> ManipulationResult:
    """The published manipulation: zero, or copy from `target`, the dimensions common to the source's k
    nearest neighbours among `neighbours` (a folder of images, or precomputed representations)."""
    cfg = resolve_sampling(model, sampling)
    if not math.isfinite(threshold):
        raise RCDMError(f"--threshold {threshold} must be a finite number ('non-zero' means > threshold)")
    if not 0 <= n_common < k:
        raise RCDMError(
            f"n_common={n_common} must be in 0..k-1 (k={k}): a dimension counts if non-zero in more"
        )
    if isinstance(neighbours, RepresentationSet):
        bank = neighbours
    else:
        folder = Path(neighbours).expanduser()
        if not folder.is_dir():
            raise RCDMError(f"--neighbours {str(folder)!r} is not a folder: pass a folder of images")
        bank = folder_representations(
            encoder, folder, cache=cache, batch_size=cfg.batch_size, progress=progress
        )
    if len(bank.files) < k:
        raise RCDMError(
            f"the neighbour folder has {len(bank.files)} images but k={k} neighbours are needed: "
            f"add images or lower --k (and --n-common below it)"
        )
    paths = [image_paths([source])[0], image_paths([target])[0]]
    views, enc_views = load_views(
        paths, model.config.sample_size, encoder.preprocessing.input_size, encoder.preprocessing.resample
    )
    rep_s, rep_t = encoder.encode(enc_views)
    scores, idx = topk_cosine(rep_s[None], bank.bank, k, progress=progress)
    common = common_dimensions(bank.rows(idx[0]), n_common, threshold)
    warnings = []
    if int(common.sum()) >= MOSTLY_COMMON * common.numel():
        warnings.append(
            f"{int(common.sum())} of {common.numel()} dimensions count as common (> {threshold:g} in more than "
            f"{n_common} of the {k} neighbours): the published rule expects sparse features, and these are not, "
            "so 'zeroed' removes nearly the whole representation; raise --threshold (e.g. to the features' median) "
            "to find what the neighbours share"
        )
        log.warning("manipulation: %s", warnings[-1])
    zeroed = torch.where(common, torch.zeros_like(rep_s), rep_s)
    copied = torch.where(common, rep_t, rep_s)
    reps = torch.stack([rep_s, zeroed, copied])
    samples = sample_many(
        model, reps, num_samples, cfg, shared_noise=True, progress=progress, desc="manipulation"
    )
    return ManipulationResult(
        names=[Path(p).stem for p in paths],
        source=views[0],
        target=views[1],
        representations=reps,
        samples=samples,
        common=common,
        neighbours=[(str(bank.files[int(i)]), float(s)) for s, i in zip(scores[0], idx[0], strict=True)],
        warnings=warnings,
        settings=dict(
            k=k,
            n_common=n_common,
            threshold=threshold,
            num_samples=num_samples,
            **cfg.record(),
        ),
    )


def manipulation_figure(res: ManipulationResult) -> Image.Image:
    """Rows: source, zeroed, copied; column 0 the source (target on the last row), then the samples."""
    firsts = [res.source, res.source, res.target]
    rows = [[first, *res.samples[r]] for r, first in enumerate(firsts)]
    cols = ["input"] + [f"sample {j}" for j in range(res.samples.shape[1])]
    n = int(res.common.sum())
    return grid(
        rows,
        row_labels=list(ManipulationResult.ROWS),
        col_labels=cols,
        title=f"manipulation of {res.names[0]} ({n} common dims) with {res.names[1]}",
    )


__all__ = [
    "ManipulationResult",
    "RepresentationSet",
    "common_dimensions",
    "folder_representations",
    "manipulate",
    "manipulation_figure",
    "topk_cosine",
]
