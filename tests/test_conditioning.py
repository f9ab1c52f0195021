"""End to end: a tiny RCDM trained a few hundred steps must produce samples that carry their representation."""

from __future__ import annotations

import torch

from rcdm.data import list_images, load_views
from rcdm.diffusion import SamplingConfig, sample_many
from rcdm.loading import encoder_for, load_model
from rcdm.train import TrainConfig, train


def test_samples_are_retrieved_by_their_own_representation(few_images, tmp_path):
    cfg = TrainConfig(
        data=str(few_images),
        encoder="pixels:4",  # weight-free 48-d representation: the image average-pooled to 4x4
        preset="tiny",
        image_size=16,
        steps=500,
        batch_size=16,
        lr=3e-3,
        ema_decay=0.98,
        save_every=500,
        num_workers=0,
        min_scale=1.0,
    )
    train(cfg, tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run")
    enc = encoder_for(model)
    files = list_images(few_images)
    _, views = load_views(files, 16, enc.preprocessing.input_size)
    reps = enc.encode(views)
    n = 4
    source = torch.arange(len(files)).repeat_interleave(n)
    rates = {}
    for sampler, steps in (("ddpm", 50), ("ddim", 25), ("dpm++", 20)):
        samples = sample_many(model, reps, n, SamplingConfig(sampler=sampler, steps=steps, seed=0))
        nearest = torch.cdist(enc.encode(samples.flatten(0, 1)), reps).argmin(1)
        rates[sampler] = float((nearest == source).float().mean())
    chance = 1 / len(files)
    print(f"rank-1 retrieval of samples among {len(files)} images (chance {chance:.3f}): {rates}")
    assert rates["ddpm"] >= 5 * chance
    assert min(rates.values()) >= 3 * chance
