"""CIFAR-10 as files: the class-folder tree (extracted once from the .tar.gz into the rcdm cache), class-balanced
file lists and a threaded decode to uint8. Used by the encoder recipe, the pack stages and the tests.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torchvision.transforms.functional import pil_to_tensor

from ..data import center_square, load_image, resize
from ..errors import RCDMError


def cifar10_root(data: str | Path) -> Path:
    """A folder with train/ and test/ class sub-folders; a .tar.gz is extracted once into the rcdm cache."""
    path = Path(data).expanduser()
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        cache = Path(os.environ.get("RCDM_CACHE", Path.home() / ".cache" / "rcdm")) / "cifar10"
        if not (cache / ".extracted").exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tarfile.open(path) as tar:
                tar.extractall(cache, filter="data")
            (cache / ".extracted").touch()
        path = cache
    if not (path / "train").is_dir() or not (path / "test").is_dir():
        raise RCDMError(
            f"{str(path)!r} is not a CIFAR-10 folder: expected train/<class>/*.jpg and test/<class>/*.jpg "
            "(or pass the cifar10-jpeg.tar.gz)"
        )
    return path


def labelled_files(split_dir: Path, limit: int | None = None) -> tuple[list[Path], list[int], list[str]]:
    """split_dir/<class>/<image> -> (files, labels, class names); `limit` takes a class-balanced prefix."""
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    per_class = [
        sorted(p for p in (split_dir / c).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        for c in classes
    ]
    if not classes or not any(per_class):
        raise RCDMError(f"no class folders with images in {str(split_dir)!r}")
    files: list[Path] = []
    labels: list[int] = []
    # Round-robin over classes so that any prefix is class-balanced.
    for i in range(max(len(f) for f in per_class)):
        for c, fs in enumerate(per_class):
            if i < len(fs):
                files.append(fs[i])
                labels.append(c)
    if limit is not None:
        files, labels = files[:limit], labels[:limit]
    return files, labels, classes


def load_uint8(files: list[Path], size: int = 32, threads: int = 8) -> torch.Tensor:
    """Files -> (N, 3, size, size) uint8 RGB (centre square, bicubic resize when not already size x size)."""

    def one(p: Path) -> torch.Tensor:
        x = center_square(pil_to_tensor(load_image(p)))
        if x.shape[-1] != size:
            x = (resize(x.float() / 255, size) * 255).round().to(torch.uint8)
        return x

    with ThreadPoolExecutor(threads) as pool:
        return torch.stack(list(pool.map(one, files)))


def copy_test_images(split_dir: str | Path, dst: str | Path, n: int) -> list[Path]:
    """The first n class-balanced images of split_dir (`labelled_files`), copied flat into dst as
    <class>-<file>: evaluation inputs for commands that take a folder. dst is created when missing; images already
    there are kept."""
    files, _, _ = labelled_files(Path(split_dir), n)
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    copied = [out / f"{f.parent.name}-{f.name}" for f in files]
    for f, to in zip(files, copied, strict=True):
        if not to.is_file():
            shutil.copyfile(f, to)
    return copied
