"""Samplers: diffusers schedulers behind one signature (k-diffusion style), `sample(model, representation, ...)`
returning images in [0, 1], the sampling settings (`SamplingConfig`, presets, a model's recorded default) and
the seeding rule. The training losses live in `rcdm.losses`.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from .checks import check_guidance, check_guidance_interval, check_rep_noise
from .data import batched
from .deadline import check_deadline
from .devices import (
    Compile,
    Precision,
    autocast,
    compiled_unet,
    graphed_unet,
    resolve_compile,
    resolve_precision,
)
from .errors import RCDMError
from .losses import SCHEDULE, v_to_epsilon
from .model import RCDM

log = logging.getLogger(__name__)

Sampler = Literal["dpm++", "ddim", "ddpm"]
SAMPLERS: tuple[str, ...] = ("dpm++", "ddim", "ddpm")
DEFAULT_STEPS: dict[str, int] = {"dpm++": 20, "ddim": 50, "ddpm": 100}


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


# --- sampling -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingConfig:
    """How samples are drawn: one value that every sampling entry point (API and CLI) takes."""

    sampler: Sampler = "dpm++"
    steps: int | None = None  # None: the sampler's default (DEFAULT_STEPS: dpm++ 20, ddim 50, ddpm 100)
    # classifier-free guidance weight, 1 = plain conditional; None: the model's default (`resolve_sampling`)
    guidance: float | None = None
    # guidance only at the steps whose noise level sigma = sqrt((1 - alpha_bar_t) / alpha_bar_t) lies in (low, high]
    # (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval"); the other steps run the conditional
    # prediction alone, one network batch instead of two. None: at every step (the published sampling).
    guidance_interval: tuple[float, float] | None = None
    seed: int = 0  # sample i of a call uses a generator seeded by (seed, global index i)
    # Gaussian noise of this many standard deviations added to the standardised representation before
    # conditioning (the model's training statistics; the vector's RMS for models without them); 0: none.
    rep_noise: float = 0.0
    batch_size: int = 64  # images per network call; never changes a sample
    compile: Compile = "auto"  # auto: CUDA_DEFAULT_COMPILE on CUDA, off elsewhere (see `sample`)
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA and bf16-native CPUs, fp32 elsewhere

    def __post_init__(self) -> None:
        if self.guidance_interval is not None:  # a list (JSON, the CLI) becomes the tuple it stands for
            interval = check_guidance_interval(self.guidance_interval, "guidance_interval")
            object.__setattr__(self, "guidance_interval", interval)

    def replace(self, **changes: object) -> SamplingConfig:
        """A copy with `changes` applied; None values keep the current setting (CLI overrides)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def record(self) -> dict:
        """The settings as a JSON-ready dict (written beside results)."""
        return asdict(self)

    def describe(self) -> str:
        """'dpm++ 20 steps, guidance 5, seed 0' (the sampler's default steps when unset): for figure captions."""
        steps = self.steps or DEFAULT_STEPS.get(self.sampler)
        guidance = "guidance: the model's default" if self.guidance is None else f"guidance {self.guidance:g}"
        if self.guidance_interval is not None and self.guidance != 1:
            low, high = self.guidance_interval
            guidance += f" at noise levels ({low:g}, {high:g}]"
        noise = f", rep-noise {self.rep_noise:g}" if self.rep_noise else ""
        return f"{self.sampler} {steps} steps, {guidance}, seed {self.seed}{noise}"


# Named settings: fast (the default sampler), paired (deterministic, for shared-noise comparisons: two rows that
# start from the same noise differ only through their representations), published (the paper's 100-step ddpm).
SAMPLING_PRESETS: dict[str, SamplingConfig] = {
    "fast": SamplingConfig(sampler="dpm++", steps=20),
    "paired": SamplingConfig(sampler="ddim", steps=50),
    "published": SamplingConfig(sampler="ddpm", steps=100),
}


