"""Noise schedule, training losses and samplers.

Samplers are diffusers schedulers behind one signature (k-diffusion style): `sample(model, representation, ...)`
returns images in [0, 1]. The learned-variance training term is written here because diffusers has schedulers
but no training losses for learned variance (Nichol & Dhariwal 2021, Eq. 16).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from .errors import RCDMError
from .model import RCDM

Sampler = Literal["dpm++", "ddim", "ddpm"]
SAMPLERS: tuple[str, ...] = ("dpm++", "ddim", "ddpm")
DEFAULT_STEPS: dict[str, int] = {"dpm++": 20, "ddim": 50, "ddpm": 100}
LossType = Literal["simple", "hybrid"]

# guided-diffusion's linear schedule for T = 1000 (Ho et al. 2020).
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


def training_schedule() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def make_scheduler(sampler: Sampler, learned_variance: bool):
    """A diffusers scheduler for `sampler`, matched to the published respacing (evenly spaced incl. 0, 999)."""
    if sampler == "ddpm":
        return DDPMScheduler(
            **SCHEDULE,
            variance_type="learned_range" if learned_variance else "fixed_small",
            clip_sample=True,
            timestep_spacing="linspace",
        )
    if sampler == "ddim":
        return DDIMScheduler(**SCHEDULE, clip_sample=True, timestep_spacing="linspace", set_alpha_to_one=True)
    if sampler == "dpm++":
        return DPMSolverMultistepScheduler(
            **SCHEDULE,
            algorithm_type="dpmsolver++",
            solver_order=2,
            timestep_spacing="linspace",
            # With ratio -> max 1.0, dynamic thresholding is plain x0 clipping to [-1, 1], as in ddpm/ddim.
            thresholding=True,
            sample_max_value=1.0,
        )
    raise RCDMError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")


# --- losses -------------------------------------------------------------------------------------------


def _extract(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return a.to(t.device)[t].float().view(-1, 1, 1, 1)


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
    ) -> torch.Tensor:
        """Per-sample loss (B,): epsilon MSE, plus the VLB term when `loss == 'hybrid'` (published).

        x0: (B, 3, H, W) in [-1, 1]; representation: (B, dim); drop: (B,) bool, use the null representation.
        Timesteps are uniform; noise and timesteps come from `generator` (CPU) so a run replays exactly.
        """
        b = x0.shape[0]
        t = torch.randint(0, self.num_timesteps, (b,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        xt = self.q_sample(x0, t, noise).to(x0.dtype)
        out = model(xt, t, representation, drop=drop).float()
        mse = ((noise.float() - out[:, :3]) ** 2).mean(dim=(1, 2, 3))
        if loss == "simple":
            return mse
        if out.shape[1] != 6:
            raise RCDMError("loss 'hybrid' needs a model with learned variance (6 output channels)")
        return mse + self.vb_term(out, x0.float(), xt.float(), t) * self.num_timesteps / 1000.0


# --- sampling -----------------------------------------------------------------------------------------


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sample_generators(seed: int, first_index: int, count: int) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by (seed, global sample index): batching never changes a sample."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + first_index + i) for i in range(count)]


@torch.no_grad()
def sample(
    model: RCDM,
    representation: torch.Tensor,
    *,
    steps: int | None = None,
    sampler: Sampler = "dpm++",
    seed: int = 0,
    first_index: int = 0,
    guidance: float = 1.0,
    noise: torch.Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw one image per row of `representation`.

    representation: (B, dim) float, on any device (moved to the model's). Returns (B, 3, H, W) in [0, 1], float32 CPU.
    guidance: classifier-free guidance weight w (1 = plain conditional; needs a model with a null
    representation when != 1): eps = eps_null + w (eps_cond - eps_null).
    Sample i uses a generator seeded by (seed, first_index + i); `noise` (B, 3, H, W) overrides the start.
    callback gets {'i', 't', 'x', 'pred'} after each step.
    """
    if sampler not in SAMPLERS:
        raise RCDMError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    steps = steps or DEFAULT_STEPS[sampler]
    if not 1 <= steps <= 1000:
        raise RCDMError(f"steps={steps} is out of range: use 1..1000")
    if guidance != 1.0 and model.null_rep is None:
        raise RCDMError(f"guidance={guidance} needs a model trained with --cond-drop > 0; use --guidance 1")
    device = next(model.parameters()).device
    cfg = model.config
    b, size = representation.shape[0], cfg.sample_size
    rep = representation.to(device=device, dtype=torch.float32)
    gens = sample_generators(seed, first_index, b)
    if noise is None:
        noise = torch.cat([torch.randn((1, 3, size, size), generator=g) for g in gens])
    x = noise.to(device=device, dtype=torch.float32)
    sched = make_scheduler(sampler, model.learned_variance)
    sched.set_timesteps(steps, device=device)
    if sampler == "ddpm":
        sched.timesteps = sched.timesteps.to(device)
    step_kwargs = {"use_clipped_model_output": True, "eta": 0.0} if sampler == "ddim" else {}
    if sampler == "ddpm":
        step_kwargs["generator"] = gens
    x = x * sched.init_noise_sigma
    was_training = model.training
    model.eval()
    try:
        for i, t in enumerate(tqdm(sched.timesteps, disable=not progress, desc=f"{sampler} sampling")):
            xin = sched.scale_model_input(x, t)
            tt = torch.full((b,), int(t), device=device, dtype=torch.long)
            with _autocast(device):
                if guidance != 1.0:
                    both = model(
                        torch.cat([xin, xin]),
                        torch.cat([tt, tt]),
                        torch.cat([rep, rep]),
                        drop=torch.cat(
                            [
                                torch.zeros(b, dtype=torch.bool, device=device),
                                torch.ones(b, dtype=torch.bool, device=device),
                            ]
                        ),
                    )
                    cond, uncond = both.float().chunk(2)
                    out = cond.clone()
                    out[:, :3] = uncond[:, :3] + guidance * (cond[:, :3] - uncond[:, :3])
                else:
                    out = model(xin, tt, rep).float()
            if sampler != "ddpm" or not model.learned_variance:
                out = out[:, :3]
            res = sched.step(out, t, x, **step_kwargs)
            x = res.prev_sample
            if callback is not None:
                callback({"i": i, "t": int(t), "x": x, "pred": getattr(res, "pred_original_sample", None)})
    finally:
        model.train(was_training)
    return ((x.float().clamp(-1, 1) + 1) / 2).cpu()


def batched(total: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, batch_size):
        yield start, min(total, start + batch_size)


@torch.no_grad()
def sample_many(
    model: RCDM,
    representations: torch.Tensor,
    num_samples: int,
    *,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
    **kwargs,
) -> torch.Tensor:
    """`num_samples` images for each of M representations (M, dim) -> (M, num_samples, 3, H, W) in [0, 1].

    Sample j of representation m is global index m * num_samples + j, so results do not depend on batch_size.
    """
    m = representations.shape[0]
    flat = representations.repeat_interleave(num_samples, dim=0)
    out: list[torch.Tensor] = []
    for s, e in tqdm(list(batched(flat.shape[0], batch_size)), disable=not progress, desc="sampling"):
        out.append(sample(model, flat[s:e], seed=seed, first_index=s, **kwargs))
    imgs = torch.cat(out)
    return imgs.view(m, num_samples, *imgs.shape[1:])


def spaced_timesteps(steps: int) -> Sequence[int]:
    """The published respacing: `steps` evenly spaced timesteps from 999 down to 0 inclusive."""
    sched = make_scheduler("ddpm", True)
    sched.set_timesteps(steps)
    return [int(t) for t in sched.timesteps]
