"""Sample quality: FID, KID, Inception Score, precision/recall and density/coverage, streamed from disk.

Features come from a `FeatureExtractor` (metrics/features.py): the standard FID Inception-v3 (torch-fidelity's port of the 2015-12-05
TensorFlow graph, downloaded once into the torch hub cache, sha256-checked) or any rcdm Encoder (`cifar-resnet56:PATH`,
`timm:vit_small_patch14_dinov2.lvd142m`, ...). Scores from non-Inception features are not comparable with
published numbers and are labelled with the extractor's name.

Images are read batch by batch and their features written to a `.npy` store on disk (resumable, shareable
across processes); every metric then reads the store in chunks, so neither the images nor an N x N matrix are
ever held in memory beyond one chunk.

FID can also be taken against reference statistics (`load_reference_stats`: an `.npz` with `mu` and `sigma`, as
ADM's reference batches and clean-fid's stats files hold them), which is how papers report ImageNet FIDs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

from ..data import batched
from ..devices import process_state
from ..errors import RCDMError, first_line
from ..figures import fmt, markdown_table
from .features import FeatureExtractor, FeatureSet, extract_features, native_size

# --- metrics on features -----------------------------------------------------------------------------------


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017, Eq. 6), in float64 by torch-fidelity.

    torch-fidelity's own formula (eigenvalues of S1 S2), so that our FID is the number other papers report.
    """

    def stats(mu: torch.Tensor, sigma: torch.Tensor) -> dict:
        return {"mu": mu.double().cpu().numpy(), "sigma": sigma.double().cpu().numpy()}

    return float(
        fid_statistics_to_metric(stats(mu1, sigma1), stats(mu2, sigma2), verbose=False)[KEY_METRIC_FID]
    )