_ANNOUNCED: set[tuple[int, str]] = set()


def model_default_sampling(model: RCDM) -> dict:
    """The sampling recorded in the model's config (`sampling`: sampler, steps, guidance, and how they were
    measured), or {} for a model without one."""
    return dict(getattr(model.config, "sampling", None) or {})


def resolve_sampling(model: RCDM, sampling: SamplingConfig | None = None) -> SamplingConfig:
    """`sampling` with what it leaves open taken from the model's recorded default sampling.

    guidance None: the model's default guidance, else 1. steps None with the model's default sampler: the
    model's default steps (else the sampler's own default, in `sample`). Explicit values always win. What came
    from the model is logged once per model ("guidance 5: the model's default").
    """
    cfg = sampling or SamplingConfig()
    default = model_default_sampling(model)
    changes: dict[str, object] = {}
    if cfg.guidance is None:
        changes["guidance"] = float(default.get("guidance", 1.0))
    if cfg.steps is None and default.get("steps") and default.get("sampler", cfg.sampler) == cfg.sampler:
        changes["steps"] = int(default["steps"])
    said = ", ".join(f"{k} {v:g}" for k, v in changes.items() if k in default or k == "steps")
    key = (id(model), said)
    if said and key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        log.info("%s: the model's default sampling (pass --guidance / --steps to choose others)", said)
    return replace(cfg, **changes) if changes else cfg


def sampling_preset(name: str) -> SamplingConfig:
    if name not in SAMPLING_PRESETS:
        raise RCDMError(f"unknown sampling preset {name!r}: choose one of {', '.join(SAMPLING_PRESETS)}")
    return SAMPLING_PRESETS[name]


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
        with autocast(device, dtype):
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


def guided_condition(model: RCDM, rep: torch.Tensor, guidance: float, dtype: torch.dtype) -> torch.Tensor:
    """The UNet's conditioning (float32) for representations rep (B, dim) on the model's device: (B, E), or with
    guidance != 1 (2B, E), the conditional half first and the null representation's half second."""
    b = rep.shape[0]
    with autocast(rep.device, dtype):
        if guidance != 1.0:
            drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(
                rep.device
            )
            cond = model.condition(torch.cat([rep, rep]), 2 * b, drop)
        else:
            cond = model.condition(rep, b)
    return cond.float()


