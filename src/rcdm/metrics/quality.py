"""Sample quality: FID, KID, Inception Score, precision/recall and density/coverage, streamed from disk.

Features come from a `FeatureExtractor`: the standard FID Inception-v3 (torch-fidelity's port of the 2015-12-05
TensorFlow graph, loaded from a local file; no downloads) or any rcdm Encoder (`cifar-resnet56:PATH`,
`timm:vit_small_patch14_dinov2.lvd142m`, ...). Scores from non-Inception features are not comparable with
published numbers and are labelled with the extractor's name.

Images are read batch by batch and their features written to a `.npy` store on disk (resumable, shareable
across processes); every metric then reads the store in chunks, so neither the images nor an N x N matrix are
ever held in memory beyond one chunk.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torchvision.transforms.functional import pil_to_tensor
from tqdm.auto import tqdm

from ..data import center_square, load_image
from ..diffusion import batched
from ..encoders import Encoder, create_encoder
from ..errors import RCDMError

# The FID network: torch-fidelity's conversion of TF's inception-2015-12-05 (what torchmetrics' FID uses).
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_ALIASES = (INCEPTION_FILE, "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_ENV = "RCDM_INCEPTION_WEIGHTS"
INCEPTION_NAMES = ("inception", "inception-v3")


# --- feature extractors -------------------------------------------------------------------------------


class FeatureExtractor(nn.Module):
    """forward(images): uint8 (B, 3, H, W) RGB -> (features (B, dim) float32, logits (B, classes) or None).

    `name` labels the scores; `standard` is True only for the FID Inception-v3 (scores comparable to papers);
    `has_logits` says whether an Inception Score can be computed (from these logits).
    """

    name: str
    standard: bool
    has_logits: bool

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


class InceptionFeatures(FeatureExtractor):
    """The FID Inception-v3: 2048-d pool features and 1008-class unbiased logits (for IS), torch-fidelity's."""

    def __init__(self, weights: str | Path):
        super().__init__()
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise RCDMError(
                "Inception features need torch-fidelity: pip install torch-fidelity (or pass --features SPEC)"
            ) from None
        path = Path(weights)
        try:  # refuse pickles that are not plain tensors before torch-fidelity loads the file
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RCDMError(f"cannot read Inception weights {str(path)!r}: {e.__class__.__name__}") from None
        if not isinstance(state, dict):
            raise RCDMError(
                f"{str(path)!r} holds no state dict: expected the FID Inception file {INCEPTION_FILE}"
            )
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
            )
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise RCDMError(
                f"{str(path)!r} is not the FID Inception-v3 ({INCEPTION_FILE}): {first}"
            ) from None
        self.name = "inception-v3"
        self.standard = True
        self.has_logits = True

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats, logits = self.net(images)
        return feats.float(), logits.float()


