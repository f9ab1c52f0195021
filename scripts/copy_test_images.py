"""N class-balanced images of a split's class folders, copied flat as <class>-<file> (for evaluation inputs).

    python scripts/copy_test_images.py SRC DST N

SRC/<class>/<image> (e.g. CIFAR-10's test split: no model here trains on it); DST is created when missing. The
selection is `rcdm.pack.cifar10.labelled_files(SRC, N)`: round-robin over the classes, so any N is balanced.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from rcdm.pack.cifar10 import labelled_files


def copy_test_images(src: Path, dst: Path, n: int) -> list[Path]:
    files, _, _ = labelled_files(src, n)
    dst.mkdir(parents=True, exist_ok=True)
    copied = [dst / f"{f.parent.name}-{f.name}" for f in files]
    for f, to in zip(files, copied, strict=True):
        shutil.copyfile(f, to)
    return copied


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    copy_test_images(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