@torch.no_grad()
def sample(
    model: RCDM,
    representation: torch.Tensor,
    sampling: SamplingConfig | None = None,
    *,
    first_index: int = 0,
    noise: torch.Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = False,
    scheduler=None,  # any diffusers scheduler with the training schedule, instead of `sampling.sampler`'s
    **settings,
) -> torch.Tensor:
    """Draw one image per row of `representation`.

    representation: (B, dim) float, on any device (moved to the model's). Returns (B, 3, H, W) in [0, 1], float32 CPU.
    sampling: the settings (default `SamplingConfig()`); batch_size is ignored here: the call is one batch.
    `settings` (steps=, sampler=, seed=, ...) override single fields of `sampling`: the spelling of scripts
    written before `SamplingConfig`, kept on `sample` and `sample_many` only; pass `sampling=` instead.
    guidance: classifier-free guidance weight w (1 = plain conditional; needs a model with a null
    representation when != 1): eps = eps_null + w (eps_cond - eps_null); with `guidance_interval` (low, high]
    only at the steps whose noise level sigma = sqrt((1 - alpha_bar_t) / alpha_bar_t) lies in it.
    Sample i uses a generator seeded by (seed, first_index + i); `noise` (B, 3, H, W) overrides the start.
    compile: 'auto' (CUDA: CUDA_DEFAULT_COMPILE; CPU: 'off'), 'off' (eager), 'graphs' (a captured CUDA graph
    of the UNet, replayed per step), 'default' / 'reduce-overhead' (torch.compile of the UNet; the second
    with CUDA graphs). precision: see `rcdm.devices.resolve_precision`.
    Every mode computes the same function: results differ by floating-point rounding only.
    callback gets {'i', 't', 'x', 'pred'} after each step.
    """
    cfg_s = resolve_sampling(model, replace(sampling or SamplingConfig(), **settings))
    sampler, steps, seed, guidance = cfg_s.sampler, cfg_s.steps, cfg_s.seed, cfg_s.guidance
    if sampler not in SAMPLERS:
        raise RCDMError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    steps = DEFAULT_STEPS[sampler] if steps is None else steps  # 0 is refused, not replaced
    if not 1 <= steps <= 1000:
        raise RCDMError(f"steps={steps} is out of range: use 1..1000")
    check_guidance(
        guidance, "guidance"
    )  # the API, the app and model configs come here without the CLI's checks
    if guidance != 1.0 and model.null_rep is None:
        raise RCDMError(f"guidance={guidance} needs a model trained with --cond-drop > 0; use --guidance 1")
    interval = cfg_s.guidance_interval  # checked by SamplingConfig
    device = next(model.parameters()).device
    mode = resolve_compile(cfg_s.compile, device)
    dtype = resolve_precision(cfg_s.precision, device)
    cfg = model.config
    b, size = representation.shape[0], cfg.sample_size
    rep = noisy_representation(
        model, representation.to(device=device, dtype=torch.float32), cfg_s, first_index
    )
    gens = sample_generators(seed, first_index, b)
    if noise is None:
        noise = torch.cat([torch.randn((1, 3, size, size), generator=g) for g in gens])
    x = noise.to(device=device, dtype=torch.float32)
    custom = scheduler is not None  # RCDMPipeline's: stepped through its own `step`, generators per sample
    if custom:
        sampler = "custom"
        if scheduler.config.get("prediction_type", "epsilon") != model.prediction_type:
            raise RCDMError(
                f"scheduler {type(scheduler).__name__} has prediction_type "
                f"{scheduler.config.get('prediction_type')!r} but the model predicts {model.prediction_type!r}: "
                "build it with prediction_type set to the model's"
            )
    sched = scheduler if custom else make_scheduler(sampler, model.learned_variance)
    # Timesteps stay on the CPU: reading one (int(t), t > 0, the scheduler's index lookup) never waits on the GPU.
    sched.set_timesteps(steps)
    ts = [int(t) for t in sched.timesteps]
    # which steps run guided: both halves of the batch (conditional, then null), or the conditional half alone
    abar = sched.alphas_cumprod.double()
    sigma = ((1 - abar) / abar).sqrt()
    guided = [
        guidance != 1.0 and (interval is None or interval[0] < float(sigma[t]) <= interval[1]) for t in ts
    ]
    step_kwargs = {"use_clipped_model_output": True, "eta": 0.0} if sampler == "ddim" else {}
    if custom:  # stochastic schedulers draw each sample's step noise from its own generator
        takes_generator = "generator" in inspect.signature(sched.step).parameters
        step_kwargs = {"generator": gens} if takes_generator else {}
        # only DDPM's learned_range reads the variance channels; every other scheduler takes the 3 first
        learned = (
            isinstance(sched, DDPMScheduler)
            and sched.config.variance_type == "learned_range"
            and model.learned_variance
        )
    x = x * sched.init_noise_sigma
    was_training = model.training
    model.eval()
    # ddpm adds noise at every step with t > 0 (timesteps descend, so only the last one can be 0).
    step_noise = _StepNoise(gens, (3, size, size), device) if sampler == "ddpm" and ts[0] > 0 else None
    try:
        # The representation is projected once per call, not once per step (RCDM.condition).
        cond = guided_condition(model, rep, guidance, dtype)
        run = denoiser(model, mode, dtype)
        v_pred = model.prediction_type == "v_prediction" and not custom  # a custom scheduler reads v itself
        alphas = sched.alphas_cumprod.to(device)
        for i, t in enumerate(tqdm(ts, disable=None if progress else True, desc=f"{sampler} sampling")):
            check_deadline()
            step_cond = cond if guided[i] else cond[:b]  # the conditional half comes first
            tt = torch.full((step_cond.shape[0],), t, device=device, dtype=torch.long)
            xin = x if sampler == "ddpm" else sched.scale_model_input(x, sched.timesteps[i])
            if custom:
                xin = xin.to(device)
            batch_in = torch.cat([xin, xin]) if guided[i] else xin
            out = run(batch_in, tt, step_cond)
            if v_pred:  # every scheduler below takes epsilon (and the variance channels) as trained
                out = v_to_epsilon(out, batch_in, alphas[t])
            if guided[i]:
                cond_out, uncond = out.chunk(2)
                out = cond_out.clone()
                out[:, :3] = uncond[:, :3] + guidance * (cond_out[:, :3] - uncond[:, :3])
            if sampler == "ddpm":
                prev_t = ts[i + 1] if i + 1 < len(ts) else -1
                eps_noise = step_noise.take(prefetch=prev_t > 0) if t > 0 and step_noise is not None else None
                if not model.learned_variance:
                    out = out[:, :3]
                x, pred = ddpm_step(sched, out, t, prev_t, x, eps_noise)
            elif custom:
                out = out if learned else out[:, :3]
                res = sched.step(out.cpu(), sched.timesteps[i], x.cpu(), **step_kwargs)
                x, pred = res.prev_sample.to(device), getattr(res, "pred_original_sample", None)
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