class EncoderFeatures(FeatureExtractor):
    """Any rcdm Encoder as a feature space (its representation); logits from `Encoder.logits` when it has a head."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder
        self.name = encoder.spec
        self.standard = False
        self.has_logits = encoder.classifier is not None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = images.float() / 255.0
        h = self.encoder.backbone_features(x)
        feats = self.encoder.projector(h).float() if self.encoder.feature == "projector" else h
        logits = self.encoder.classifier(h).float() if self.encoder.classifier is not None else None
        return feats, logits


def inception_search_paths() -> list[Path]:
    """Where the Inception weights are looked for, after an explicit path: $RCDM_INCEPTION_WEIGHTS, then the
    torch hub cache (`torch.hub.get_dir()/checkpoints/`, where torch-fidelity/torchmetrics download it)."""
    out = []
    if os.environ.get(INCEPTION_ENV):
        out.append(Path(os.environ[INCEPTION_ENV]).expanduser())
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    out.extend(hub / name for name in INCEPTION_ALIASES)
    return out


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The FID Inception weights file: `path` if given, else the first of `inception_search_paths()` that exists."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise RCDMError(
                f"Inception weights not found at {str(p)!r}: download {INCEPTION_URL} to that path"
            )
        return p
    for p in inception_search_paths():
        if p.is_file():
            return p
    target = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    raise RCDMError(
        f"FID Inception-v3 weights not found (offline): put {INCEPTION_FILE} (from {INCEPTION_URL}) at "
        f"{target}, or pass --inception-weights PATH, or use --features SPEC for another extractor"
    )


def create_feature_extractor(
    spec: str = "inception", inception_weights: str | Path | None = None
) -> FeatureExtractor:
    """'inception' (the FID network, from a local file) or any encoder spec (its backbone feature)."""
    if spec in INCEPTION_NAMES:
        return InceptionFeatures(find_inception_weights(inception_weights))
    return EncoderFeatures(create_encoder(spec, "backbone"))


# --- feature store ---------------------------------------------------------------------------------------


class _Images(Dataset):
    """Files -> uint8 (3, size, size): centre square, resized (bicubic, antialiased) when not already size."""

    def __init__(self, files: Sequence[Path], size: int):
        self.files, self.size = list(files), size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = center_square(pil_to_tensor(load_image(self.files[i])))
        if x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(
                x[None].float(), size=(self.size, self.size), mode="bicubic", antialias=True
            )[0]
            x = x.round().clamp(0, 255).to(torch.uint8)
        return x


def native_size(path: Path) -> int:
    """Side of the centre square of an image file (its shorter side)."""
    im = load_image(path)
    return min(im.size)


def files_digest(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(Path(f).resolve()).encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


@dataclass
class FeatureSet:
    """Features (N, dim) float32 and optional logits (N, classes) of N images, as .npy files in `folder`."""

    folder: Path
    extractor: str
    count: int
    dim: int
    has_logits: bool

    def features(self) -> np.ndarray:
        """(N, dim) read-only memory map."""
        return np.load(self.folder / "features.npy", mmap_mode="r")

    def logits(self) -> np.ndarray | None:
        return np.load(self.folder / "logits.npy", mmap_mode="r") if self.has_logits else None

    def chunks(self, size: int = 4096) -> Iterator[torch.Tensor]:
        """(<= size, dim) float32 tensors, in order."""
        f = self.features()
        for a, b in batched(self.count, size):
            yield torch.from_numpy(np.array(f[a:b], dtype=np.float32))

    def rows(self, index: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Features of the given rows (K, dim) float32 (read in sorted order, returned in the order given)."""
        idx = np.asarray(index)
        order = np.argsort(idx)
        out = np.empty((len(idx), self.dim), dtype=np.float32)
        out[order] = self.features()[idx[order]]
        return torch.from_numpy(out)

    def mean_cov(self, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (dim,) and unbiased covariance (dim, dim), float64, accumulated chunk by chunk."""
        if self.count < 2:
            raise RCDMError(f"a covariance needs at least 2 images; {self.folder} has {self.count}")
        s = torch.zeros(self.dim, dtype=torch.float64)
        ss = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        for x in self.chunks(chunk):
            x = x.double()
            s += x.sum(0)
            ss += x.T @ x
        mu = s / self.count
        cov = (ss - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return mu, cov


def extract_features(
    files: Sequence[Path],
    extractor: FeatureExtractor,
    store: str | Path,
    *,
    image_size: int | None = None,
    batch_size: int = 100,
    num_workers: int = 0,
    progress: bool = False,
    label: str = "features",
) -> FeatureSet:
    """Features of `files` into `store/<digest>/` (features.npy, logits.npy, files.txt, one marker per done batch).

    Batch by batch, so a killed job resumes where it stopped; with several processes (accelerate launch), the
    batches are split between them and every process returns the finished set. image_size: the side images are
    brought to before the extractor (default: the first file's); the extractor resizes further as it needs.
    """
    from ..parallel import process_state

    files = [Path(f) for f in files]
    if not files:
        raise RCDMError("no images to extract features from")
    state = process_state()
    size = image_size or native_size(files[0])
    digest = hashlib.sha256(f"{files_digest(files)}|{extractor.name}|{size}".encode()).hexdigest()[:12]
    folder = Path(store) / digest  # the same images and extractor share one store, whatever the label
    meta_path = folder / "meta.json"
    done_dir = folder / "done"
    if state.is_main_process and not meta_path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        done_dir.mkdir(exist_ok=True)
        with torch.no_grad():
            probe = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=extractor.device)
            f, lg = extractor(probe)
        np.lib.format.open_memmap(folder / "features.npy", "w+", np.float32, (len(files), f.shape[1])).flush()
        if lg is not None:
            np.lib.format.open_memmap(
                folder / "logits.npy", "w+", np.float32, (len(files), lg.shape[1])
            ).flush()
        meta = {
            "extractor": extractor.name,
            "count": len(files),
            "dim": int(f.shape[1]),
            "has_logits": lg is not None,
            "image_size": size,
            "batch_size": batch_size,
        }
        (folder / "files.txt").write_text("\n".join(str(p) for p in files) + "\n")
        meta_path.write_text(json.dumps(meta, indent=2))
    state.wait_for_everyone()
    meta = json.loads(meta_path.read_text())
    bs = int(meta["batch_size"])  # the store's batching, fixed when it was created
    todo = [k for k, _ in enumerate(batched(len(files), bs)) if not (done_dir / f"{k:06d}").exists()]
    if todo:
        feats = np.load(folder / "features.npy", mmap_mode="r+")
        logits = np.load(folder / "logits.npy", mmap_mode="r+") if meta["has_logits"] else None
        with state.split_between_processes(todo) as mine:
            spans = [range(k * bs, min(len(files), (k + 1) * bs)) for k in mine]
            loader = DataLoader(_Images(files, size), batch_sampler=spans, num_workers=num_workers)
            bar = tqdm(
                total=len(mine), disable=not (progress and state.is_main_process), desc=f"{label} features"
            )
            for k, span, x in zip(mine, spans, loader, strict=True):
                with torch.no_grad():
                    f, lg = extractor(x.to(extractor.device))
                feats[span.start : span.stop] = f.cpu().numpy()
                feats.flush()
                if logits is not None and lg is not None:
                    logits[span.start : span.stop] = lg.cpu().numpy()
                    logits.flush()
                (done_dir / f"{k:06d}").touch()
                bar.update()
            bar.close()
        del feats, logits
    state.wait_for_everyone()
    return FeatureSet(folder, meta["extractor"], meta["count"], meta["dim"], meta["has_logits"])


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
    """Scores of a fake set against a real set. `standard` is True only for Inception-v3 features."""

    features: str  # the extractor's name, e.g. "inception-v3" or "cifar-resnet56:PATH"
    standard: bool
    num_real: int
    num_fake: int
    fid: float
    kid: float
    kid_std: float
    inception_score: float | None
    inception_score_std: float | None
    inception_score_note: str  # which logits gave IS, or why it is null
    precision: float
    recall: float
    density: float
    coverage: float
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"metric": "quality", **asdict(self)}


def _device() -> torch.device:
    from ..parallel import process_state

    return process_state().device


def quality_from_features(
    real: FeatureSet,
    fake: FeatureSet,
    *,
    extractor_name: str,
    standard: bool,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k_pr: int = 3,
    k_dc: int = 5,
    manifold_samples: int = 10_000,
    is_splits: int = 10,
    seed: int = 0,
) -> QualityResult:
    """All scores from two feature stores. Precision/recall/density/coverage use at most `manifold_samples`
    rows of each set (a fixed random subset, as in both papers' 10k protocol)."""
    mu_r, cov_r = real.mean_cov()
    mu_f, cov_f = fake.mean_cov()
    fid = frechet_distance(mu_r, cov_r, mu_f, cov_f)
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
        note = f"not available: {extractor_name} has no classifier logits (use --features inception)"
    return QualityResult(
        features=extractor_name,
        standard=standard,
        num_real=real.count,
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
        settings={
            "kid_subsets": kid_subsets,
            "kid_subset_size": kid_size,
            "k_precision_recall": k_pr,
            "k_density_coverage": k_dc,
            "manifold_samples_real": min(manifold_samples, real.count),
            "manifold_samples_fake": min(manifold_samples, fake.count),
            "is_splits": is_splits,
            "seed": seed,
            "real_store": str(real.folder),
            "fake_store": str(fake.folder),
        },
    )


def evaluate_quality(
    real: Sequence[Path],
    fake: Sequence[Path],
    extractor: FeatureExtractor,
    store: str | Path,
    *,
    image_size: int | None = None,
    batch_size: int = 100,
    num_workers: int = 0,
    progress: bool = False,
    **kwargs,
) -> QualityResult:
    """Extract (or reuse) features of both image lists into `store`, then score. kwargs: see quality_from_features.

    Both sets are brought to the same side before the extractor: `image_size`, default the first real file's.
    """
    size = image_size or native_size(Path(real[0]))
    common = dict(image_size=size, batch_size=batch_size, num_workers=num_workers, progress=progress)
    fr = extract_features(real, extractor, store, label="real", **common)
    ff = extract_features(fake, extractor, store, label="fake", **common)
    result = quality_from_features(
        fr, ff, extractor_name=extractor.name, standard=extractor.standard, **kwargs
    )
    result.settings["image_size"] = size
    return result
