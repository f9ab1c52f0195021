"""Training losses: the forward process, the published hybrid loss (epsilon MSE plus the learned-variance
bound term) and its recipe knobs (v-prediction, Min-SNR-gamma weighting, timestep distributions).

The learned-variance term is written here because diffusers has schedulers but no training losses for learned
variance (Nichol & Dhariwal 2021, Eq. 16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from diffusers import DDPMScheduler

from .errors import RCDMError
from .model import RCDM

LossType = Literal["simple", "hybrid"]
# Per-image weights of the mean-squared term: none (published), or Min-SNR-gamma (Hang et al. 2023, Eq. 9-11).
LossWeighting = Literal["none", "min-snr"]
LOSS_WEIGHTINGS: tuple[str, ...] = ("none", "min-snr")
# How training timesteps are drawn: uniform (published), or logit-normal over t / T (Esser et al. 2024, Eq. 19:
# m = 0, s = 1), which spends more of the training on the middle of the schedule and less on its two ends.
TimestepSampling = Literal["uniform", "logit-normal"]
TIMESTEP_SAMPLINGS: tuple[str, ...] = ("uniform", "logit-normal")

# guided-diffusion's linear schedule for T = 1000 (Ho et al. 2020).
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


def training_schedule() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


# --- losses -------------------------------------------------------------------------------------------


def _extract(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return a.to(t.device)[t].float().view(-1, 1, 1, 1)


def draw_timesteps(
    gens: Sequence[torch.Generator], num_timesteps: int, sampling: TimestepSampling = "uniform"
) -> torch.Tensor:
    """One training timestep in [0, num_timesteps) per generator, (B,) long: each image's from its own stream."""
    if sampling == "uniform":
        return torch.cat([torch.randint(0, num_timesteps, (1,), generator=g) for g in gens])
    if sampling == "logit-normal":
        u = torch.sigmoid(torch.cat([torch.randn(1, generator=g) for g in gens]))
        return (u * num_timesteps).long().clamp(0, num_timesteps - 1)
    raise RCDMError(f"unknown timestep sampling {sampling!r}: choose one of {', '.join(TIMESTEP_SAMPLINGS)}")