REP_NOISE_STREAM = 1 << 21  # offsets the representation-noise seeds from the image-noise seeds


def noisy_representation(
    model: RCDM, rep: torch.Tensor, sampling: SamplingConfig, first_index: int = 0
) -> torch.Tensor:
    """(B, dim) representations with `sampling.rep_noise` standard deviations of Gaussian noise added in the
    model's standardised space (its training std per dimension; else the vector's RMS). Row i's noise comes from
    its own generator, seeded by (seed, first_index + i): batching never changes it, and the image noise is
    unchanged."""
    scale = check_rep_noise(sampling.rep_noise)
    if not scale:
        return rep
    gens = sample_generators(sampling.seed + REP_NOISE_STREAM, first_index, rep.shape[0])
    eps = torch.cat([torch.randn((1, rep.shape[1]), generator=g) for g in gens]).to(rep.device)
    if model.rep_std is not None:
        unit = model.rep_std.float().to(rep.device)
    else:
        unit = rep.pow(2).mean(1, keepdim=True).sqrt()
    return rep + scale * unit * eps


_REUSE: ContextVar[dict | None] = ContextVar("rcdm_reuse_samples", default=None)


@contextmanager
def reuse_samples() -> Iterator[None]:
    """Inside the block, `sample_many` draws an image once: a request for the same model, representation (bit for
    bit), starting noise and sampling settings gets the image already drawn. For pages that show one sample in
    several figures (the pack demo's clean rows recur in four sections). Deterministic samplers only (dpm++,
    ddim; ddpm and rep-noise always sample again); the models must not change inside the block.

    Written here because the reuse is by sample, across calls and batches: no caching library knows which noise
    a row starts from."""
    token = _REUSE.set({"models": {}, "images": {}})
    try:
        yield
    finally:
        _REUSE.reset(token)


