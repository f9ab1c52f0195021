"""rcdm.data: which files become images, and how odd pixel formats decode."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from rcdm.data import expand_image_args, image_tensor, list_images, load_image
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
