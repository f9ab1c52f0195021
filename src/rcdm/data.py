"""Images in, tensors out: folders of any nesting, paired views, and a deterministic per-step batch order.

Tensor conventions: images are float (3, H, W) RGB in [0, 1]; the diffusion model works in [-1, 1]
(`to_model_space`); encoders normalise for themselves (see encoders.Preprocessing).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset, Sampler
from torchvision.transforms.functional import pil_to_tensor
from tqdm.auto import tqdm

from .errors import RCDMError
from .files import atomic_file

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def list_images(root: str | Path) -> list[Path]:
    """Every image file under `root` (any nesting), sorted. Raises if none."""
    root = Path(root).expanduser()
    if not root.exists():
        raise RCDMError(f"image folder not found: {str(root)!r}")
    if root.is_file():
        if root.suffix.lower() not in IMAGE_SUFFIXES:
            raise RCDMError(
                f"{str(root)!r} is a file, not an image folder or an image "
                f"({'/'.join(sorted(IMAGE_SUFFIXES))}): pass the folder that holds the images"
            )
        return [root]
    named = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    files = [p for p in named if p.is_file()]
    unreadable = [p for p in named if not p.is_file() and not p.is_dir()]
    if unreadable:  # a dangling link, a FIFO, a socket: reported, never opened (a FIFO would block)
        shown = ", ".join(repr(str(p)) for p in unreadable[:3]) + (" ..." if len(unreadable) > 3 else "")
        log.warning(
            "skipped %d entr%s of %s that %s not a readable file (a broken link, a FIFO or a device): %s",
            len(unreadable),
            "y" if len(unreadable) == 1 else "ies",
            str(root),
            "is" if len(unreadable) == 1 else "are",
            shown,
        )
    if not files:
        raise RCDMError(
            f"no images in {str(root)!r}: put .jpg/.png/.webp files in it (any sub-folders are searched)"
        )
    return files


def expand_image_args(paths: Iterable[str | Path]) -> list[Path]:
    """CLI `--images` arguments (files or folders) -> image files, in order. Missing paths are errors."""
    out: list[Path] = []
    for p in paths:
        p = Path(p).expanduser()
        if not p.exists():
            raise RCDMError(f"image not found: {str(p)!r}" + (" (a broken link)" if p.is_symlink() else ""))
        if not p.is_dir() and not p.is_file():
            raise RCDMError(f"{str(p)!r} is not a regular file (a FIFO or a device?): pass an image file")
        out.extend(list_images(p) if p.is_dir() else [p])
    if not out:
        raise RCDMError("no images given: pass --images FILE_OR_FOLDER ...")
    return out


# Decoded pixels per image at most (Pillow's own limit warns at 89M and refuses at 179M): 64M pixels is an 8k x 8k
# photo, 192 MB as RGB. RCDM_MAX_IMAGE_PIXELS raises it.
MAX_IMAGE_PIXELS = 64 * 2**20


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with 16/32-bit grayscale scaled to 8 bits first (Pillow's convert('RGB') clips them at 255)."""
    if im.mode == "F":  # 32-bit float: [0, 1] as most float images are stored, else 0-255
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        im = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), mode="L")
    elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB; an unreadable or too large file is an RCDMError naming it."""
    limit = int(os.environ.get("RCDM_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS))
    if Path(path).exists() and not Path(path).is_file():  # a FIFO would block open() for good
        raise RCDMError(f"cannot read image {str(path)!r}: it is not a regular file")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > limit:
                raise RCDMError(
                    f"image {str(path)!r} is {w}x{h} = {w * h / 1e6:.0f}M pixels, over the {limit / 1e6:.0f}M limit: "
                    "resize it, or raise RCDM_MAX_IMAGE_PIXELS"
                )
            return _to_rgb(im)
    except RCDMError:
        raise
    except Image.DecompressionBombError as e:  # over Pillow's own hard limit, refused before our check
        raise RCDMError(f"image {str(path)!r} is too large to decode ({e}): resize it") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise RCDMError(
            f"cannot read image {str(path)!r}: {e.__class__.__name__}; is it a jpg/png/webp?"
        ) from None


def center_square(img: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (3, S, S) centre crop with S = min(H, W)."""
    h, w = img.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return img[..., top : top + s, left : left + s]


def resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """(…, 3, H, W) in [0, 1] -> (…, 3, size, size), bicubic with antialias, clamped to [0, 1]."""
    if img.shape[-1] == size and img.shape[-2] == size:
        return img
    batched = img.ndim == 4
    x = img if batched else img.unsqueeze(0)
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return x if batched else x[0]


# How a file becomes a square view: "antialias" = centre square crop, then antialiased bicubic (ours);
# "published" = guided-diffusion's center_crop_arr, what the published RCDMs and their encoders saw.
Resample = Literal["antialias", "published"]