def _sample_reusing(
    memo: dict,
    model: RCDM,
    flat: torch.Tensor,
    num_samples: int,
    shared_noise: bool,
    cfg: SamplingConfig,
    progress: bool,
    desc: str,
) -> torch.Tensor:
    """sample_many's images for the rows of `flat`, each drawn only if the block has not drawn it already."""
    memo["models"][id(model)] = model  # held, so that no other model takes its id inside the block
    memo = memo["images"]
    # every setting but the batch size, which never changes a sample
    settings = (id(model), *(v for k, v in asdict(cfg).items() if k != "batch_size"))
    # row r starts from the noise of generator (seed, index): column j when shared, else its global index
    index = [r % num_samples if shared_noise else r for r in range(flat.shape[0])]
    rows = flat.detach().cpu()
    keys = [
        (settings, index[r], hashlib.sha1(rows[r].numpy().tobytes()).hexdigest()) for r in range(len(rows))
    ]
    first: dict = {}  # each missing key's first row: a key repeated in one call is drawn once
    for r, key in enumerate(keys):
        if key not in memo:
            first.setdefault(key, r)
    todo = list(first.values())
    size = model.config.sample_size
    for s, e in tqdm(list(batched(len(todo), cfg.batch_size)), disable=None if progress else True, desc=desc):
        part = todo[s:e]
        noise = noise_at(size, cfg.seed, [index[r] for r in part])
        for r, image in zip(part, sample(model, flat[part], cfg, noise=noise), strict=True):
            memo[keys[r]] = image
    return torch.stack([memo[k] for k in keys])


def noise_at(sample_size: int, seed: int, indices: list[int]) -> torch.Tensor:
    """(len(indices), 3, S, S) standard normal: the starting noise of the samples with these global indices, each
    from its own generator seeded by (seed, index), as `sample` draws it."""
    gens = [sample_generators(seed, i, 1)[0] for i in indices]
    return torch.cat([torch.randn((1, 3, sample_size, sample_size), generator=g) for g in gens])


def start_noise(sample_size: int, num_samples: int, seed: int) -> torch.Tensor:
    """(num_samples, 3, S, S) standard normal: column j's starting noise, seeded by (seed, j)."""
    return noise_at(sample_size, seed, list(range(num_samples)))


@torch.no_grad()
def sample_many(
    model: RCDM,
    representations: torch.Tensor,
    num_samples: int,
    sampling: SamplingConfig | None = None,
    *,
    shared_noise: bool = False,
    progress: bool = False,
    desc: str = "sampling",
    **settings,
) -> torch.Tensor:
    """`num_samples` images for each of M representations (M, dim) -> (M, num_samples, 3, H, W) in [0, 1].

    Sample j of representation m is global index m * num_samples + j, so results do not depend on batch_size.
    shared_noise: sample j of EVERY row starts from the same noise (column j), so two rows differ only through
    their representations (exactly so with a deterministic sampler: dpm++, ddim; the 'paired' preset).
    `settings` override single fields of `sampling`, as in `sample` (kept for older scripts).
    """
    cfg = resolve_sampling(model, replace(sampling or SamplingConfig(), **settings))
    m = representations.shape[0]
    flat = representations.float().repeat_interleave(num_samples, dim=0)
    noise = (
        start_noise(model.config.sample_size, num_samples, cfg.seed).repeat(m, 1, 1, 1)
        if shared_noise
        else None
    )
    memo = _REUSE.get()
    if memo is not None and cfg.sampler != "ddpm" and not cfg.rep_noise:
        imgs = _sample_reusing(memo, model, flat, num_samples, shared_noise, cfg, progress, desc)
    else:
        out: list[torch.Tensor] = []
        for s, e in tqdm(
            list(batched(flat.shape[0], cfg.batch_size)), disable=None if progress else True, desc=desc
        ):
            out.append(
                sample(model, flat[s:e], cfg, first_index=s, noise=None if noise is None else noise[s:e])
            )
        imgs = torch.cat(out)
    bad = int((~torch.isfinite(imgs).flatten(1).all(1)).sum())
    if bad:  # they would be written as black images
        raise RCDMError(
            f"sampling gave non-finite pixels (NaN or inf) in {bad} of {imgs.shape[0]} samples: nothing written; "
            "check the model's weights and the representations (a NaN in either spreads), or try --precision fp32"
        )
    return imgs.view(m, num_samples, *imgs.shape[1:])
