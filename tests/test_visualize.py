"""rcdm.visualize: N samples of each image's representation, reproducible from the seed."""

from __future__ import annotations

from pathlib import Path

import torch

from rcdm.diffusion import SamplingConfig
from rcdm.loading import encoder_for, load_model
from rcdm.visualize import visualize


def test_samples_per_image_are_shaped_named_and_reproducible(tiny_run: Path, few_images: Path) -> None:
    model = load_model(tiny_run)
    encoder = encoder_for(model)
    images = sorted(few_images.glob("*.jpg"))[:2]
    cfg = SamplingConfig(steps=2, seed=3, precision="fp32")
    vis = visualize(model, encoder, images, num_samples=3, sampling=cfg)
    size = model.config.sample_size
    assert vis.names == [p.stem for p in images]
    assert vis.originals.shape == (2, 3, size, size) and vis.samples.shape == (2, 3, 3, size, size)
    assert vis.representations.shape[0] == 2 and vis.samples.min() >= 0 and vis.samples.max() <= 1
    again = visualize(model, encoder, images, num_samples=3, sampling=cfg)
    assert torch.equal(vis.samples, again.samples)
    other = visualize(model, encoder, images, num_samples=3, sampling=cfg.replace(seed=4))
    assert not torch.equal(vis.samples, other.samples)
