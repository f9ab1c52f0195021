"""The representation cache: built once, reused when its key matches, refused (never reused) when it does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from rcdm.encoders import create_encoder
from rcdm.encoders.cache import cache_file, cached_representations
from rcdm.errors import RCDMError


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(3):
        arr = (torch.rand(12, 12, 3, generator=g) * 255).to(torch.uint8).numpy()
        path = tmp_path / f"im{i}.png"
        Image.fromarray(arr).save(path)
        out.append(path)
    return out


def test_cache_holds_the_encoded_files_and_their_mirrors(images, tmp_path):
    enc = create_encoder("pixels:4")
    path = cached_representations(enc, images, tmp_path / "reps.safetensors", flipped=True, batch_size=2)
    tensors = load_file(str(path))
    assert torch.equal(tensors["representations"], enc.encode_files(images))
    assert torch.equal(tensors["flipped"], enc.encode_files(images, flip=True))
    assert not torch.equal(tensors["representations"], tensors["flipped"])
    mtime = path.stat().st_mtime_ns
    assert cached_representations(enc, images, path) == path and path.stat().st_mtime_ns == mtime  # reused


def test_cache_refuses_another_encoder_or_file_list(images, tmp_path):
    path = cached_representations(create_encoder("pixels:4"), images, tmp_path / "reps.safetensors")
    with pytest.raises(RCDMError, match=r"another encoder, feature or file list.*delete it"):
        cached_representations(create_encoder("pixels:2"), images, path)
    with pytest.raises(RCDMError, match="another encoder"):
        cached_representations(create_encoder("pixels:4"), images[:2], path)
    # In a cache folder each (encoder, feature, files) gets its own file.
    assert cache_file(tmp_path, create_encoder("pixels:4"), images) != cache_file(
        tmp_path, create_encoder("pixels:2"), images
    )


def test_a_cache_edited_to_hold_nan_is_refused_when_read(images, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from rcdm.encoders.cache import load_cache

    enc = create_encoder("pixels:2")
    path = cached_representations(enc, images, tmp_path / "c.safetensors", flipped=True)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["flipped"][1, 0] = float("nan")
    save_file(tensors, str(path), metadata=meta)  # the key still matches: only the values are damaged
    with pytest.raises(RCDMError, match=r"holds non-finite values \(flipped, row 1, 1 row\(s\) in all\)"):
        load_cache(path)
