"""Adversarial: PGD inside the eps ball, and the analysis on the tiny model."""

from __future__ import annotations

from pathlib import Path

import torch

import rcdm
from rcdm.analysis import adversarial, pgd
from rcdm.data import load_views


def test_pgd_moves_the_representation_within_the_eps_ball(resnet20_spec: str, few_images: Path):
    enc = rcdm.create_encoder(resnet20_spec)
    x = load_views(sorted(few_images.glob("*.jpg"))[:2], 32, 32)[1]
    eps = 4 / 255
    random_only = pgd(enc, x, eps=eps, steps=1, step_size=0.0)  # a random start, no gradient steps
    adv = pgd(enc, x, eps=eps, steps=5)
    assert float((adv - x).abs().max()) <= eps + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        clean = enc(x)
        shift = (enc(adv) - clean).norm(dim=-1)
        shift_random = (enc(random_only) - clean).norm(dim=-1)
    assert (shift > 2 * shift_random).all(), (shift, shift_random)
    target = x.roll(1, 0)
    tgt = pgd(enc, x, attack="targeted", targets=target, eps=8 / 255, steps=5)
    with torch.no_grad():
        assert ((enc(tgt) - enc(target)).norm(dim=-1) < (clean - enc(target)).norm(dim=-1)).all()


def test_adversarial_on_tiny_model(tiny, two_images, fast):
    model, enc = tiny
    res = adversarial(model, enc, two_images, attack="label", pgd_steps=3, **fast)
    assert res.adv_samples.shape == (2, 2, 3, 32, 32)
    assert (res.linf <= 4 / 255 + 1e-6).all() and (res.shift > 0).all()
    assert res.clean_labels is not None and 0.0 <= res.label_flip_rate <= 1.0
    assert (res.cosine < 1.0).all()


def test_the_report_drops_label_columns_for_an_encoder_without_a_classifier(tiny, two_images, fast, tmp_path):
    import dataclasses

    from rcdm.analysis.report import adversarial_section

    model, enc = tiny
    res = adversarial(model, enc, two_images, pgd_steps=1, **fast)
    with_labels = adversarial_section([res], tmp_path).body
    assert "label flip rate" in with_labels and "class (clean -&gt; attacked)" in with_labels
    unlabelled = dataclasses.replace(res, clean_labels=None, adv_labels=None)  # e.g. a pixels: or SSL encoder
    body = adversarial_section([unlabelled], tmp_path).body
    assert "label flip rate" not in body and "class (clean" not in body and "n/a -&gt; n/a" not in body
    assert "relative rep. shift" in body  # the rest of the table stays
