"""rcdm.losses: epsilon and v-prediction targets, Min-SNR-gamma weighting, the hybrid loss, logit-normal timesteps,
the clean image a prediction implies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcdm.diffusion import sample_generators
from rcdm.errors import RCDMError
from rcdm.losses import GaussianDiffusion, clean_image, draw_timesteps, v_to_epsilon

D = GaussianDiffusion()


class Oracle(nn.Module):
    """A 'model' that returns a fixed output, so the loss of a known prediction error can be checked."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x, t, representation, drop=None):
        return self.out


def _batch(t: list[int]):
    torch.manual_seed(0)
    x0 = torch.rand(len(t), 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    return x0, noise, torch.tensor(t)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_exact_target_has_zero_error_and_the_other_target_does_not(prediction):
    x0, noise, t = _batch([300, 500, 990])  # at small t, v ~ epsilon
    ab = D.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    exact, other = (noise, v) if prediction == "epsilon" else (v, noise)
    rep = torch.zeros(3, 4)
    kw = dict(loss="simple", t=t, noise=noise, prediction=prediction)
    assert D.losses(Oracle(exact), x0, rep, **kw).abs().max() < 1e-6
    assert D.losses(Oracle(other), x0, rep, **kw).min() > 1e-3


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_the_squared_error_by_min_snr_gamma(prediction):
    x0, noise, t = _batch([0, 200, 999])
    ab = D.alphas_cumprod[t].float()
    snr = ab / (1 - ab)
    target = (
        noise
        if prediction == "epsilon"
        else ab.sqrt().view(-1, 1, 1, 1) * noise - (1 - ab).sqrt().view(-1, 1, 1, 1) * x0
    )
    off = Oracle(target + 0.5)  # squared error 0.25 everywhere
    kw = dict(loss="simple", t=t, noise=noise, prediction=prediction)
    plain = D.losses(off, x0, torch.zeros(3, 4), **kw)
    terms: dict[str, float] = {}
    weighted = D.losses(off, x0, torch.zeros(3, 4), snr_gamma=5.0, terms=terms, **kw)
    expected = snr.clamp(max=5.0) / (snr if prediction == "epsilon" else snr + 1)
    torch.testing.assert_close(plain, torch.full((3,), 0.25), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weighted, 0.25 * expected, rtol=1e-4, atol=1e-7)
    assert weighted[0] < 0.01 * plain[0]  # t = 0: SNR ~ 1e4, weight gamma / SNR
    assert terms["mse"] == pytest.approx(0.25, rel=1e-5)  # the log keeps the unweighted error


def test_hybrid_loss_of_a_v_model_reads_its_variance_channels():
    x0, noise, t = _batch([0, 300, 700])
    ab = D.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    out_v = torch.cat([v, torch.zeros_like(v)], 1)
    out_eps = torch.cat([noise, torch.zeros_like(v)], 1)
    kw = dict(loss="hybrid", t=t, noise=noise)
    a = D.losses(Oracle(out_v), x0, torch.zeros(3, 4), prediction="v_prediction", **kw)
    b = D.losses(Oracle(out_eps), x0, torch.zeros(3, 4), prediction="epsilon", **kw)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # the same prediction in two parametrisations


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_exact_prediction_implies_the_clean_image_and_a_wrong_one_does_not(prediction):
    x0, noise, t = _batch([10, 500, 900])
    ab = D.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    exact = noise if prediction == "epsilon" else v
    predicted: dict[str, torch.Tensor] = {}
    kw = dict(loss="simple", t=t, noise=noise, prediction=prediction, predicted=predicted)
    D.losses(Oracle(exact), x0, torch.zeros(3, 4), **kw)
    torch.testing.assert_close(predicted["x0"], x0, rtol=1e-3, atol=1e-3)
    D.losses(Oracle(exact + 0.3), x0, torch.zeros(3, 4), **kw)  # off by 0.3: the implied image moves
    assert (predicted["x0"] - x0).abs().mean() > 0.05
    # clipped to [-1, 1] as sampling clips it, and differentiable
    out = (exact * 5).requires_grad_(True)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    implied = clean_image(out, xt, ab, prediction)
    assert implied.abs().max() <= 1.0
    implied.sum().backward()
    assert out.grad is not None and out.grad.abs().sum() > 0


def test_v_to_epsilon_inverts_the_v_of_a_known_epsilon():
    x0, noise, t = _batch([1, 400, 999])
    ab = D.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    torch.testing.assert_close(v_to_epsilon(v, xt, ab), noise, rtol=1e-4, atol=1e-4)
    extra = torch.randn(3, 3, 8, 8)
    both = v_to_epsilon(torch.cat([v, extra], 1), xt, ab)
    assert torch.equal(both[:, 3:], extra)


def test_logit_normal_timesteps_favour_the_middle_and_replay():
    gens = lambda: sample_generators(7, 0, 4000)  # noqa: E731
    t = draw_timesteps(gens(), 1000, "logit-normal")
    assert torch.equal(t, draw_timesteps(gens(), 1000, "logit-normal"))
    assert t.min() >= 0 and t.max() <= 999
    middle = ((t >= 250) & (t < 750)).float().mean()
    assert middle > 0.65  # uniform: 0.5; logit-normal(0, 1): 0.74
    u = draw_timesteps(gens(), 1000, "uniform")
    assert abs(float(((u >= 250) & (u < 750)).float().mean()) - 0.5) < 0.03
    first = torch.cat([torch.randint(0, 1000, (1,), generator=g) for g in gens()])
    assert torch.equal(u, first)  # uniform draws what runs drew before the option existed
    with pytest.raises(RCDMError, match="unknown timestep sampling 'beta'"):
        draw_timesteps(gens(), 1000, "beta")  # type: ignore[arg-type]
