"""Invariance: samples from rep(aug(x)) beside samples from rep(x), with a representation shift and a
retention score per augmentation (the paper's findings 1 and 2: backbones keep augmentations, projectors less).

Retention (docs/analysis.md): with S the samples of rep(x), S' those of rep(aug x), T the augmentation with the
parameters used on x, and f a per-augmentation image statistic averaged over samples,
    retention = clip(<f(S') - f(S), f(T S) - f(S)> / ||f(T S) - f(S)||^2, 0, 1)
i.e. how far the samples moved from the clean samples toward "the clean samples, augmented": 1 = fully
retained, 0 = not retained (invariant). NaN when the augmentation does not change f (e.g. greying a grey image).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..data import load_views
from ..diffusion import SamplingConfig, resolve_sampling, sample_many
from ..encoders import Encoder
from ..figures import fmt, grid, number
from ..model import RCDM
from ._common import (
    Rows,
    comparison_figure,
    image_paths,
    representation_shift,
    result_label,
    typical_distance,
)
from .augment import augment, get_augmentation, parse_augmentations

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 1, H, W) Rec. 601 luma."""
    return (x * _LUMA.to(x)).sum(1, keepdim=True)


def saturation(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, H, W) HSV saturation (max - min) / max, 0 for black pixels."""
    mx, mn = x.amax(1), x.amin(1)
    return torch.where(mx > 1e-6, (mx - mn) / mx.clamp_min(1e-6), torch.zeros_like(mx))


def _stat_saturation(x: torch.Tensor, ref: torch.Tensor, tref: torch.Tensor) -> torch.Tensor:
    return saturation(x).mean((1, 2)).unsqueeze(1)


def _stat_colour(x: torch.Tensor, ref: torch.Tensor, tref: torch.Tensor) -> torch.Tensor:
    y = luma(x).flatten(1)
    sat = saturation(x).flatten(1)
    r, g, b = x.flatten(2).unbind(1)
    hue = torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)  # hue angle, weighted by saturation below
    w = sat / sat.sum(1, keepdim=True).clamp_min(1e-6)
    return torch.stack(
        [y.mean(1), y.std(1), sat.mean(1), (w * hue.cos()).sum(1), (w * hue.sin()).sum(1)], dim=1
    )


def _stat_sharpness(x: torch.Tensor, ref: torch.Tensor, tref: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3).to(x)
    lap = F.conv2d(F.pad(luma(x), (1, 1, 1, 1), mode="replicate"), k)
    return lap.abs().mean((1, 2, 3)).unsqueeze(1)


def _stat_histogram(x: torch.Tensor, ref: torch.Tensor, tref: torch.Tensor) -> torch.Tensor:
    bins = (x.clamp(0, 1) * 8).long().clamp(max=7).flatten(1)
    return F.one_hot(bins, 8).float().mean(1)


def _structure(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 64): 8 x 8 luma, each image standardised (layout only, not colour or contrast)."""
    y = F.adaptive_avg_pool2d(luma(x), 8).flatten(1)
    return (y - y.mean(1, keepdim=True)) / y.std(1, keepdim=True).clamp_min(1e-6)


def _stat_geometry(x: torch.Tensor, ref: torch.Tensor, tref: torch.Tensor) -> torch.Tensor:
    """Position of each image on the segment from ref (0) to tref (1), on the 8 x 8 standardised luma."""
    a, b, s = _structure(ref[None]), _structure(tref[None]), _structure(x)
    d = b - a
    return ((s - a) * d).sum(1, keepdim=True) / (d * d).sum().clamp_min(1e-8)


STATISTICS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "saturation": _stat_saturation,
    "colour": _stat_colour,
    "sharpness": _stat_sharpness,
    "histogram": _stat_histogram,
    "geometry": _stat_geometry,
}


