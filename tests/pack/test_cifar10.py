"""rcdm.pack.cifar10: CIFAR-10 as files (class-balanced lists, flat copies of evaluation images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcdm.errors import RCDMError
from rcdm.pack.cifar10 import cifar10_root, copy_test_images, labelled_files


def _tree(root: Path, counts: dict[str, int]) -> Path:
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{i:04d}.jpg").write_bytes(b"x")
    return root


def test_any_prefix_is_class_balanced_and_copies_keep_their_class(tmp_path: Path) -> None:
    split = _tree(tmp_path / "test", {"cat": 3, "dog": 1, "ship": 2})
    files, labels, classes = labelled_files(split)
    assert classes == ["cat", "dog", "ship"] and labels[:3] == [0, 1, 2]  # round-robin over the classes
    assert labels == [0, 1, 2, 0, 2, 0] and len(files) == 6
    copied = copy_test_images(split, tmp_path / "flat", 4)
    assert [p.name for p in copied] == ["cat-0000.jpg", "dog-0000.jpg", "ship-0000.jpg", "cat-0001.jpg"]
    assert copy_test_images(split, tmp_path / "flat", 4) == copied  # again: nothing new


def test_a_folder_without_both_splits_is_one_line(tmp_path: Path) -> None:
    _tree(tmp_path / "train", {"cat": 1})
    with pytest.raises(RCDMError, match="is not a CIFAR-10 folder"):
        cifar10_root(tmp_path)