def load_reference_stats(
    path: str | Path, dim: int | None, extractor: str = "inception-v3"
) -> tuple[torch.Tensor, torch.Tensor]:
    """FILE.npz with `mu` (dim,) and `sigma` (dim, dim) -> both as float64 tensors; RCDMError in one line if not.

    ADM's reference batches (`VIRTUAL_imagenet128_labeled.npz` ...) hold them next to `arr_0` (the images) and
    the spatial `mu_s`/`sigma_s`; only `mu`/`sigma` are read. `dim` is the extractor's feature width (2048 for
    the FID Inception-v3's pool features; None: not checked). Read with allow_pickle=False: a file that pickles objects is refused.
    """
    path = Path(path).expanduser()
    try:
        data = np.load(path, allow_pickle=False)
    except OSError as e:
        raise RCDMError(f"cannot read --real-stats {str(path)!r}: {e.strerror or e}") from None
    except ValueError:  # numpy's message advises allow_pickle=True: never relay that
        raise RCDMError(
            f"--real-stats {str(path)!r} is not a numpy .npz of arrays (it is another kind of file, or holds "
            "pickled objects, which rcdm does not read): pass an .npz with mu and sigma"
        ) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise RCDMError(f"--real-stats {str(path)!r} is a single array, not an .npz with mu and sigma")
    with data:
        keys = list(data.keys())
        if "mu" not in keys or "sigma" not in keys:
            raise RCDMError(
                f"--real-stats {str(path)!r} has no mu/sigma (keys: {', '.join(keys) or 'none'}): pass reference "
                "statistics as ADM's reference batches and clean-fid store them (np.savez(FILE, mu=..., sigma=...))"
            )
        try:  # an .npz reads its arrays lazily: a pickled (object) array is refused here
            mu, sigma = data["mu"], data["sigma"]
        except (OSError, ValueError) as e:
            raise RCDMError(f"cannot read --real-stats {str(path)!r}: {first_line(e)}") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise RCDMError(
            f"--real-stats {str(path)!r}: mu has shape {mu.shape} and sigma {sigma.shape}; expected (D,) and (D, D)"
        )
    if dim is not None and mu.shape[0] != dim:
        raise RCDMError(
            f"--real-stats {str(path)!r} holds {mu.shape[0]}-d statistics but the {extractor} features are "
            f"{dim}-d: use statistics of the same extractor (Inception-v3 pool: 2048) or the matching --extractor"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise RCDMError(f"--real-stats {str(path)!r} holds non-finite values")
    return torch.from_numpy(mu.astype(np.float64)), torch.from_numpy(sigma.astype(np.float64))


def polynomial_kernel(
    x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None, coef: float = 1.0
) -> torch.Tensor:
    """(A, dim), (B, dim) -> (A, B): (gamma <x, y> + coef)^degree, gamma = 1 / dim by default."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x.double() @ y.double().T) + coef) ** degree


def mmd2_unbiased(
    x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None, coef: float = 1.0
) -> float:
    """Unbiased squared MMD with the polynomial kernel (Bińkowski et al. 2018, Eq. 3); x, y: (m, dim), m >= 2."""
    m = x.shape[0]
    kxx = polynomial_kernel(x, x, degree, gamma, coef)
    kyy = polynomial_kernel(y, y, degree, gamma, coef)
    kxy = polynomial_kernel(x, y, degree, gamma, coef)
    value = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(value - 2 * kxy.mean())


def kernel_inception_distance(
    real: FeatureSet | torch.Tensor,
    fake: FeatureSet | torch.Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[float, float, int]:
    """KID as torchmetrics' KernelInceptionDistance: mean and std of the unbiased MMD^2 over `subsets` random
    subsets of `subset_size` rows of each set (drawn without replacement; capped at the smaller set, so small
    sets work). Returns (mean, std, subset size used)."""
    n_r = real.count if isinstance(real, FeatureSet) else real.shape[0]
    n_f = fake.count if isinstance(fake, FeatureSet) else fake.shape[0]
    size = min(subset_size, n_r, n_f)
    if size < 2:
        raise RCDMError(f"KID needs at least 2 images on each side; got {n_r} real and {n_f} fake")
    g = torch.Generator().manual_seed(seed)

    def take(s: FeatureSet | torch.Tensor, n: int) -> torch.Tensor:
        idx = torch.randperm(n, generator=g)[:size]
        return s.rows(idx.numpy()) if isinstance(s, FeatureSet) else s[idx]

    values = torch.tensor(
        [mmd2_unbiased(take(real, n_r), take(fake, n_f), degree, gamma, coef) for _ in range(subsets)],
        dtype=torch.float64,
    )
    return float(values.mean()), float(values.std()) if subsets > 1 else 0.0, size


def inception_score(
    logits: np.ndarray | torch.Tensor, splits: int = 10, seed: int = 0
) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016) over `splits` random parts, as torchmetrics.

    logits: (N, classes), possibly a memory map; read one split at a time. Returns (mean, std over splits).
    """
    n = logits.shape[0]
    splits = max(1, min(splits, n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    scores = []
    for part in np.array_split(perm, splits):
        lg = torch.from_numpy(np.asarray(logits[np.sort(part)], dtype=np.float64))
        log_p = lg.log_softmax(1)
        p = log_p.exp()
        log_marginal = p.mean(0).log()
        scores.append(float((p * (log_p - log_marginal)).sum(1).mean().exp()))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(scores) > 1 else 0.0


def _knn_radii(x: torch.Tensor, ks: Sequence[int], chunk: int) -> dict[int, torch.Tensor]:
    """Distance of each row of x (N, dim) to its k-th nearest other row, for each k -> {k: (N,)}."""
    ks = sorted(set(ks))  # the same k twice (k_pr == k_dc) is one radius
    kmax = max(ks)
    if x.shape[0] <= kmax:
        raise RCDMError(f"k-NN radii with k={kmax} need more than {kmax} images; got {x.shape[0]}")
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for a, b in batched(x.shape[0], chunk):
        d = torch.cdist(x[a:b], x)
        near = d.topk(kmax + 1, dim=1, largest=False).values  # column 0: the point itself
        for k in ks:
            out[k].append(near[:, k])
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def manifold_metrics(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    k_pr: int = 3,
    k_dc: int = 5,
    chunk: int = 1024,
) -> dict[str, float]:
    """Precision/recall (Kynkäänniemi et al. 2019, k = 3) and density/coverage (Naeem et al. 2020, k = 5).

    real (N, dim), fake (M, dim). A point y is inside the manifold of a set when ||y - x_i|| <= r_k(x_i) for some
    x_i, r_k the distance of x_i to its k-th nearest neighbour in its own set. precision: fraction of fake in the
    real manifold; recall: fraction of real in the fake manifold; density: (1 / kM) sum_j #{i : y_j in B(x_i,
    r_k(x_i))}; coverage: fraction of real x_i whose ball holds at least one fake. Distance blocks are
    chunk x N at most.
    """
    real, fake = real.float(), fake.float()
    r_real = _knn_radii(real, (k_pr, k_dc), chunk)
    r_fake = _knn_radii(fake, (k_pr,), chunk)[k_pr]
    in_real = 0
    density = 0.0
    nearest_fake = torch.full((real.shape[0],), math.inf, device=real.device)
    for a, b in batched(fake.shape[0], chunk):
        d = torch.cdist(fake[a:b], real)  # (c, N)
        in_real += int((d <= r_real[k_pr][None]).any(1).sum())
        density += float((d <= r_real[k_dc][None]).sum())
        nearest_fake = torch.minimum(nearest_fake, d.min(0).values)
    in_fake = 0
    for a, b in batched(real.shape[0], chunk):
        d = torch.cdist(real[a:b], fake)
        in_fake += int((d <= r_fake[None]).any(1).sum())
    return {
        "precision": in_real / fake.shape[0],
        "recall": in_fake / real.shape[0],
        "density": density / (k_dc * fake.shape[0]),
        "coverage": float((nearest_fake <= r_real[k_dc]).float().mean()),
    }


# --- the whole evaluation ----------------------------------------------------------------------------------


@dataclass
class QualityResult:
    """Scores of a fake set against a real set. `standard` is True only for Inception-v3 features.

    Against reference statistics alone (no real images), the scores that need real features (KID, precision,
    recall, density, coverage) and num_real are None.
    """

    features: str  # the extractor's name, e.g. "inception-v3" or "cifar-resnet56:PATH"
    standard: bool
    num_real: int | None
    num_fake: int
    fid: float
    kid: float | None
    kid_std: float | None
    inception_score: float | None
    inception_score_std: float | None
    inception_score_note: str  # which logits gave IS, or why it is null
    precision: float | None
    recall: float | None
    density: float | None
    coverage: float | None
    settings: dict = field(default_factory=dict)
    fid_reference: str = "real images"  # or the reference statistics file (--real-stats)

    def to_dict(self) -> dict:
        return {"metric": "quality", **asdict(self)}


def _device() -> torch.device:
    return process_state().device


def quality_from_features(
    real: FeatureSet | None,
    fake: FeatureSet,
    *,
    extractor_name: str,
    standard: bool,
    real_stats: str | Path | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k_pr: int = 3,
    k_dc: int = 5,
    manifold_samples: int = 10_000,
    is_splits: int = 10,
    seed: int = 0,
) -> QualityResult:
    """All scores from two feature stores. Precision/recall/density/coverage use at most `manifold_samples`
    rows of each set (a fixed random subset, as in both papers' 10k protocol).

    real_stats: an .npz with the real set's `mu`/`sigma` (`load_reference_stats`); FID is then taken against
    it instead of `real`'s features. `real` may then be None: the scores that need real features are None.
    """
    if real is None and real_stats is None:
        raise RCDMError("quality needs real images or reference statistics (--real and/or --real-stats)")
    if real_stats is not None:
        mu_r, cov_r = load_reference_stats(real_stats, fake.dim, extractor_name)
    else:
        mu_r, cov_r = real.mean_cov()
    mu_f, cov_f = fake.mean_cov()
    fid = frechet_distance(mu_r, cov_r, mu_f, cov_f)
    kid = kid_std = kid_size = None
    pr = dict.fromkeys(("precision", "recall", "density", "coverage"))
    if real is not None:
        kid, kid_std, kid_size = kernel_inception_distance(
            real, fake, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
        )
        g = torch.Generator().manual_seed(seed + 1)

        def subset(s: FeatureSet) -> torch.Tensor:
            if s.count <= manifold_samples:
                return torch.cat(list(s.chunks()))
            return s.rows(torch.randperm(s.count, generator=g)[:manifold_samples].numpy())

        device = _device()
        pr = manifold_metrics(subset(real).to(device), subset(fake).to(device), k_pr=k_pr, k_dc=k_dc)
    logits = fake.logits()
    if logits is not None:
        is_mean, is_std = inception_score(logits, is_splits, seed)
        note = (
            "Inception-v3 logits"
            if standard
            else f"logits of the classifier head of {extractor_name} (non-standard)"
        )
    else:
        is_mean = is_std = None
        note = f"not available: {extractor_name} has no classifier logits (use --extractor inception)"
    return QualityResult(
        features=extractor_name,
        standard=standard,
        num_real=real.count if real is not None else None,
        num_fake=fake.count,
        fid=fid,
        kid=kid,
        kid_std=kid_std,
        inception_score=is_mean,
        inception_score_std=is_std,
        inception_score_note=note,
        precision=pr["precision"],
        recall=pr["recall"],
        density=pr["density"],
        coverage=pr["coverage"],
        fid_reference=str(real_stats) if real_stats is not None else "real images",
        settings={
            "kid_subsets": kid_subsets,
            "kid_subset_size": kid_size,
            "k_precision_recall": k_pr,
            "k_density_coverage": k_dc,
            "manifold_samples_real": min(manifold_samples, real.count) if real is not None else None,
            "manifold_samples_fake": min(manifold_samples, fake.count),
            "is_splits": is_splits,
            "seed": seed,
            "real_store": str(real.folder) if real is not None else None,
            "fake_store": str(fake.folder),
        },
    )


def evaluate_quality(
    real: Sequence[Path] | None,
    fake: Sequence[Path],
    extractor: FeatureExtractor,
    store: str | Path,
    *,
    real_stats: str | Path | None = None,
    image_size: int | None = None,
    batch_size: int = 100,
    num_workers: int = 0,
    progress: bool = False,
    **kwargs,
) -> QualityResult:
    """Extract (or reuse) features of both image lists into `store`, then score. kwargs: see quality_from_features.

    Both sets are brought to the same side before the extractor: `image_size`, default the first real file's
    (the first fake file's without real images). real_stats: FID against these statistics (see
    quality_from_features); `real` may then be None.
    """
    if not real and real_stats is None:
        raise RCDMError("quality needs real images or reference statistics (--real and/or --real-stats)")
    if real_stats is not None:  # a wrong file fails now, before any feature is extracted
        load_reference_stats(real_stats, extractor.dim, extractor.name)
    size = image_size or native_size(Path(real[0] if real else fake[0]))
    common = dict(image_size=size, batch_size=batch_size, num_workers=num_workers, progress=progress)
    fr = extract_features(real, extractor, store, label="real", **common) if real else None
    ff = extract_features(fake, extractor, store, label="fake", **common)
    result = quality_from_features(
        fr, ff, extractor_name=extractor.name, standard=extractor.standard, real_stats=real_stats, **kwargs
    )
    result.settings["image_size"] = size
    return result


def quality_tables(data: dict) -> list[str]:
    tag = "" if data["standard"] else f" [{data['features']}]"
    rows = [
        [f"FID{tag} ↓", data["fid"]],
        [f"KID{tag} ↓", f"{fmt(data['kid'], 5)} ± {fmt(data['kid_std'], 5)}"],
        [f"IS{tag} ↑", data["inception_score"]],
        [f"precision{tag} ↑", data["precision"]],
        [f"recall{tag} ↑", data["recall"]],
        [f"density{tag} ↑", data["density"]],
        [f"coverage{tag} ↑", data["coverage"]],
    ]
    return [markdown_table(["metric", "value"], rows)]