def retention_score(
    statistic: str,
    clean_samples: torch.Tensor,
    aug_samples: torch.Tensor,
    augmented_clean_samples: torch.Tensor,
    original: torch.Tensor,
    augmented_original: torch.Tensor,
) -> float:
    """The retention score in [0, 1] (module docstring); NaN when the augmentation leaves the statistic unchanged.

    clean_samples S, aug_samples S', augmented_clean_samples T(S): (N, 3, H, W) in [0, 1];
    original x and augmented_original T(x): (3, H, W) in [0, 1] (the reference segment for 'geometry').
    """
    f = STATISTICS[statistic]
    fs = f(clean_samples.float(), original, augmented_original).mean(0)
    fa = f(aug_samples.float(), original, augmented_original).mean(0)
    ft = f(augmented_clean_samples.float(), original, augmented_original).mean(0)
    delta = ft - fs
    norm2 = float((delta * delta).sum())
    if norm2 < 1e-8:
        return math.nan
    return min(1.0, max(0.0, float(((fa - fs) * delta).sum()) / norm2))


@dataclass
class InvarianceResult:
    """Images in [0, 1]. M images, A augmentations, N samples each.

    originals (M, 3, S, S); augmented (A, M, 3, S, S); clean_samples (M, N, 3, S, S);
    aug_samples (A, M, N, 3, S, S); shift (A, M) = ||rep(aug x) - rep(x)||; relative_shift = shift / typical
    distance between the images' representations (NaN with one image); cosine (A, M) = cos(rep(aug x), rep(x));
    retention (A, M) in [0, 1] or NaN.
    """

    label: str
    names: list[str]
    augmentations: list[tuple[str, float]]
    originals: torch.Tensor
    augmented: torch.Tensor
    clean_samples: torch.Tensor
    aug_samples: torch.Tensor
    shift: torch.Tensor
    relative_shift: torch.Tensor
    cosine: torch.Tensor
    retention: torch.Tensor
    typical_distance: float
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready numbers: per augmentation the means over images and the per-image values."""
        rows = []
        for a, (name, strength) in enumerate(self.augmentations):
            ret = self.retention[a]
            finite = ret[torch.isfinite(ret)]
            rows.append(
                {
                    "augmentation": name,
                    "strength": strength,
                    "relative_shift": number(self.relative_shift[a].mean()),
                    "shift": number(self.shift[a].mean()),
                    "cosine": number(self.cosine[a].mean()),
                    "retention": number(finite.mean()) if finite.numel() else None,
                    "per_image": {
                        n: {
                            "shift": number(self.shift[a, i]),
                            "relative_shift": number(self.relative_shift[a, i]),
                            "cosine": number(self.cosine[a, i]),
                            "retention": number(ret[i]),
                        }
                        for i, n in enumerate(self.names)
                    },
                }
            )
        return {
            "label": self.label,
            "images": self.names,
            "typical_distance": number(self.typical_distance),
            "augmentations": rows,
            "settings": self.settings,
        }


def invariance(
    model: RCDM,
    encoder: Encoder,
    images: Sequence[str | Path],
    *,
    augmentations: Sequence[str] | None = None,
    num_samples: int = 4,
    sampling: SamplingConfig | None = None,
    label: str | None = None,
    progress: bool = False,
) -> InvarianceResult:
    """Samples from rep(aug x) and rep(x) for each image and augmentation ('NAME' or 'NAME=STRENGTH').

    Augmentation a on image i draws its parameters from seed (seed, a, i), identically on the diffusion view,
    the encoder view and (for the retention score) on the clean samples. All samples of column j share noise.
    """
    cfg = resolve_sampling(model, sampling)
    seed = cfg.seed
    augs = parse_augmentations(list(augmentations) if augmentations else None)
    paths = image_paths(images)
    size = model.config.sample_size
    originals, enc_views = load_views(
        paths, size, encoder.preprocessing.input_size, encoder.preprocessing.resample
    )
    m, n_aug = originals.shape[0], len(augs)
    aug_seed = [[seed * 1_000_003 + 7919 * (a + 1) + i for i in range(m)] for a in range(n_aug)]
    augmented = torch.stack(
        [
            torch.cat([augment(originals[i : i + 1], name, s, seed=aug_seed[a][i]) for i in range(m)])
            for a, (name, s) in enumerate(augs)
        ]
    )
    aug_enc = torch.cat(
        [
            torch.cat([augment(enc_views[i : i + 1], name, s, seed=aug_seed[a][i]) for i in range(m)])
            for a, (name, s) in enumerate(augs)
        ]
    )
    reps = encoder.encode(enc_views)
    aug_reps = encoder.encode(aug_enc).view(n_aug, m, -1)
    all_reps = torch.cat([reps, aug_reps.flatten(0, 1)])
    samples = sample_many(
        model, all_reps, num_samples, cfg, shared_noise=True, progress=progress, desc="invariance"
    )
    clean, aug_samples = samples[:m], samples[m:].view(n_aug, m, *samples.shape[1:])
    shift, relative_shift, cosine = representation_shift(reps, aug_reps)
    retention = torch.full((n_aug, m), math.nan)
    for a, (name, s) in enumerate(tqdm(augs, disable=None if progress else True, desc="retention")):
        stat = get_augmentation(name).statistic
        for i in range(m):
            t_clean = augment(clean[i], name, s, seed=aug_seed[a][i])
            retention[a, i] = retention_score(
                stat, clean[i], aug_samples[a, i], t_clean, originals[i], augmented[a, i]
            )
    return InvarianceResult(
        label=result_label(encoder, label),
        names=[Path(p).stem for p in paths],
        augmentations=augs,
        originals=originals,
        augmented=augmented,
        clean_samples=clean,
        aug_samples=aug_samples,
        shift=shift,
        relative_shift=relative_shift,
        cosine=cosine,
        retention=retention,
        typical_distance=typical_distance(reps),
        settings=dict(num_samples=num_samples, **cfg.record()),
    )


def invariance_figure(results: Sequence[InvarianceResult]) -> Image.Image:
    """One grid: per image, the clean row then one row per augmentation; column 0 is the (augmented) input.

    Row labels carry the relative shift (d) and retention (r). Results compared on the same augmented inputs
    (backbone vs projector) stand side by side in one row per augmentation, [0]'s samples then [1]'s, the labels
    giving each one's numbers: half the height of a row per result, and each pair of samples beside its input.
    """
    same_inputs = len(results) > 1 and all(
        torch.equal(r.augmented, results[0].augmented) and torch.equal(r.originals, results[0].originals)
        for r in results
    )
    if same_inputs:
        return _side_by_side(results)

    def rows(res: InvarianceResult, i: int) -> Rows:
        return [([res.originals[i], *res.clean_samples[i]], res.names[i])] + [
            (
                [res.augmented[a, i], *res.aug_samples[a, i]],
                f"{aug}\nd={fmt(float(res.relative_shift[a, i]))}  r={fmt(float(res.retention[a, i]))}",
            )
            for a, (aug, _) in enumerate(res.augmentations)
        ]

    return comparison_figure(results, rows, "invariance: ")


def _side_by_side(results: Sequence[InvarianceResult]) -> Image.Image:
    first = results[0]
    cells, labels = [], []

    def numbers(values: Sequence[float]) -> str:
        return " | ".join(fmt(v) for v in values)

    for i, name in enumerate(first.names):
        cells.append([first.originals[i], *(x for r in results for x in r.clean_samples[i])])
        labels.append(name)
        for a, (aug, _) in enumerate(first.augmentations):
            cells.append([first.augmented[a, i], *(x for r in results for x in r.aug_samples[a, i])])
            d = numbers([float(r.relative_shift[a, i]) for r in results])
            ret = numbers([float(r.retention[a, i]) for r in results])
            labels.append(f"{aug}\nd={d}  r={ret}")
    per = first.clean_samples.shape[1]
    cols = ["input"] + [f"[{k}] s{j}" for k in range(len(results)) for j in range(per)]
    title = "invariance (d: rep. shift, r: retention; [0] | [1]): " + " vs ".join(
        f"[{k}] {r.label}" for k, r in enumerate(results)
    )
    return grid(cells, row_labels=labels, col_labels=cols, title=title)
