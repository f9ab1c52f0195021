"""Noise schedule, training losses and samplers.

Samplers are diffusers schedulers behind one signature (k-diffusion style): `sample(model, representation, ...)`
returns images in [0, 1]. The learned-variance training term is written here because diffusers has schedulers
but no training losses for learned variance (Nichol & Dhariwal 2021, Eq. 16).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import nn
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
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        terms: dict[str, float] | None = None,  # filled with the batch means of 'mse' (and 'vb'), for logging
    ) -> torch.Tensor:
        """Per-sample loss (B,): epsilon MSE, plus the VLB term when `loss == 'hybrid'` (published).

        x0: (B, 3, H, W) in [-1, 1]; representation: (B, dim); drop: (B,) bool, use the null representation.
        Timesteps are uniform; `t` (B,) and `noise` (like x0), when not given, come from `generator` (CPU), so
        a run replays exactly.
        """
        b = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (b,), generator=generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator)
        t, noise = t.to(x0.device), noise.to(x0.device, x0.dtype)
        xt = self.q_sample(x0, t, noise).to(x0.dtype)
        out = model(xt, t, representation, drop=drop).float()
        mse = ((noise.float() - out[:, :3]) ** 2).mean(dim=(1, 2, 3))
        if terms is not None:
            terms["mse"] = float(mse.detach().mean())
        if loss == "simple":
            return mse
        if out.shape[1] != 6:
            raise RCDMError("loss 'hybrid' needs a model with learned variance (6 output channels)")
        vb = self.vb_term(out, x0.float(), xt.float(), t) * self.num_timesteps / 1000.0
        if terms is not None:
            terms["vb"] = float(vb.detach().mean())
        return mse + vb


# --- sampling -----------------------------------------------------------------------------------------

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
Compile = Literal["auto", "off", "graphs", "default", "reduce-overhead"]
COMPILE_MODES: tuple[str, ...] = ("auto", "off", "graphs", "default", "reduce-overhead")
# What compile="auto" means on a CUDA device. UNMEASURED choice (no GPU was lent when this was written):
# "graphs" replays one captured CUDA graph of the bf16 UNet per step, which removes the launch gaps that make
# eager bf16 slow at batch 8, and costs a few forward passes to capture instead of torch.compile's minutes.
# benchmarks/speed.py times every mode side by side; set this from its table (docs/speed.md).
CUDA_DEFAULT_COMPILE = "graphs"


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matrix maths natively (x86 AMX-BF16 or AVX512-BF16, read from cpuinfo).

    Where it does, bf16 autocast trains about 1.7x and runs the forward about 2x faster than fp32
    (docs/speed.md); elsewhere bf16 is emulated and slower, so 'auto' stays fp32. RCDM_CPU_BF16=0|1 overrides.
    """
    forced = os.environ.get("RCDM_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: Precision, device: torch.device | str) -> torch.dtype:
    """'auto' -> bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere; 'fp32' forces fp32.

    Returns the autocast dtype (float32: no autocast).
    """
    if precision not in PRECISIONS:
        raise RCDMError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        kind = torch.device(device).type
        native = kind == "cuda" or (kind == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def training_precision(precision: str) -> Precision:
    """A training precision ('auto' | 'bf16' | 'fp32', or 'no' as in accelerate and older run.json) -> Precision.

    Training runs its own autocast (`autocast_for`) instead of accelerate's mixed_precision: accelerate keeps one
    process-wide precision, so a second `train` call in one process with another precision would fail.
    """
    return "fp32" if precision == "no" else precision  # type: ignore[return-value]


def resolve_compile(compile: Compile, device: torch.device) -> str:
    """'auto' -> CUDA_DEFAULT_COMPILE on CUDA, 'off' elsewhere; CUDA-graph modes refuse other devices."""
    if compile not in COMPILE_MODES:
        raise RCDMError(f"unknown compile mode {compile!r}: choose one of {', '.join(COMPILE_MODES)}")
    if compile == "auto":
        return CUDA_DEFAULT_COMPILE if device.type == "cuda" else "off"
    if compile in ("graphs", "reduce-overhead") and device.type != "cuda":
        raise RCDMError(
            f"compile mode {compile!r} replays CUDA graphs but the model is on {device}: "
            "use 'default' (torch.compile) or 'off' there"
        )
    return compile


def _autocast(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> contextlib.AbstractContextManager:
    """bf16 autocast (weight-cast cache off, so that CUDA-graph capture is safe); float32: no autocast."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def autocast_for(device: torch.device, precision: Precision = "auto") -> contextlib.AbstractContextManager:
    """The autocast rcdm's networks run under on `device` (see `resolve_precision` for 'auto')."""
    return _autocast(device, resolve_precision(precision, device))


# model's UNet -> {mode: torch.compile'd UNet}; weak keys: the cache dies with the model.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# model's UNet -> {(batch, dtype, weights fingerprint): _GraphedUNet}; at most _MAX_GRAPHS per model.
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MAX_GRAPHS = 4


def compiled_unet(unet: nn.Module, mode: str = "default") -> nn.Module:
    """torch.compile(unet, mode) once per (UNet, mode); static shapes (one compile per batch size)."""
    per_model = _COMPILED.setdefault(unet, {})
    if mode not in per_model:
        per_model[mode] = torch.compile(unet, mode=mode, dynamic=False)
    return per_model[mode]


class _GraphedUNet:
    """One CUDA graph of `unet(x, t, class_labels=cond)` at a fixed batch size, replayed per sampler step.

    Inputs are copied into static buffers, the graph is replayed, and the output is copied out (float32), so
    callers may keep the result across steps. Weights are read in place: in-place updates (optimizer, EMA,
    load_state_dict) are seen; moving the model re-captures (the cache key holds the weights' addresses).
    """

    def __init__(self, unet: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, dtype) -> None:
        self.x, self.t, self.cond = x.clone(), t.clone(), cond.clone()
        device = x.device

        def run() -> torch.Tensor:
            with _autocast(device, dtype):
                return unet(self.x, self.t, class_labels=self.cond).sample

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph: cuDNN/cuBLAS choose their kernels here
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = run()

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.t.copy_(t)
        self.cond.copy_(cond)
        self.graph.replay()
        return self.out.float().clone() if self.out.dtype == torch.float32 else self.out.float()


def graphed_unet(
    unet: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, dtype
) -> _GraphedUNet:
    per_model = _GRAPHS.setdefault(unet, {})
    key = (tuple(x.shape), dtype, hash(tuple(p.data_ptr() for p in unet.parameters())))
    if key not in per_model:
        while len(per_model) >= _MAX_GRAPHS:
            per_model.pop(next(iter(per_model)))
        per_model[key] = _GraphedUNet(unet, x, t, cond, dtype)
    return per_model[key]


def clear_compile_cache() -> None:
    """Forget every compiled UNet and captured CUDA graph (frees their memory pools)."""
    _COMPILED.clear()
    _GRAPHS.clear()


def denoiser(
    model: RCDM, mode: str, dtype: torch.dtype
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """(x, t, cond) -> float32 UNet output, where cond = model.condition(...) was computed once per call.

    mode: a resolved compile mode ('off', 'graphs', 'default', 'reduce-overhead'); dtype: the autocast dtype.
    """
    device = next(model.parameters()).device
    if mode == "graphs":

        def run_graph(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            return graphed_unet(model.unet, x, t, cond, dtype)(x, t, cond)

        return run_graph
    unet = model.unet if mode == "off" else compiled_unet(model.unet, mode)

    def run(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with _autocast(device, dtype):
            out = unet(x, t, class_labels=cond).sample
        # float() copies a bf16 output; a float32 one may live in a graph's pool or be reused: copy it.
        return out.float() if out.dtype != torch.float32 else out.clone()

    return run


def sample_generators(seed: int, first_index: int, count: int) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by (seed, global sample index): batching never changes a sample."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + first_index + i) for i in range(count)]


class _StepNoise:
    """ddpm's per-step noise: sample i's from its own CPU generator (as diffusers draws it), one step ahead.

    On a CUDA model the next step's noise is drawn by a worker thread into pinned memory while the GPU runs
    the current step, and copied without blocking: the same numbers as a per-step CPU draw, no round trip.
    """

    def __init__(
        self,
        gens: list[torch.Generator],
        shape: tuple[int, ...],
        device: torch.device,
        ahead: bool | None = None,  # draw on a worker thread, one step ahead; None: on CUDA only
    ) -> None:
        self.gens, self.shape, self.device = gens, shape, device
        self.pin = device.type == "cuda"
        self.pool = ThreadPoolExecutor(1) if (self.pin if ahead is None else ahead) else None
        self.next = self.pool.submit(self._draw) if self.pool is not None else None

    def _draw(self) -> torch.Tensor:
        buf = torch.empty((len(self.gens), *self.shape), pin_memory=self.pin)
        for i, g in enumerate(self.gens):
            torch.randn((1, *self.shape), generator=g, out=buf[i : i + 1])
        return buf

    def take(self, prefetch: bool) -> torch.Tensor:
        """This step's noise on the model's device; draws the next step's ahead when `prefetch`."""
        if self.pool is None:
            return self._draw()
        noise = self.next.result().to(self.device, non_blocking=True)
        self.next = self.pool.submit(self._draw) if prefetch else None
        return noise

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def ddpm_step(
    sched: DDPMScheduler, out: torch.Tensor, t: int, prev_t: int, x: torch.Tensor, noise: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' DDPMScheduler.step (epsilon, x0 clipped, fixed_small or learned_range) with the noise given.

    Written out so the noise can be drawn ahead (`_StepNoise`); its arithmetic mirrors diffusers' op for op
    (tests/test_fast_path.py checks equality). out: (B, 3 or 6, H, W); returns (x_{prev_t}, predicted x0).
    Published posterior: Ho et al. 2020 Eq. 6-7; learned range: Nichol & Dhariwal 2021 Eq. 15.
    """
    c = x.shape[1]
    learned = sched.config.variance_type == "learned_range"
    eps, v = (out[:, :c], out[:, c:]) if learned else (out[:, :c], None)
    alpha_prod_t = sched.alphas_cumprod[t]
    alpha_prod_t_prev = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.one
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t
    x0 = (x - beta_prod_t ** (0.5) * eps) / alpha_prod_t ** (0.5)
    x0 = x0.clamp(-sched.config.clip_sample_range, sched.config.clip_sample_range)
    x0_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
    xt_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
    prev = x0_coeff * x0 + xt_coeff * x
    if t > 0:
        variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
        if learned:
            frac = (v + 1) / 2
            log_var = frac * torch.log(current_beta_t) + (1 - frac) * torch.log(variance)
            prev = prev + torch.exp(0.5 * log_var) * noise
        else:
            prev = prev + (variance**0.5) * noise
    return prev, x0


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
    compile: Compile = "auto",
    precision: Precision = "auto",
    callback: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw one image per row of `representation`.

    representation: (B, dim) float, on any device (moved to the model's). Returns (B, 3, H, W) in [0, 1], float32 CPU.
    guidance: classifier-free guidance weight w (1 = plain conditional; needs a model with a null
    representation when != 1): eps = eps_null + w (eps_cond - eps_null).
    Sample i uses a generator seeded by (seed, first_index + i); `noise` (B, 3, H, W) overrides the start.
    compile: 'auto' (CUDA: CUDA_DEFAULT_COMPILE; CPU: 'off'), 'off' (eager), 'graphs' (a captured CUDA graph
    of the UNet, replayed per step), 'default' / 'reduce-overhead' (torch.compile of the UNet; the second
    with CUDA graphs). precision: 'auto' (bf16 autocast on CUDA and bf16-native CPUs), 'bf16' or 'fp32'.
    Every mode computes the same function: results differ by floating-point rounding only.
    callback gets {'i', 't', 'x', 'pred'} after each step.
    """
    if sampler not in SAMPLERS:
        raise RCDMError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    steps = DEFAULT_STEPS[sampler] if steps is None else steps  # 0 is refused, not replaced
    if not 1 <= steps <= 1000:
        raise RCDMError(f"steps={steps} is out of range: use 1..1000")
    if guidance != 1.0 and model.null_rep is None:
        raise RCDMError(f"guidance={guidance} needs a model trained with --cond-drop > 0; use --guidance 1")
    device = next(model.parameters()).device
    mode = resolve_compile(compile, device)
    dtype = resolve_precision(precision, device)
    cfg = model.config
    b, size = representation.shape[0], cfg.sample_size
    rep = representation.to(device=device, dtype=torch.float32)
    gens = sample_generators(seed, first_index, b)
    if noise is None:
        noise = torch.cat([torch.randn((1, 3, size, size), generator=g) for g in gens])
    x = noise.to(device=device, dtype=torch.float32)
    sched = make_scheduler(sampler, model.learned_variance)
    # Timesteps stay on the CPU: reading one (int(t), t > 0, the scheduler's index lookup) never waits on the GPU.
    sched.set_timesteps(steps)
    ts = [int(t) for t in sched.timesteps]
    step_kwargs = {"use_clipped_model_output": True, "eta": 0.0} if sampler == "ddim" else {}
    x = x * sched.init_noise_sigma
    was_training = model.training
    model.eval()
    # ddpm adds noise at every step with t > 0 (timesteps descend, so only the last one can be 0).
    step_noise = _StepNoise(gens, (3, size, size), device) if sampler == "ddpm" and ts[0] > 0 else None
    try:
        # The representation is projected once per call, not once per step (RCDM.condition).
        with _autocast(device, dtype):
            if guidance != 1.0:
                drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(
                    device
                )
                cond = model.condition(torch.cat([rep, rep]), 2 * b, drop)
            else:
                cond = model.condition(rep, b)
        cond = cond.float()
        run = denoiser(model, mode, dtype)
        for i, t in enumerate(tqdm(ts, disable=not progress, desc=f"{sampler} sampling")):
            tt = torch.full((cond.shape[0],), t, device=device, dtype=torch.long)
            xin = x if sampler == "ddpm" else sched.scale_model_input(x, sched.timesteps[i])
            out = run(torch.cat([xin, xin]) if guidance != 1.0 else xin, tt, cond)
            if guidance != 1.0:
                cond_out, uncond = out.chunk(2)
                out = cond_out.clone()
                out[:, :3] = uncond[:, :3] + guidance * (cond_out[:, :3] - uncond[:, :3])
            if sampler == "ddpm":
                prev_t = ts[i + 1] if i + 1 < len(ts) else -1
                eps_noise = step_noise.take(prefetch=prev_t > 0) if t > 0 and step_noise is not None else None
                if not model.learned_variance:
                    out = out[:, :3]
                x, pred = ddpm_step(sched, out, t, prev_t, x, eps_noise)
            else:
                res = sched.step(out[:, :3], sched.timesteps[i], x, **step_kwargs)
                x, pred = res.prev_sample, getattr(res, "pred_original_sample", None)
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "pred": pred})
    finally:
        if step_noise is not None:
            step_noise.close()
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
