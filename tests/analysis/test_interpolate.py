"""Interpolation: lerp/slerp, and endpoints equal to sampling the endpoints."""

from __future__ import annotations

import pytest
import torch

import rcdm
from rcdm.analysis import interpolate, slerp
from rcdm.analysis.interpolate import lerp
from rcdm.data import load_views
from rcdm.diffusion import start_noise
from rcdm.errors import RCDMError


def test_lerp_and_slerp_endpoints_and_norms():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    b = b / b.norm() * a.norm()
    t = torch.linspace(0, 1, 9)
    s = slerp(a, b, t)
    assert torch.allclose(s[0], a, atol=1e-5) and torch.allclose(s[-1], b, atol=1e-5)
    assert torch.allclose(s.norm(dim=-1), a.norm().expand(9), rtol=1e-5)
    assert lerp(a, b, t)[4].norm() < a.norm() * 0.99  # the chord dips inside the sphere; slerp does not
    c = 3 * b
    assert torch.allclose(slerp(a, c, t).norm(dim=-1), torch.lerp(a.norm(), c.norm(), t), rtol=1e-5)


def test_interpolation_endpoints_equal_sampling_the_endpoints(tiny, two_images):
    model, enc = tiny
    ddim = rcdm.SamplingConfig(sampler="ddim", steps=3)
    res = interpolate(model, enc, two_images, num_steps=3, num_samples=2, sampling=ddim)
    assert res.samples.shape == (2, 3, 2, 3, 32, 32)
    reps = enc.encode(load_views(two_images, 32, 32)[1])
    noise = start_noise(model.config.sample_size, 2, 0)
    for k, rep in ((0, reps[0]), (-1, reps[1])):
        direct = rcdm.sample(model, rep[None].repeat(2, 1), ddim, noise=noise)
        for m in range(2):  # linear and spherical agree at the endpoints
            assert torch.allclose(res.samples[m, k], direct, atol=1e-4)
    assert not torch.allclose(res.samples[0, 0], res.samples[0, -1])
    with pytest.raises(RCDMError, match="deterministic"):
        interpolate(model, enc, two_images, sampling=rcdm.SamplingConfig(sampler="ddpm"))
