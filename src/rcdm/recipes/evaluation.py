"""How the pack's RCDMs (and the recipe A/B, and adapted models) are scored: one sampling pass over class-balanced
CIFAR-10 test images, one sample each, judged by an encoder that no RCDM is conditioned on (the shared ResNet-56).

Scores (docs/metrics.md): class agreement (the judge's class of a sample equals its source's), rank-1 among the N
evaluation images in the judge's features (chance 1 / N), mean rank, and the Fréchet distance between the judge's
features of the samples and of the evaluation images (not FID: another feature space).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..devices import cpu_seconds
from ..diffusion import SamplingConfig, sampling_preset
from ..encoders import Encoder
from ..metrics.faithfulness import evaluate_faithfulness
from ..metrics.quality import frechet_distance
from ..model import RCDM
from .cifar10 import labelled_files


@dataclass(frozen=True)
class Score:
    """One model, one sampling: the judge's verdicts on N evaluation images, one sample each."""

    num_images: int
    sampler: str
    steps: int | None
    guidance: float
    class_agreement: float | None  # judge's class of the sample == of its source, in [0, 1]
    rank1: float  # fraction of samples whose nearest evaluation image (judge features) is their source
    mean_rank: float  # chance: (N + 1) / 2
    frechet: float  # Fréchet distance in the judge's features, samples vs the evaluation images
    own_rank1: float  # rank-1 under the model's own encoder
    wall_s: float
    cpu_s: float

    def record(self) -> dict:
        return asdict(self)


def evaluation_images(cifar_root: str | Path, n: int = 1000) -> list[Path]:
    """The first n class-balanced CIFAR-10 test images (round-robin over classes; no RCDM trains on them)."""
    files, _, _ = labelled_files(Path(cifar_root) / "test", n)
    return files


def _gaussian(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = features.double()
    return f.mean(0), torch.cov(f.T)


@torch.no_grad()
def score_model(
    model: RCDM,
    encoder: Encoder,
    judge: Encoder,
    images: Sequence[str | Path],
    sampling: SamplingConfig | None = None,
    *,
    progress: bool = False,
) -> Score:
    """Sample each image's representation once and score the samples (see the module docstring).

    sampling: default the 'fast' preset (dpm++ 20) at guidance 1. Samples are rounded to 8 bits before the
    judge sees them, as saved PNGs would be.
    """
    cfg = sampling or sampling_preset("fast")
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    fakes: list[torch.Tensor] = []

    def keep(first: int, imgs: torch.Tensor) -> None:
        fakes.append((imgs * 255).round() / 255)

    result = evaluate_faithfulness(
        model,
        encoder,
        images,
        num_samples=1,
        judges=[judge],
        sampling=cfg,
        progress=progress,
        on_samples=keep,
    )
    own, judged = result.scores
    real = judge.encode_files([Path(p) for p in images], cfg.batch_size)
    fake = torch.cat([judge.encode(x) for x in fakes])
    fd = frechet_distance(*_gaussian(fake), *_gaussian(real))
    return Score(
        num_images=len(images),
        sampler=cfg.sampler,
        steps=cfg.steps,
        guidance=cfg.guidance,
        class_agreement=judged.class_agreement,
        rank1=judged.top1,
        mean_rank=judged.mean_rank,
        frechet=fd,
        own_rank1=own.top1,
        wall_s=time.perf_counter() - wall0,
        cpu_s=cpu_seconds() - cpu0,
    )
