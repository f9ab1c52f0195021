"""rcdm.diffusion: samplers, presets, seeds and batching, the model's default sampling, guidance and --rep-noise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcdm.diffusion import (
    SAMPLERS,
    SAMPLING_PRESETS,
    SamplingConfig,
    make_scheduler,
    noisy_representation,
    resolve_sampling,
    reuse_samples,
    sample,
    sample_many,
    sampling_preset,
    start_noise,
)
from rcdm.errors import RCDMError
from rcdm.losses import GaussianDiffusion
from rcdm.model import RCDM


@pytest.fixture(scope="module")
def model() -> RCDM:
    torch.manual_seed(0)
    m = RCDM.from_preset("tiny", representation_dim=6, sample_size=16, null_representation=True)
    with torch.no_grad():
        m.null_rep.normal_()
    return m.eval()


def test_published_respacing():
    """The ddpm sampler's 100 steps are the published respacing: evenly spaced from 999 down to 0."""
    sched = make_scheduler("ddpm", True)
    sched.set_timesteps(100)
    ts = [int(t) for t in sched.timesteps]
    assert len(ts) == 100 and ts[0] == 999 and ts[-1] == 0 and ts[-2] == 10 and ts[1] == 989


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_shape_range_and_seeds(model, sampler):
    reps = torch.randn(2, 6)
    cfg = SamplingConfig(sampler=sampler, steps=4, seed=1)
    a = sample(model, reps, cfg)
    b = sample(model, reps, cfg)
    c = sample(model, reps, cfg.replace(seed=2))
    assert a.shape == (2, 3, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_batching_never_changes_a_sample(model, sampler):
    reps = torch.randn(2, 6)
    cfg = SamplingConfig(sampler=sampler, steps=3, seed=5, batch_size=6)
    whole = sample_many(model, reps, 3, cfg)
    split = sample_many(model, reps, 3, cfg.replace(batch_size=4))
    assert whole.shape == (2, 3, 3, 16, 16)
    assert torch.allclose(whole, split, atol=1e-3)  # float noise only; another seed differs by ~0.5


def test_ddpm_uses_the_learned_variance(model):
    sched = make_scheduler("ddpm", True)
    assert sched.config.variance_type == "learned_range" and sched.config.clip_sample
    assert make_scheduler("ddpm", False).config.variance_type == "fixed_small"


def test_guidance(model):
    reps = torch.randn(1, 6)
    cfg = SamplingConfig(sampler="ddim", steps=3, seed=0)
    plain = sample(model, reps, cfg)
    guided = sample(model, reps, cfg.replace(guidance=3.0))
    assert not torch.allclose(plain, guided)
    no_null = RCDM.from_preset("tiny", representation_dim=6, sample_size=16)
    with pytest.raises(RCDMError, match="cond-drop"):
        sample(no_null, reps, SamplingConfig(steps=2, guidance=2.0))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_guidance_interval_guides_only_its_noise_levels(model, sampler):
    """guidance_interval (low, high]: the steps whose sigma lies in it run both halves (conditional and null), the
    others the conditional half alone; an interval holding every step is plain guidance, one holding none is no
    guidance."""
    reps = torch.randn(2, 6)
    cfg = SamplingConfig(sampler=sampler, steps=15, seed=3, guidance=4.0)
    batches: list[int] = []
    hook = model.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        full = sample(model, reps, cfg)
        assert batches == [4] * 15
        batches.clear()
        every = sample(model, reps, cfg.replace(guidance_interval=(0, float("inf"))))
        assert torch.equal(every, full) and batches == [4] * 15
        batches.clear()
        window = sample(model, reps, cfg.replace(guidance_interval=[0.28, 5.42]))  # a list, as from JSON
        sched = make_scheduler(sampler, True)
        sched.set_timesteps(15)
        abar = sched.alphas_cumprod.double()
        inside = [0.28 < float(((1 - abar[t]) / abar[t]).sqrt()) <= 5.42 for t in sched.timesteps]
        assert 0 < sum(inside) < 15 and batches == [4 if g else 2 for g in inside]
        assert not torch.allclose(window, full, atol=1e-3)
        none = sample(model, reps, cfg.replace(guidance_interval=(1e6, 2e6)))
        plain = sample(model, reps, cfg.replace(guidance=1.0))
        assert torch.allclose(none, plain, atol=1e-5)
    finally:
        hook.remove()
    assert "at noise levels (0.28, 5.42]" in cfg.replace(guidance_interval=(0.28, 5.42)).describe()
    for bad in ((5, 2), (-1, 2), (1,), "ab", (float("nan"), 1)):
        with pytest.raises(RCDMError, match="not an interval of noise levels"):
            SamplingConfig(guidance_interval=bad)


def test_bad_sampler_arguments(model):
    with pytest.raises(RCDMError, match="unknown sampler"):
        sample(model, torch.randn(1, 6), SamplingConfig(sampler="euler"))
    for steps in (0, -1):  # 0 is refused, not read as "the default"
        with pytest.raises(RCDMError, match="out of range"):
            sample(model, torch.randn(1, 6), SamplingConfig(steps=steps))


def test_losses_hybrid_and_simple(model):
    d = GaussianDiffusion()
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    reps = torch.randn(4, 6)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    hybrid = d.losses(model, x0, reps, "hybrid", g())
    simple = d.losses(model, x0, reps, "simple", g())
    assert hybrid.shape == (4,) and torch.isfinite(hybrid).all()
    assert (hybrid >= simple - 1e-6).all()  # the VLB term is a KL / NLL: never negative
    # The VLB term trains only the variance channels: the epsilon channels get no gradient from it.
    out = torch.zeros(4, 6, 16, 16, requires_grad=True)
    t = torch.tensor([0, 5, 500, 999])
    xt = d.q_sample(x0, t, torch.randn_like(x0))
    d.vb_term(out, x0, xt, t).sum().backward()
    assert out.grad[:, :3].abs().sum() == 0 and out.grad[:, 3:].abs().sum() > 0


def test_vb_term_is_minimised_by_the_true_posterior_variance():
    d = GaussianDiffusion()
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    t = torch.tensor([5, 20])  # early steps, where beta_t and the posterior variance differ most
    noise = torch.randn_like(x0)
    xt = d.q_sample(x0, t, noise)
    # Perfect epsilon, variance fraction -1 -> posterior variance: KL = 0.
    out = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    assert d.vb_term(out, x0, xt, t).abs().max() < 1e-4
    worse = torch.cat([noise, torch.ones_like(noise)], dim=1)
    assert (d.vb_term(worse, x0, xt, t) > 1e-4).all()


def test_sampling_presets_and_overrides():
    assert SAMPLING_PRESETS["fast"] == SamplingConfig(sampler="dpm++", steps=20)
    assert SAMPLING_PRESETS["paired"].sampler == "ddim" and SAMPLING_PRESETS["paired"].steps == 50
    assert SAMPLING_PRESETS["published"].sampler == "ddpm" and SAMPLING_PRESETS["published"].steps == 100
    cfg = SAMPLING_PRESETS["paired"].replace(steps=3, seed=None)  # None keeps the preset's value
    assert (cfg.sampler, cfg.steps, cfg.seed) == ("ddim", 3, 0)
    with pytest.raises(RCDMError, match=r"unknown sampling preset 'slow'.*fast"):
        sampling_preset("slow")


def test_settings_object_and_keywords_draw_the_same_images(model):
    """`sample` and `sample_many` still take single fields as keywords (scripts written before SamplingConfig)."""
    reps = torch.randn(2, 6)
    cfg = SamplingConfig(sampler="ddim", steps=3, seed=4)
    assert torch.equal(sample(model, reps, cfg), sample(model, reps, sampler="ddim", steps=3, seed=4))
    assert torch.equal(
        sample_many(model, reps, 2, cfg), sample_many(model, reps, 2, sampler="ddim", steps=3, seed=4)
    )


def test_shared_noise_pairs_columns_across_rows(model):
    rep = torch.randn(1, 6)
    cfg = SamplingConfig(sampler="ddim", steps=3, batch_size=4, precision="fp32")
    shared = sample_many(model, rep.repeat(2, 1), 2, cfg, shared_noise=True)
    own = sample_many(model, rep.repeat(2, 1), 2, cfg)
    # Same representation and the same column noise: the same images (up to kernel rounding); per-sample noise:
    # different images.
    assert (shared[0] - shared[1]).abs().max() < 1e-3
    assert (own[0] - own[1]).abs().mean() > 0.05
    noise = start_noise(16, 2, cfg.seed)
    assert torch.allclose(shared[0], sample(model, rep.repeat(2, 1), cfg, noise=noise), atol=1e-4)


@pytest.mark.parametrize("shared", [True, False])
def test_reuse_samples_draws_each_sample_once_and_gives_the_same_images(model, sampled_rows, shared):
    reps = torch.randn(3, 6)
    cfg = SamplingConfig(sampler="dpm++", steps=3, batch_size=4, precision="fp32", guidance=2.0)
    plain_all = sample_many(model, reps, 2, cfg, shared_noise=shared)
    plain_two = sample_many(model, reps[:2], 2, cfg, shared_noise=shared)
    drawn = sampled_rows
    drawn.clear()  # the plain calls above
    with reuse_samples():
        first = sample_many(model, reps[:2], 2, cfg, shared_noise=shared)
        again = sample_many(model, reps, 2, cfg, shared_noise=shared)
    assert torch.allclose(first, plain_two, atol=1e-4) and torch.allclose(again, plain_all, atol=1e-4)
    # shared noise: rows 0-1 of the second call are the first call's; per-sample noise: sample j of row m has
    # global index m * 2 + j in both calls, so the same holds
    assert sum(drawn) == 6


def test_reuse_samples_draws_again_what_differs_and_never_reuses_ddpm(model, sampled_rows):
    reps = torch.randn(2, 6)
    cfg = SamplingConfig(sampler="ddim", steps=3, precision="fp32", guidance=2.0)
    drawn = sampled_rows
    with reuse_samples():
        base = sample_many(model, reps, 1, cfg, shared_noise=True)
        for other in (cfg.replace(guidance=3.0), cfg.replace(seed=1), cfg.replace(steps=4)):
            assert not torch.allclose(sample_many(model, reps, 1, other, shared_noise=True), base)
        nudged = reps.clone()
        nudged[1, 0] += 1e-3  # one representation a little off: that row alone is drawn again
        sample_many(model, nudged, 1, cfg, shared_noise=True)
        ddpm = cfg.replace(sampler="ddpm")
        sample_many(model, reps, 1, ddpm, shared_noise=True)
        sample_many(model, reps, 1, ddpm, shared_noise=True)
    assert drawn == [2, 2, 2, 2, 1, 2, 2]
    sample_many(model, reps, 1, cfg, shared_noise=True)  # outside the block: drawn again
    assert drawn[-1] == 2


def test_open_settings_come_from_the_model_and_explicit_ones_win(guided):
    model = RCDM.from_pretrained(guided)
    assert (resolve_sampling(model).guidance, resolve_sampling(model).steps) == (3.0, 6)
    mine = resolve_sampling(model, SamplingConfig(guidance=1.0, steps=4))
    assert (mine.guidance, mine.steps) == (1.0, 4)
    other = resolve_sampling(model, SamplingConfig(sampler="ddim"))
    assert (other.guidance, other.steps) == (3.0, None)  # the model's steps were chosen for its own sampler
    plain = RCDM.from_preset("tiny", representation_dim=12, sample_size=16)
    assert resolve_sampling(plain).guidance == 1.0  # a model without a default: the library's


def test_sample_uses_the_model_default_guidance(guided):
    model = RCDM.from_pretrained(guided).eval()
    reps = torch.randn(2, 12)
    default = sample(model, reps, SamplingConfig(seed=1, precision="fp32"))
    assert torch.equal(
        default, sample(model, reps, SamplingConfig(steps=6, guidance=3.0, seed=1, precision="fp32"))
    )
    assert not torch.allclose(
        default, sample(model, reps, SamplingConfig(steps=6, guidance=1.0, seed=1, precision="fp32"))
    )


def test_noise_is_in_standard_deviations_of_the_training_representations(standardized_model):
    rep = torch.zeros(4000, 6)
    noisy = noisy_representation(standardized_model, rep, SamplingConfig(rep_noise=0.5))
    torch.testing.assert_close(noisy.std(0), 0.5 * standardized_model.rep_std, rtol=0.06, atol=0)
    assert torch.equal(noisy_representation(standardized_model, rep, SamplingConfig()), rep)
    plain = RCDM.from_preset("tiny", representation_dim=6, sample_size=16)
    x = torch.full((2000, 6), 3.0)  # RMS 3: the unit of a model without training statistics
    assert abs(float((noisy_representation(plain, x, SamplingConfig(rep_noise=1.0)) - x).std()) - 3.0) < 0.15


def test_samples_change_with_noise_replay_with_the_seed_and_ignore_batching(standardized_model):
    reps = torch.randn(3, 6)
    clean = sample(standardized_model, reps, SamplingConfig(steps=3, seed=2))
    a = sample(standardized_model, reps, SamplingConfig(steps=3, seed=2, rep_noise=1.0))
    assert not torch.allclose(a, clean) and torch.equal(
        a, sample(standardized_model, reps, SamplingConfig(steps=3, seed=2, rep_noise=1.0))
    )
    cfg = SamplingConfig(steps=3, seed=2, rep_noise=1.0, batch_size=6, precision="fp32")
    whole, split = (
        sample_many(standardized_model, reps, 2, cfg),
        sample_many(standardized_model, reps, 2, cfg.replace(batch_size=1)),
    )
    torch.testing.assert_close(whole, split, atol=1e-4, rtol=0)  # each row's noise is its own
    with pytest.raises(RCDMError, match="--rep-noise -1"):
        sample(standardized_model, reps, SamplingConfig(steps=3, rep_noise=-1.0))


D = GaussianDiffusion()


class _AsV(nn.Module):
    """An epsilon UNet re-expressed as a v UNet: v = (eps - sqrt(1 - abar) x) / sqrt(abar)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.inner = unet
        self.ab = D.alphas_cumprod.float()

    def forward(self, x, t, class_labels=None):
        out = self.inner(x, t, class_labels=class_labels).sample
        ab = self.ab[t.cpu()].view(-1, 1, 1, 1)
        v = (out[:, :3] - (1 - ab).sqrt() * x) / ab.sqrt()

        class Out:
            sample = torch.cat([v, out[:, 3:]], 1)

        return Out


@pytest.mark.parametrize("sampler", ["dpm++", "ddim", "ddpm"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_a_v_model_samples_what_the_same_function_as_epsilon_samples(sampler, guidance):
    torch.manual_seed(0)
    kw = dict(representation_dim=4, sample_size=16, null_representation=True)
    eps_model = RCDM.from_preset("tiny", **kw).eval()
    v_model = RCDM.from_preset("tiny", prediction_type="v_prediction", **kw).eval()
    assert v_model.prediction_type == "v_prediction"
    v_model.load_state_dict(eps_model.state_dict())
    v_model.unet = _AsV(v_model.unet)
    reps = torch.randn(2, 4)
    cfg = SamplingConfig(sampler=sampler, steps=5, guidance=guidance, seed=3, precision="fp32")
    a, b = sample(eps_model, reps, cfg), sample(v_model, reps, cfg)
    torch.testing.assert_close(a, b, rtol=0, atol=2e-4)
