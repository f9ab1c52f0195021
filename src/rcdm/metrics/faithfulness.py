"""Faithfulness: is a sample's own representation close to the one it was drawn from?

Pure tensor functions (`retrieval_ranks`, `cosine_to_condition`, `faithfulness_scores`) take the conditioning
representations (N, dim) of N reference images and the representations (N, S, dim) of S samples drawn from each;
`evaluate_faithfulness` is the driver that encodes, samples and re-encodes. The mean rank is defined in
docs/metrics.md: for sample s of reference i, rank = 1 + #{j != i : d(z_is, r_j) < d(z_is, r_i)}
+ 1/2 #{j != i : d(z_is, r_j) = d(z_is, r_i)} (ties count half, the mean of the ranks the tied group spans).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import batched
from ..diffusion import SamplingConfig, resolve_sampling, sample
from ..encoders import Encoder
from ..errors import RCDMError
from ..figures import markdown_table
from ..model import RCDM

Distance = Literal["cosine", "l2"]
DISTANCES: tuple[str, ...] = ("cosine", "l2")


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, distance: Distance = "cosine") -> torch.Tensor:
    """a (M, dim), b (N, dim) -> (M, N): cosine distance 1 - cos(a_m, b_n) in [0, 2], or Euclidean distance."""
    if distance == "cosine":
        return 1.0 - F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
    if distance == "l2":
        return torch.cdist(a.float(), b.float())
    raise RCDMError(f"unknown distance {distance!r}: choose one of {', '.join(DISTANCES)}")


def _check_shapes(references: torch.Tensor, sample_reps: torch.Tensor) -> None:
    if references.ndim != 2 or sample_reps.ndim != 3 or sample_reps.shape[0] != references.shape[0]:
        raise RCDMError(
            f"expected references (N, dim) and sample representations (N, S, dim); "
            f"got {tuple(references.shape)} and {tuple(sample_reps.shape)}"
        )
    if sample_reps.shape[-1] != references.shape[-1]:
        raise RCDMError(
            f"representation sizes differ: references {references.shape[-1]}, samples {sample_reps.shape[-1]}"
        )


@torch.no_grad()
def retrieval_ranks(
    references: torch.Tensor,
    sample_reps: torch.Tensor,
    distance: Distance = "cosine",
    chunk: int = 4096,
) -> torch.Tensor:
    """Rank of each sample's source among all references, 1 = best (see module docstring for ties).

    references: (N, dim) representations of the N reference images; sample_reps: (N, S, dim), row i drawn from
    references[i]. Returns (N, S) float ranks in [1, N]. Memory is chunk x N.
    """
    _check_shapes(references, sample_reps)
    n, s, dim = sample_reps.shape
    flat = sample_reps.reshape(n * s, dim)
    source = torch.arange(n).repeat_interleave(s)
    out = []
    for a, b in batched(n * s, chunk):
        d = pairwise_distance(flat[a:b], references, distance)  # (c, N)
        d_src = d.gather(1, source[a:b, None].to(d.device))  # (c, 1)
        closer = (d < d_src).sum(1)
        tied = (d == d_src).sum(1) - 1  # the source itself is always tied with itself
        out.append(1.0 + closer.float() + 0.5 * tied.float())
    return torch.cat(out).view(n, s).cpu()


def cosine_to_condition(references: torch.Tensor, sample_reps: torch.Tensor) -> torch.Tensor:
    """(N, dim), (N, S, dim) -> (N, S) cosine similarity in [-1, 1] of each sample to its own source."""
    _check_shapes(references, sample_reps)
    return F.cosine_similarity(sample_reps.float(), references.float()[:, None, :], dim=-1)


@dataclass
class FaithfulnessScores:
    """Scores under one encoder. Ranks are among `num_references` candidates (chance: (N + 1) / 2)."""

    encoder: str
    role: str  # "conditioning" (the model's own encoder) or "judge" (an independent one)
    distance: str
    num_references: int
    samples_per_reference: int
    cosine: float  # mean cosine similarity of a sample's representation to its source's, in [-1, 1]
    cosine_std: float
    mean_rank: float  # 1 = perfect
    median_rank: float
    top1: float  # fraction of samples whose source is the nearest reference, in [0, 1]
    top5: float
    chance_rank: float  # (N + 1) / 2, the mean rank of samples unrelated to their source
    # Fraction of samples this encoder's classifier puts in the class it gives their source (None: no
    # classifier, or a projector feature, which the classifier does not read).
    class_agreement: float | None = None


def faithfulness_scores(
    references: torch.Tensor,
    sample_reps: torch.Tensor,
    *,
    encoder: str = "encoder",
    role: str = "conditioning",
    distance: Distance = "cosine",
    classifier: torch.nn.Module | None = None,
) -> FaithfulnessScores:
    """Cosine, mean/median rank and top-1/top-5 retrieval from (N, dim) references and (N, S, dim) samples.

    With `classifier` (representation -> logits), also the class agreement of samples with their source.
    """
    ranks = retrieval_ranks(references, sample_reps, distance)
    agreement = None
    if classifier is not None:
        device = next(classifier.parameters()).device
        with torch.no_grad():
            ref_cls = classifier(references.to(device)).argmax(-1).cpu()
            smp_cls = classifier(sample_reps.flatten(0, 1).to(device)).argmax(-1).cpu()
        agreement = float((smp_cls.view(sample_reps.shape[:2]) == ref_cls[:, None]).float().mean())
    cos = cosine_to_condition(references, sample_reps)
    n, s = ranks.shape
    return FaithfulnessScores(
        encoder=encoder,
        role=role,
        distance=distance,
        num_references=n,
        samples_per_reference=s,
        cosine=float(cos.mean()),
        cosine_std=float(cos.std()) if cos.numel() > 1 else 0.0,
        mean_rank=float(ranks.mean()),
        median_rank=float(ranks.median()),
        top1=float((ranks <= 1).float().mean()),
        top5=float((ranks <= 5).float().mean()),
        chance_rank=(n + 1) / 2,
        class_agreement=agreement,
    )


@dataclass
class FaithfulnessResult:
    """Scores under the conditioning encoder first, then under each judge. `settings` records the sampling."""

    scores: list[FaithfulnessScores]
    settings: dict = field(default_factory=dict)
    images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "metric": "faithfulness",
            "settings": self.settings,
            "scores": [asdict(s) for s in self.scores],
            "images": self.images,
        }


@torch.no_grad()
def evaluate_faithfulness(
    model: RCDM,
    encoder: Encoder,
    images: Sequence[str | Path],
    *,
    num_samples: int = 4,
    judges: Sequence[Encoder] = (),
    distance: Distance = "cosine",
    sampling: SamplingConfig | None = None,
    progress: bool = False,
    on_samples: Callable[[int, torch.Tensor], None] | None = None,
) -> FaithfulnessResult:
    """Encode `images` with `encoder`, draw `num_samples` per representation, re-encode them, and score.

    Samples are drawn and encoded batch by batch (only representations are kept; `on_samples(first_index,
    images)` sees each batch, e.g. to save it). Sample j of image i has global index i * num_samples + j (the
    same images `sample_many` would give). Each judge encodes the reference images itself (centre square at its
    input size) and the samples (resized by its preprocessing).
    """
    cfg = resolve_sampling(model, sampling)
    paths = [Path(p) for p in images]
    if len(paths) < 2:
        raise RCDMError(f"faithfulness needs at least 2 reference images to rank among; got {len(paths)}")
    if num_samples < 1:
        raise RCDMError(f"num_samples {num_samples} must be at least 1")
    encoders = [encoder, *judges]
    refs = [e.encode_files(paths, cfg.batch_size) for e in encoders]
    n, s = len(paths), num_samples
    sample_reps = [torch.empty(n * s, r.shape[1]) for r in refs]
    cond = refs[0].repeat_interleave(s, dim=0)
    for a, b in tqdm(
        list(batched(n * s, cfg.batch_size)), disable=None if progress else True, desc="faithfulness"
    ):
        imgs = sample(model, cond[a:b], cfg, first_index=a)
        if on_samples is not None:
            on_samples(a, imgs)
        for k, e in enumerate(encoders):
            sample_reps[k][a:b] = e.encode(imgs)
    scores = [
        faithfulness_scores(
            r,
            z.view(n, s, -1),
            encoder=e.spec,
            role="conditioning" if k == 0 else "judge",
            distance=distance,
            classifier=e.classifier if e.feature == "backbone" else None,
        )
        for k, (e, r, z) in enumerate(zip(encoders, refs, sample_reps, strict=True))
    ]
    record = {"num_images": n, "num_samples": s, **cfg.record(), "distance": distance}
    return FaithfulnessResult(scores, record, [str(p) for p in paths])


def faithfulness_tables(data: dict) -> list[str]:
    rows = [
        [
            s["encoder"],
            s["role"],
            s["cosine"],
            s["mean_rank"],
            s["median_rank"],
            s["top1"],
            s["top5"],
            s["chance_rank"],
            s.get("class_agreement"),
        ]
        for s in data["scores"]
    ]
    header = [
        "encoder",
        "role",
        "cosine ↑",
        "mean rank ↓",
        "median rank",
        "top-1 ↑",
        "top-5 ↑",
        "chance rank",
        "class agreement ↑",
    ]
    return [markdown_table(header, rows)]
