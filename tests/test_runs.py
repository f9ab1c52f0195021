"""Run folders: atomic folder writes and checkpoint bookkeeping."""

from __future__ import annotations

import pytest

from rcdm.runs import atomic_dir, latest_checkpoint, prune_checkpoints


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


def test_latest_and_prune_ignore_incomplete_checkpoints(tmp_path):
    ck = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        (ck / f"step-{step:08d}").mkdir(parents=True)
        (ck / f"step-{step:08d}" / "state.json").write_text("{}")
    (ck / "step-00000004").mkdir()  # interrupted: no state.json
    (ck / ".tmp-step-00000005-1").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in ck.iterdir()) == ["step-00000002", "step-00000003", "step-00000004"]
    assert latest_checkpoint(tmp_path / "nothing") is None
