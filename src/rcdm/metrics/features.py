"""Features for the quality metrics: the extractors (FID Inception-v3, downloaded once, or any rcdm Encoder) and
the streamed feature store (`extract_features` -> `FeatureSet`, `.npy` files on disk, resumable and shareable
across processes; every metric reads it in chunks).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import pil_to_tensor
from tqdm.auto import tqdm

from ..data import batched, center_square, files_digest, load_image
from ..devices import process_state
from ..encoders import Encoder, create_encoder
from ..errors import RCDMError, first_line
from ..weights import Weights, fetch

# The FID network: torch-fidelity's conversion of TF's inception-2015-12-05 (what torchmetrics' FID uses).
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_ALIASES = (INCEPTION_FILE, "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_ENV = "RCDM_INCEPTION_WEIGHTS"
# torch-fidelity's file (its URL_INCEPTION_V3). The file name carries the sha256 prefix (torch.hub's convention);
# the full digest and size are the ones other projects record for this file, and they agree with that prefix.
INCEPTION_WEIGHTS = Weights(
    url=INCEPTION_URL,
    filename=INCEPTION_FILE,
    size=95_628_359,
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    license="Apache-2.0",
    paper="Szegedy et al. 2016 (Inception-v3, TF 2015-12-05 graph); Heusel et al. 2017 (FID); torch-fidelity",
)
INCEPTION_NAMES = ("inception", "inception-v3")


# --- feature extractors -------------------------------------------------------------------------------


class FeatureExtractor(nn.Module):
    """forward(images): uint8 (B, 3, H, W) RGB -> (features (B, dim) float32, logits (B, classes) or None).

    `name` labels the scores; `standard` is True only for the FID Inception-v3 (scores comparable to papers);
    `has_logits` says whether an Inception Score can be computed (from these logits); `dim` is the feature width.
    """

    name: str
    standard: bool
    has_logits: bool
    dim: int

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
            import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
        except ImportError:
            raise RCDMError(
                "Inception features need torch-fidelity: pip install torch-fidelity (or pass --extractor SPEC)"
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
        # torch-fidelity torch.loads what it is given with weights_only=False: give it the state dict read safely
        # above, written again into memory (plain tensors only), instead of the file.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        try:
            self.net = tf_inception.FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=buffer
            )
        except RuntimeError as e:
            raise RCDMError(
                f"{str(path)!r} is not the FID Inception-v3 ({INCEPTION_FILE}): {first_line(e)}"
            ) from None
        self.name = "inception-v3"
        self.standard = True
        self.has_logits = True
        self.dim = 2048  # pool3

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
        self.dim = encoder.dim

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = images.float() / 255.0
        h = self.encoder.backbone_features(x)
        feats = self.encoder.projector(h).float() if self.encoder.feature == "projector" else h
        logits = self.encoder.classifier(h).float() if self.encoder.classifier is not None else None
        return feats, logits


def inception_cache() -> Path:
    """The torch hub cache (`torch.hub.get_dir()/checkpoints/`): where torch-fidelity / torchmetrics keep the file."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_inception_weights(path: str | Path | None = None, *, progress: bool = True) -> Path:
    """The FID Inception weights file: `path` if given, else $RCDM_INCEPTION_WEIGHTS, else torch-fidelity's file
    in the torch hub cache (downloaded there on first use by rcdm.weights.fetch, size and sha256 checked at every
    use; pytorch-fid's copy of it there is taken as it is). Offline: RCDMError naming the file's URL and where to
    put it."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise RCDMError(
                f"Inception weights not found at {str(p)!r}: download {INCEPTION_URL} to that path"
            )
        return p
    env = os.environ.get(INCEPTION_ENV)
    if env and Path(env).expanduser().is_file():
        return Path(env).expanduser()
    cache = inception_cache()
    pytorch_fid = cache / INCEPTION_ALIASES[1]
    if not (cache / INCEPTION_FILE).is_file() and pytorch_fid.is_file():
        return pytorch_fid
    return fetch(
        INCEPTION_WEIGHTS,
        cache,
        progress=progress,
        instead="pass --inception-weights PATH, or --extractor SPEC for another feature network",
    )


def create_feature_extractor(
    spec: str = "inception", inception_weights: str | Path | None = None
) -> FeatureExtractor:
    """'inception' (the FID network; downloaded on first use) or any encoder spec (its backbone feature)."""
    if spec in INCEPTION_NAMES:
        with process_state().main_process_first():  # one process downloads, the others then find the file
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
