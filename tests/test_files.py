"""rcdm.files: folders and files written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rcdm import files
from rcdm.files import atomic_dir


def test_atomic_dir_replaces_the_folder_only_when_complete(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed mid-save")
    assert (final / "a.txt").read_text() == "one"  # the old folder survives a failed write
    with atomic_dir(final) as tmp:  # a leftover temporary folder (as after a kill) does not disturb the next
        (tmp / "a.txt").write_text("two")
    assert (final / "a.txt").read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_dir_keeps_the_old_folder_when_the_final_rename_fails(tmp_path, monkeypatch):
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("one")
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".tmp-"):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(OSError), atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("two")
    assert (final / "a.txt").read_text() == "one"  # never removed before its replacement is in place
    assert not list(tmp_path.glob(".old-*"))
