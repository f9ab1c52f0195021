"""rcdm.metrics.probe: a linear probe reads a class that a representation holds linearly, and none where it holds none."""

from __future__ import annotations

import torch

from rcdm.metrics.probe import fit_linear_probe


def test_a_linear_probe_reads_a_linearly_held_class_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (800,), generator=g)
    centres = torch.randn(4, 8, generator=g) * 3
    x = centres[y] + torch.randn(800, 8, generator=g)
    logits = fit_linear_probe(x[:600], y[:600], 4)(x[600:])
    assert logits.shape == (200, 4)
    assert (logits.argmax(1) == y[600:]).float().mean() > 0.9
    noise = torch.randn(800, 8, generator=g)
    chance = (fit_linear_probe(noise[:600], y[:600], 4)(noise[600:]).argmax(1) == y[600:]).float().mean()
    assert chance < 0.4
