"""rcdm.data: which files become images, and how odd pixel formats decode."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rcdm.data import PairedViews, decode_images, expand_image_args, image_tensor, list_images, load_image
from rcdm.errors import RCDMError


def _rgb(path):
    Image.new("RGB", (8, 8), (200, 100, 50)).save(path)
    return path


def test_a_fifo_named_as_an_image_is_refused_not_opened(tmp_path):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)  # open() on it would block until a writer comes: forever
    with pytest.raises(RCDMError, match=r"fifo\.jpg.*not a regular file"):
        expand_image_args([fifo])
    with pytest.raises(RCDMError, match=r"fifo\.jpg.*not a regular file"):
        load_image(fifo)


def test_broken_links_and_fifos_in_a_folder_are_reported_and_skipped(tmp_path, caplog):
    _rgb(tmp_path / "a.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(tmp_path / "pipe.jpg")
    with caplog.at_level(logging.WARNING, logger="rcdm.data"):
        files = list_images(tmp_path)
    assert [f.name for f in files] == ["a.png"]
    assert "skipped 2 entries" in caplog.text and "gone.png" in caplog.text and "pipe.jpg" in caplog.text


def test_a_broken_link_given_by_name_says_so(tmp_path):
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(RCDMError, match=r"image not found: .*gone\.png.*broken link"):
        expand_image_args([tmp_path / "gone.png"])


@pytest.mark.parametrize("top", [1.0, 255.0])
def test_float_images_decode_to_their_grey_not_black(tmp_path, top):
    ramp = np.linspace(0, top, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(ramp, mode="F").save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as im:
        assert im.mode == "F"
    x = image_tensor(tmp_path / "f.tif")
    assert abs(float(x.mean()) - 0.5) < 0.02  # Pillow's convert('RGB') gives 0 for values in [0, 1]
    assert float(x.max()) > 0.99


def test_the_decoding_bar_never_writes_carriage_returns_into_a_log(tmp_path, capsys, monkeypatch):
    from rcdm.data import decode_images

    monkeypatch.setenv("RCDM_CACHE", str(tmp_path / "cache"))
    files = [_rgb(tmp_path / f"{i}.png") for i in range(3)]
    decode_images(files, progress=True)  # progress asked for, but stderr is captured: no terminal
    assert "\r" not in capsys.readouterr().err


def test_decoded_images_are_the_files_pixels_and_are_cached(few_images: Path, tmp_path: Path):
    folder = tmp_path / "images"
    folder.mkdir()
    for f in list_images(few_images):
        (folder / f.name).write_bytes(f.read_bytes())
    files = list_images(folder)
    tmp_path = tmp_path / "cache"
    decoded = decode_images(files, cache_dir=tmp_path, progress=False)
    assert decoded is not None and decoded.dtype == torch.uint8 and decoded.shape == (len(files), 3, 32, 32)
    plain = PairedViews(files, 32, 32, min_scale=0.6)
    fast = PairedViews(files, 32, 32, min_scale=0.6, decoded=decoded)
    for key in [(0, 11), (3, 5), (7, 123)]:
        a, b = plain[key], fast[key]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["enc_image"], b["enc_image"])
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    again = decode_images(files, cache_dir=tmp_path, progress=False)
    assert again is not None and torch.equal(again, decoded)
    # A changed file is a new cache entry, with its new pixels.
    os.utime(files[0], ns=(1, 1))
    Image.new("RGB", (32, 32), (255, 0, 0)).save(files[0], format="JPEG", quality=100)
    changed = decode_images(files, cache_dir=tmp_path, progress=False)
    assert changed is not None and len(list(tmp_path.glob("*.safetensors"))) == 2
    assert changed[0, 0].float().mean() > 240 and not torch.equal(changed[0], decoded[0])


def test_decoding_is_skipped_for_mixed_sizes_and_over_budget(tmp_path: Path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    Image.new("RGB", (40, 32)).save(folder / "b.png")
    assert decode_images(list_images(folder), cache_dir=tmp_path, progress=False) is None
    same = list_images(folder)[:1]
    assert decode_images(same, cache_dir=tmp_path, max_bytes=3 * 32 * 32 - 1, progress=False) is None
    assert decode_images(same, cache_dir=tmp_path, max_bytes=3 * 32 * 32, progress=False) is not None
