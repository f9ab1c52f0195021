"""How the pack's RCDMs (and the recipe A/B, and adapted models) are scored: one sampling pass over class-balanced
CIFAR-10 test images, one sample each, judged by an encoder that no RCDM is conditioned on (the shared ResNet-56).

Scores (docs/metrics.md): class agreement (the judge's class of a sample equals its source's), rank-1 among the N
evaluation images in the judge's features (chance 1 / N), mean rank, and the Fréchet distance between the judge's
features of the samples and of the evaluation images (not FID: another feature space).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from ..devices import cpu_seconds
from ..diffusion import SamplingConfig, resolve_sampling, sampling_preset
from ..encoders import Encoder
from ..files import write_text_atomic
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
    # With several samples per image: how much the samples of one representation differ, which is what RCDM
    # asks its user to read (guidance lowers it): the mean cosine distance between two samples' judge features,
    # and the mean per-pixel standard deviation across samples (pixels in [0, 1]). None with one sample.
    diversity: float | None
    pixel_spread: float | None
    num_samples: int
    wall_s: float
    cpu_s: float

    def record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> Score:
        """The score a `record()` holds (other keys, e.g. `rcdm.pack.stages.score_into`'s, ignored)."""
        return cls(**{f.name: record[f.name] for f in fields(cls)})


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
    num_samples: int = 1,
    progress: bool = False,
) -> Score:
    """Sample each image's representation `num_samples` times and score the samples (see the module docstring).

    sampling: default the 'fast' preset (dpm++ 20) at the model's default guidance. Samples are rounded to 8
    bits before the judge sees them, as saved PNGs would be.
    """
    cfg = resolve_sampling(model, sampling or sampling_preset("fast"))
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    fakes: list[torch.Tensor] = []

    def keep(first: int, imgs: torch.Tensor) -> None:
        fakes.append((imgs * 255).round() / 255)

    result = evaluate_faithfulness(
        model,
        encoder,
        images,
        num_samples=num_samples,
        judges=[judge],
        sampling=cfg,
        progress=progress,
        on_samples=keep,
    )
    own, judged = result.scores
    real = judge.encode_files([Path(p) for p in images], cfg.batch_size)
    fake = torch.cat([judge.encode(x) for x in fakes])
    fd = frechet_distance(*_gaussian(fake), *_gaussian(real))
    diversity = spread = None
    if num_samples > 1:
        n, s = len(images), num_samples
        z = F.normalize(fake.view(n, s, -1).float(), dim=-1)
        pairs = s * (s - 1)
        diversity = float(((1 - z @ z.transpose(1, 2)).sum((1, 2)) / pairs).mean())
        spread = float(torch.cat(fakes).view(n, s, -1).std(1).mean())
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
        diversity=diversity,
        pixel_spread=spread,
        num_samples=num_samples,
        wall_s=time.perf_counter() - wall0,
        cpu_s=cpu_seconds() - cpu0,
    )


# A guidance weight is chosen as the lowest that is nearly as faithful as the best measured: class agreement
# within AGREEMENT_SLACK and rank-1 within RANK1_SLACK of the best. Guidance buys faithfulness with diversity, and
# the spread across samples is what RCDM asks its user to read, so no more guidance than faithfulness needs.
AGREEMENT_SLACK = 0.02
RANK1_SLACK = 0.01


def choose_guidance(scores: Sequence[Score]) -> Score:
    """The score of the lowest guidance weight within the slacks of the best agreement and rank-1 measured."""
    best_agreement = max(s.class_agreement or 0.0 for s in scores)
    best_rank1 = max(s.rank1 for s in scores)
    good = [
        s
        for s in scores
        if (s.class_agreement or 0.0) >= best_agreement - AGREEMENT_SLACK
        and s.rank1 >= best_rank1 - RANK1_SLACK
    ]
    return min(good, key=lambda s: s.guidance)


def sampling_record(scores: Sequence[Score], chosen: Score, judge: str) -> dict:
    """The model config's `sampling` entry: the chosen setting, the rule and every measured weight."""
    return {
        "sampler": chosen.sampler,
        "steps": chosen.steps,
        "guidance": chosen.guidance,
        "chosen_by": (
            f"the lowest guidance within {AGREEMENT_SLACK} class agreement and {RANK1_SLACK} rank-1 of the best "
            f"measured ({chosen.num_images} test images x {chosen.num_samples} samples, judge {judge})"
        ),
        "measured": [
            {
                k: getattr(s, k)
                for k in (
                    "guidance",
                    "class_agreement",
                    "rank1",
                    "mean_rank",
                    "frechet",
                    "diversity",
                    "pixel_spread",
                )
            }
            for s in scores
        ],
    }


def guidance_table(scores: Sequence[Score], chosen: Score | None = None) -> str:
    """Markdown: one row per guidance weight (the chosen one in bold)."""
    lines = [
        "| guidance | class agreement | rank-1 | mean rank | Fréchet (judge) | diversity (judge cosine) | pixel spread |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in scores:
        g = (
            f"**{s.guidance:g}**"
            if chosen is not None and s.guidance == chosen.guidance
            else f"{s.guidance:g}"
        )
        div = "" if s.diversity is None else f"{s.diversity:.4f}"
        spread = "" if s.pixel_spread is None else f"{s.pixel_spread:.3f}"
        lines.append(
            f"| {g} | {s.class_agreement or 0.0:.3f} | {s.rank1:.3f} | {s.mean_rank:.1f} | {s.frechet:.2f} "
            f"| {div} | {spread} |"
        )
    return "\n".join(lines) + "\n"


def record_model_sampling(model_dir: str | Path, record: dict) -> None:
    """Write `record` as the `sampling` entry of MODEL_DIR/config.json (whole or not at all)."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text())
    config["sampling"] = record
    write_text_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
