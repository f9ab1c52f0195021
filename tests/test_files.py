"""rcdm.files: folders and files written whole or not at all."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from rcdm import files
from rcdm.cli import main
from rcdm.errors import DiskFullError
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


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_inside_an_output_folder_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    says = r"the disk holding --out '.*out' is full .*nothing was written"
    with pytest.raises(DiskFullError, match=says), files.output_folder(out, marker="done.txt") as tmp:
        (tmp / "figure.png").write_bytes(b"half")
        _no_space()
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_a_full_disk_in_an_atomic_file_keeps_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(DiskFullError, match="is full"), files.atomic_file(target) as tmp:
        tmp.write_text("new, half")
        _no_space()
    assert target.read_text() == "old" and not list(tmp_path.glob(".tmp-*"))


def test_sample_reports_a_full_disk_in_one_line(pixels_model, few_images, tmp_path, capsys, monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module("rcdm.visualize"), "save_png", _no_space)
    argv = ["sample", "--model", str(pixels_model), "--images", str(few_images), "--num-samples", "1"]
    assert main([*argv, "--steps", "2", "--no-progress", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is full" in err and "nothing was written" in err, err
    assert not (tmp_path / "s").exists()