def v_to_epsilon(out: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """A v-prediction output -> the same output with epsilon in its first 3 channels (Salimans & Ho 2022, Eq. 2).

    out: (B, 3 or 6, H, W); x: (B, 3, H, W) the noisy input x_t; alpha_bar: abar_t, a scalar or (B, 1, 1, 1).
    eps = sqrt(abar) v + sqrt(1 - abar) x_t. Extra (variance) channels pass through unchanged.
    """
    eps = alpha_bar**0.5 * out[:, :3] + (1 - alpha_bar) ** 0.5 * x
    return torch.cat([eps.to(out.dtype), out[:, 3:]], dim=1) if out.shape[1] > 3 else eps.to(out.dtype)


def clean_image(out: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, prediction: str) -> torch.Tensor:
    """The clean image x0 that a prediction (epsilon or v, 3 channels) implies at the noisy input x = x_t, clipped to
    [-1, 1]: (x_t - sqrt(1 - abar) eps) / sqrt(abar), or sqrt(abar) x_t - sqrt(1 - abar) v (Salimans & Ho 2022)."""
    if prediction == "v_prediction":
        x0 = alpha_bar**0.5 * x - (1 - alpha_bar) ** 0.5 * out
    else:
        x0 = (x - (1 - alpha_bar) ** 0.5 * out) / alpha_bar**0.5
    return x0.clamp(-1, 1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp logvar1) || N(mean2, exp logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> torch.Tensor:
    """Log-likelihood of 8-bit images x in [-1, 1] under a discretised Gaussian (Ho et al. 2020, Eq. 13)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class GaussianDiffusion:
    """The forward process q(x_t | x_0) and the per-sample training losses."""

    def __init__(self) -> None:
        sched = training_schedule()
        self.num_timesteps = sched.config.num_train_timesteps
        betas = sched.betas.double()
        ab = torch.cumprod(1 - betas, 0)
        ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
        self.betas = betas
        self.alphas_cumprod = ab
        self.sqrt_ab = ab.sqrt()
        self.sqrt_1m_ab = (1 - ab).sqrt()
        post_var = betas * (1 - ab_prev) / (1 - ab)
        self.post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        self.post_c0 = betas * ab_prev.sqrt() / (1 - ab)
        self.post_ct = (1 - ab_prev) * (1 - betas).sqrt() / (1 - ab)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return _extract(self.sqrt_ab, t) * x0 + _extract(self.sqrt_1m_ab, t) * noise

    def vb_term(self, out: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Variational bound term in bits/dim for the learned variance, mean frozen (Nichol & Dhariwal Eq. 16)."""
        eps, v = out[:, :3].detach(), out[:, 3:]
        min_log = _extract(self.post_log_var, t)
        max_log = _extract(torch.log(self.betas), t)
        frac = (v + 1) / 2
        model_log_var = frac * max_log + (1 - frac) * min_log
        pred_x0 = (xt - _extract(self.sqrt_1m_ab, t) * eps) / _extract(self.sqrt_ab, t)
        model_mean = _extract(self.post_c0, t) * pred_x0 + _extract(self.post_ct, t) * xt
        true_mean = _extract(self.post_c0, t) * x0 + _extract(self.post_ct, t) * xt
        kl = normal_kl(true_mean, min_log, model_mean, model_log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
        nll = nll.mean(dim=(1, 2, 3)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def losses(
        self,
        model: RCDM,
        x0: torch.Tensor,
        representation: torch.Tensor,
        loss: LossType = "hybrid",
        generator: torch.Generator | None = None,
        drop: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        terms: dict[str, float] | None = None,  # filled with the batch means of 'mse' (and 'vb'), for logging
        prediction: str = "epsilon",  # the model's prediction_type: 'epsilon' or 'v_prediction'
        snr_gamma: float | None = None,  # Min-SNR-gamma weighting of the squared error; None: unweighted
        predicted: dict[str, torch.Tensor]
        | None = None,  # filled with 'x0': the clean image the prediction implies
    ) -> torch.Tensor:
        """Per-sample loss (B,): the squared error of the prediction (epsilon, published, or v), plus the VLB
        term for the learned variance when `loss == 'hybrid'` (published).

        x0: (B, 3, H, W) in [-1, 1]; representation: (B, dim); drop: (B,) bool, use the null representation.
        `t` (B,) and `noise` (like x0), when not given, are uniform timesteps and Gaussian noise from
        `generator` (CPU), so a run replays exactly. With `snr_gamma` the squared error of an image at SNR(t) =
        abar / (1 - abar) is weighted by min(SNR, gamma) / SNR for epsilon and min(SNR, gamma) / (SNR + 1) for
        v (Hang et al. 2023, Eq. 11: both are min(SNR, gamma) in x0 units); terms['mse'] logs the unweighted error.
        `predicted['x0']` (B, 3, H, W): the clean image the model's prediction implies at x_t, clipped to [-1, 1] as
        sampling clips it, differentiable (`rcdm adapt --encoder-loss` encodes it).
        """
        b = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (b,), generator=generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator)
        t, noise = t.to(x0.device), noise.to(x0.device, x0.dtype)
        xt = self.q_sample(x0, t, noise).to(x0.dtype)
        out = model(xt, t, representation, drop=drop).float()
        ab = _extract(self.alphas_cumprod, t)
        if prediction == "v_prediction":
            target = ab.sqrt() * noise.float() - (1 - ab).sqrt() * x0.float()
        elif prediction == "epsilon":
            target = noise.float()
        else:
            raise RCDMError(f"unknown prediction {prediction!r}: choose epsilon or v_prediction")
        mse = ((target - out[:, :3]) ** 2).mean(dim=(1, 2, 3))
        if predicted is not None:
            predicted["x0"] = clean_image(out[:, :3], xt.float(), ab, prediction)
        if terms is not None:
            terms["mse"] = float(mse.detach().mean())
        if snr_gamma is not None:
            snr = (ab / (1 - ab)).view(-1)
            mse = mse * snr.clamp(max=snr_gamma) / (snr + 1 if prediction == "v_prediction" else snr)
        if loss == "simple":
            return mse
        if out.shape[1] != 6:
            raise RCDMError("loss 'hybrid' needs a model with learned variance (6 output channels)")
        if prediction == "v_prediction":
            out = v_to_epsilon(out, xt.float(), ab)
        vb = self.vb_term(out, x0.float(), xt.float(), t) * self.num_timesteps / 1000.0
        if terms is not None:
            terms["vb"] = float(vb.detach().mean())
        return mse + vb