def published_center_crop(img: Image.Image, size: int) -> torch.Tensor:
    """guided-diffusion's `center_crop_arr`: halve with BOX while the shorter side is >= 2 * size, BICUBIC so the
    shorter side is `size`, then centre crop. Written out because the published models were trained on exactly
    these pixels (PIL's resamplers, uint8 rounding), which no tensor resize reproduces."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(v // 2 for v in img.size), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(v * scale) for v in img.size), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    crop = np.ascontiguousarray(arr[top : top + size, left : left + size])
    return torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0


def image_tensor(path: str | Path, size: int | None = None, resample: Resample = "antialias") -> torch.Tensor:
    """A file -> (3, size, size) in [0, 1]: centre square crop, then resize (None keeps the crop's size)."""
    if resample == "published" and size:
        return published_center_crop(load_image(path), size)
    x = pil_to_tensor(load_image(path)).float() / 255.0
    x = center_square(x)
    return resize(x, size) if size else x


def load_images(paths: Sequence[str | Path], size: int, resample: Resample = "antialias") -> torch.Tensor:
    """(N, 3, size, size) in [0, 1]."""
    return torch.stack([image_tensor(p, size, resample) for p in paths])


def load_views(
    paths: Sequence[str | Path], image_size: int, encoder_size: int, resample: Resample = "antialias"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Files -> (diffusion views (N, 3, image_size, image_size), encoder views (N, 3, encoder_size, ...)) in [0, 1].

    Both come from the same centre square crop of each file (the published protocol; the evaluation twin of
    `PairedViews`); `resample="published"` resizes as the published code did (see `published_center_crop`).
    """
    if resample == "published":  # each file decoded once, cut at both sizes
        files = [load_image(p) for p in paths]
        return (
            torch.stack([published_center_crop(im, image_size) for im in files]),
            torch.stack([published_center_crop(im, encoder_size) for im in files]),
        )
    squares = [image_tensor(p) for p in paths]
    return (
        torch.stack([resize(x, image_size) for x in squares]),
        torch.stack([resize(x, encoder_size) for x in squares]),
    )


def batched(total: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(start, end) spans of at most `batch_size` covering range(total)."""
    for start in range(0, total, batch_size):
        yield start, min(total, start + batch_size)


def files_digest(files: Sequence[str | Path]) -> str:
    """12 hex digits identifying an ordered list of files by their absolute paths (cache keys, manifests)."""
    h = hashlib.sha256()
    for f in files:
        h.update(str(Path(f).resolve()).encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


# A data set decoded once is kept in memory while it is at most this large (uint8 bytes); RCDM_DECODE_MAX_GB
# changes it, 0 turns decoding off.
DECODE_MAX_BYTES = 4 * 2**30


def decode_cache_dir() -> Path:
    """`$RCDM_CACHE/decoded` (default ~/.cache/rcdm/decoded): data sets decoded once into uint8 tensors."""
    return Path(os.environ.get("RCDM_CACHE", Path.home() / ".cache" / "rcdm")).expanduser() / "decoded"


def _decode_key(files: Sequence[Path]) -> str:
    """Digest of the file list with each file's size and modification time: a changed file is a new key."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def decode_images(
    files: Sequence[Path],
    *,
    cache_dir: Path | None = None,
    max_bytes: int | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> torch.Tensor | None:
    """Every file decoded once into a (N, 3, H, W) uint8 RGB tensor, cached as safetensors; None when not worth it.

    Decoding a JPEG costs more than a training step's share of a small model on a CPU, so a data set that fits
    in memory is decoded once (threads: PIL releases the GIL) and read back from the cache file on later runs.
    Only data sets whose images all have one size qualify (CIFAR-10, pre-resized folders): random crops are
    then taken from exactly the pixels the file holds. Returns None (per-file decoding) for mixed sizes or more
    than `max_bytes` (default DECODE_MAX_BYTES, or RCDM_DECODE_MAX_GB).
    """
    if max_bytes is None:
        gb = os.environ.get("RCDM_DECODE_MAX_GB")
        max_bytes = int(float(gb) * 2**30) if gb else DECODE_MAX_BYTES
    if not files or max_bytes <= 0:
        return None
    try:
        sizes = set()
        for f in files:
            with Image.open(f) as im:  # header only
                sizes.add(im.size)
            if len(sizes) > 1:
                log.info("images of several sizes (%s, ...): decoding per file", ", ".join(map(str, sizes)))
                return None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        return None  # an unreadable file: the per-file path names and skips it
    (w, h), n = sizes.pop(), len(files)
    if n * 3 * h * w > max_bytes:
        log.info(
            "%d images of %dx%d exceed the decode budget (%.1f GB): decoding per file",
            n,
            w,
            h,
            max_bytes / 2**30,
        )
        return None
    path = (cache_dir or decode_cache_dir()) / f"{_decode_key(files)}.safetensors"
    if path.is_file():
        try:
            images = load_file(str(path))["images"]
            if images.shape == (n, 3, h, w):
                log.info("decoded images read from %s", path)
                return images
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            log.warning("ignoring unreadable decode cache %s (%s): decoding again", path, e)

    def one(f: Path) -> torch.Tensor:
        return pil_to_tensor(load_image(f))

    out = torch.empty((n, 3, h, w), dtype=torch.uint8)
    t0 = time.perf_counter()
    with (
        ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool,
        # disable=None: tqdm stays silent when stderr is no terminal, so a log file never gets its \r redraws
        tqdm(total=n, desc="decoding images", unit="img", disable=None if progress else True) as bar,
    ):
        for i, x in enumerate(pool.map(one, files, chunksize=256)):
            out[i] = x
            bar.update(1)
    rate = n / max(1e-9, time.perf_counter() - t0)
    log.info("decoded %d images (%dx%d) at %.0f img/s into %s", n, w, h, rate, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        save_file({"images": out}, str(tmp))
    return out


def to_model_space(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2 - 1


class PairedViews(Dataset):
    """Training pairs: the same random crop + flip, resized once for the diffusion model and once for the encoder.

    Items are addressed by (file index, augmentation seed) so that a batch is a pure function of the step.
    Returns {'image': diffusion view (3, image_size, image_size), 'enc_image': encoder view (3, encoder_size,
    encoder_size), both in [0, 1], 'index': the file used, 'flipped': bool}; an unreadable file is logged once and
    replaced by the next readable one. `decoded` (from `decode_images`): the files' pixels, read instead of the
    files.
    """

    def __init__(
        self,
        files: Sequence[Path],
        image_size: int,
        encoder_size: int,
        min_scale: float = 0.8,  # random crop side as a fraction of the shorter side (1.0: centre square)
        decoded: torch.Tensor | None = None,  # (N, 3, H, W) uint8, one per file
    ):
        if decoded is not None and decoded.shape[0] != len(files):
            raise RCDMError(f"{decoded.shape[0]} decoded images for {len(files)} files: decode them again")
        self.decoded = decoded
        self.files = list(files)
        self.image_size = image_size
        self.encoder_size = encoder_size
        self.min_scale = min_scale
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, index: int) -> tuple[int, torch.Tensor]:
        if self.decoded is not None:
            return index, self.decoded[index].float() / 255.0
        for k in range(len(self.files)):
            i = (index + k) % len(self.files)
            if i in self._bad:
                continue
            try:
                return i, pil_to_tensor(load_image(self.files[i])).float() / 255.0
            except RCDMError as e:
                self._bad.add(i)
                log.warning("skipping unreadable image: %s", e)
        raise RCDMError(
            f"none of the {len(self.files)} training image(s) can be read (e.g. {str(self.files[0])!r}; see the "
            "warnings above): check --data"
        )

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        g = torch.Generator().manual_seed(seed)
        index, img = self._read(index)
        h, w = img.shape[-2:]
        short = min(h, w)
        scale = self.min_scale + (1 - self.min_scale) * torch.rand((), generator=g).item()
        s = max(1, round(short * scale))
        if self.min_scale >= 1.0:  # fixed centre square (feature-cache mode): only the flip is random
            top, left = (h - s) // 2, (w - s) // 2
        else:
            top = int(torch.randint(0, h - s + 1, (), generator=g))
            left = int(torch.randint(0, w - s + 1, (), generator=g))
        crop = img[:, top : top + s, left : left + s]
        flipped = torch.rand((), generator=g).item() < 0.5
        if flipped:
            crop = crop.flip(-1)
        return {
            "image": resize(crop, self.image_size),
            "enc_image": resize(crop, self.encoder_size),
            "index": index,
            "flipped": flipped,
        }


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for each step from `start_step`, this rank's share of the global batch as (index, aug seed).

    The order is an epoch-wise permutation seeded by (seed, epoch): a run resumed at step s sees exactly the
    batches an uninterrupted run would, on any number of workers.
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        seed: int,
        start_step: int,
        total_steps: int,
        rank: int = 0,
        world: int = 1,
    ):
        if global_batch % world:
            raise RCDMError(f"batch size {global_batch} is not divisible by the {world} processes: change it")
        self.n, self.b, self.seed = n, global_batch, seed
        self.start, self.total, self.rank, self.world = start_step, total_steps, rank, world
        self._perm_epoch, self._perm = -1, torch.empty(0)

    def _position(self, pos: int) -> int:
        epoch, offset = divmod(pos, self.n)
        if epoch != self._perm_epoch:
            self._perm = torch.randperm(
                self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)
            )
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        local = self.b // self.world
        for step in range(self.start, self.total):
            first = step * self.b + self.rank * local
            yield [(self._position(p), self.seed * 1_000_003 + p) for p in range(first, first + local)]

    def __len__(self) -> int:
        return max(0, self.total - self.start)
