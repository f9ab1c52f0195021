"""The CPU training path: data decoded once, representation standardisation, bf16 autocast on the CPU."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from PIL import Image

from rcdm.data import PairedViews, decode_images, list_images
from rcdm.model import RCDM
from rcdm.train import TrainConfig, train


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


def test_standardized_model_uses_and_saves_its_statistics(tmp_path: Path):
    torch.manual_seed(0)
    m = RCDM.from_preset("tiny", representation_dim=6, standardize_representation=True)
    reps = torch.randn(500, 6) * torch.tensor([5.0, 1, 1, 1, 1, 0]) + 3
    m.set_representation_stats(reps)
    assert (
        torch.allclose(m.rep_mean, reps.mean(0)) and (m.rep_std > 0).all()
    )  # the constant dimension is floored
    x = reps[:2]
    want = m.rep_proj((x - reps.mean(0)) / m.rep_std)
    assert torch.allclose(m.condition(x, 2), want, atol=1e-5)
    m.save_pretrained(tmp_path / "m")
    back = RCDM.from_pretrained(tmp_path / "m")
    assert torch.equal(back.rep_mean, m.rep_mean) and torch.equal(back.rep_std, m.rep_std)
    assert torch.allclose(back.condition(x, 2), want, atol=1e-5)
    raw = RCDM.from_preset("tiny", representation_dim=6)
    assert raw.rep_mean is None and "rep_mean" not in raw.state_dict()


def test_standardized_training_records_statistics_and_logs_a_summary(
    few_images, resnet20_spec, tmp_path, caplog
):
    cfg = TrainConfig(
        data=str(few_images),
        encoder=resnet20_spec,
        preset="tiny",
        steps=2,
        batch_size=4,
        save_every=2,
        num_workers=0,
        standardize=True,
    )
    with caplog.at_level(logging.INFO, logger="rcdm.train"):
        train(cfg, tmp_path / "run", progress=False)
    model = RCDM.from_pretrained(tmp_path / "run" / "model")
    assert model.config.standardize_representation
    assert model.rep_std.shape == (64,) and float(model.rep_std.min()) > 0
    assert float(model.rep_mean.abs().max()) > 0  # real statistics, not the zero initialisation
    text = caplog.text
    assert "8 images (decoded in memory)" in text and "global batch 4" in text
    assert "step 2/2: mean loss" in text and "img/s; saved" in text


def test_training_loss_falls_under_bf16_as_under_fp32(few_images, tmp_path):
    def run(precision: str) -> list[float]:
        cfg = TrainConfig(
            data=str(few_images),
            encoder="pixels:4",
            preset="tiny",
            image_size=16,
            steps=40,
            batch_size=8,
            lr=2e-3,
            save_every=40,
            num_workers=0,
            loss="simple",
            mixed_precision=precision,
        )
        return train(cfg, tmp_path / precision, progress=False).history

    bf16, fp32 = run("bf16"), run("fp32")
    assert bf16 != fp32  # bf16 autocast did run
    for history in (bf16, fp32):
        first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
        assert last < 0.5 * first, (first, last)
    assert abs(sum(bf16[-10:]) - sum(fp32[-10:])) / 10 < 0.05, (bf16[-10:], fp32[-10:])
