"""Deterministic inversion: the starting noise from which the model, under an image's own representation, draws
that image again (DDIM inversion, Song et al. 2021 Sec. 4.3; Diffusion Autoencoders, Preechakul et al. 2022).

diffusers' `DDIMInverseScheduler` takes the steps up and `DDIMScheduler` (the same "trailing" timesteps,
x0 unclipped, so the two are mirror images) takes them down. What stays in the noise is what the representation
did not fix: decoding one image's noise under another image's representation keeps the layout of the first and
the content the second's representation carries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .data import batched, load_views
from .deadline import check_deadline
from .devices import resolve_compile, resolve_precision
from .diffusion import SamplingConfig, denoiser, guided_condition, sample
from .encoders import Encoder
from .errors import RCDMError
from .figures import grid, save_png, with_caption
from .losses import SCHEDULE
from .model import RCDM
from .visualize import unique_names

# Inversion's own defaults, not the model's sampling default: exact inversion needs the unguided ODE (guidance
# above 1 makes the reconstruction drift). Steps and precision: docs/beyond.md has the measured round trips.
INVERT_DEFAULTS = SamplingConfig(sampler="ddim", steps=50, guidance=1.0)


def inversion_schedulers(model: RCDM, steps: int) -> tuple[DDIMInverseScheduler, DDIMScheduler]:
    """The up (inverse) and down schedulers of one round trip of `steps` steps, with the model's prediction."""
    if not 1 <= steps <= 1000:
        raise RCDMError(f"steps={steps} is out of range for inversion: use 1..1000")
    common = dict(
        **SCHEDULE,
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
        prediction_type=model.prediction_type,
    )
    up, down = DDIMInverseScheduler(**common), DDIMScheduler(**common)
    up.set_timesteps(steps)
    return up, down


def _steps(cfg: SamplingConfig) -> int:
    return INVERT_DEFAULTS.steps if cfg.steps is None else cfg.steps  # type: ignore[return-value]


def _check(cfg: SamplingConfig, model: RCDM) -> None:
    if cfg.guidance != 1.0 and model.null_rep is None:
        raise RCDMError(
            f"guidance={cfg.guidance} needs a model trained with --cond-drop > 0; use --guidance 1"
        )


@torch.no_grad()
def invert_noise(
    model: RCDM,
    images: torch.Tensor,
    representations: torch.Tensor,
    sampling: SamplingConfig = INVERT_DEFAULTS,
    *,
    progress: bool = False,
) -> torch.Tensor:
    """images (B, 3, H, W) in [0, 1] at the model's size, representations (B, dim) -> the noise (B, 3, H, W)
    from which `decode` under the same representations redraws them (up to the round trip's error)."""
    _check(sampling, model)
    up, _ = inversion_schedulers(model, _steps(sampling))
    device = next(model.parameters()).device
    dtype = resolve_precision(sampling.precision, device)
    run = denoiser(model, resolve_compile(sampling.compile, device), dtype)
    out: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for s, e in batched(images.shape[0], sampling.batch_size):
            x = (images[s:e].to(device=device, dtype=torch.float32) * 2 - 1).contiguous()
            rep = representations[s:e].to(device=device, dtype=torch.float32)
            guided = sampling.guidance != 1.0
            cond = guided_condition(model, rep, sampling.guidance, dtype)
            for t in tqdm(up.timesteps, disable=None if progress else True, desc="inverting"):
                check_deadline()
                tt = torch.full((cond.shape[0],), int(t), device=device, dtype=torch.long)
                pred = run(torch.cat([x, x]) if guided else x, tt, cond)[:, :3]
                if guided:
                    cond_out, uncond = pred.chunk(2)
                    pred = uncond + sampling.guidance * (cond_out - uncond)
                x = up.step(pred, t, x).prev_sample
            out.append(x.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def decode(
    model: RCDM,
    noise: torch.Tensor,
    representations: torch.Tensor,
    sampling: SamplingConfig = INVERT_DEFAULTS,
) -> torch.Tensor:
    """noise (B, 3, H, W) from `invert_noise`, representations (B, dim) -> images (B, 3, H, W) in [0, 1]."""
    _check(sampling, model)
    steps = _steps(sampling)
    out = []
    for s, e in batched(noise.shape[0], sampling.batch_size):
        _, down = inversion_schedulers(model, steps)
        out.append(
            sample(
                model, representations[s:e], replace(sampling, steps=steps), noise=noise[s:e], scheduler=down
            )
        )
    return torch.cat(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images (B, 3, H, W) in [0, 1], each quantised to 8 bits as a PNG
    stores it; (B,). Identical images give inf."""
    qa, qb = (a.clamp(0, 1) * 255).round() / 255, (b.clamp(0, 1) * 255).round() / 255
    mse = (qa - qb).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


@dataclass
class Inversion:
    """originals, reconstructions (M, 3, H, W) in [0, 1]; noise (M, 3, H, W); representations (M, dim);
    psnr (M,) in dB: reconstruction against original."""

    names: list[str]
    originals: torch.Tensor
    representations: torch.Tensor
    noise: torch.Tensor
    reconstructions: torch.Tensor
    psnr: torch.Tensor
    sampling: SamplingConfig
    redrawn: torch.Tensor | None = None  # the noise decoded under `invert(redraw=...)`'s representations

    @property
    def mean_psnr(self) -> float:
        finite = self.psnr[torch.isfinite(self.psnr)]
        return float(finite.mean()) if finite.numel() else math.inf


def invert(
    model: RCDM,
    encoder: Encoder,
    images: Sequence[str | Path],
    sampling: SamplingConfig | None = None,
    *,
    progress: bool = False,
    redraw: torch.Tensor | None = None,
) -> Inversion:
    """Invert each image file under its own representation and redraw it from the noise found.

    sampling: steps, guidance, precision, batch_size and compile are read (default `INVERT_DEFAULTS`: 50 steps,
    guidance 1); the sampler is always ddim, the one deterministic sampler diffusers can invert.
    redraw: other representations, (M, dim) or one (dim,) for every image, under which each image's noise is
    decoded too (`Inversion.redrawn`: the layout the noise kept, with the content they carry), in the same batches
    as the reconstructions: one pass of the ODE for both instead of two.
    """
    cfg = replace(sampling or INVERT_DEFAULTS, sampler="ddim")
    originals, views = load_views(
        images, model.config.sample_size, encoder.preprocessing.input_size, encoder.preprocessing.resample
    )
    reps = encoder.encode(views).float()
    if not torch.isfinite(reps).all():
        raise RCDMError(f"encoder {encoder.spec!r} gave non-finite representations: check its weights")
    m, dim = reps.shape
    other = None if redraw is None else redraw.float().reshape(-1, redraw.shape[-1])
    if other is not None and (other.shape[1] != dim or len(other) not in (1, m)):  # before any sampling
        raise RCDMError(
            f"redraw representations of shape {tuple(redraw.shape)} do not fit {m} image(s) of a {dim}-d "
            f"representation: give ({m}, {dim}) or ({dim},)"
        )
    noise = invert_noise(model, originals, reps, cfg, progress=progress)
    if other is None:
        recon, redrawn = decode(model, noise, reps, cfg), None
    else:
        both = decode(model, torch.cat([noise, noise]), torch.cat([reps, other.expand(m, -1)]), cfg)
        recon, redrawn = both[:m], both[m:]
    return Inversion(
        [Path(p).stem for p in images], originals, reps, noise, recon, psnr(recon, originals), cfg, redrawn
    )


def save_inversion(
    inversion: Inversion,
    out_dir: str | Path,
    swap: tuple[str, torch.Tensor] | None = None,
    caption: str | None = None,
) -> dict:
    """Write OUT/<stem>/{noise.safetensors, reconstruction.png} (and with-<other>.png for a `swap`: the other
    image's name and the redrawn images) and OUT/figure.png; returns the per-image record for results.json."""
    out_dir = Path(out_dir)
    names = unique_names(inversion.names)
    rows, records = [], []
    for i, name in enumerate(names):
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"steps": str(inversion.sampling.steps), "guidance": f"{inversion.sampling.guidance:g}"}
        save_file({"noise": inversion.noise[i].contiguous()}, folder / "noise.safetensors", metadata=meta)
        save_png(inversion.reconstructions[i], folder / "reconstruction.png")
        row = [inversion.originals[i], inversion.reconstructions[i]]
        record = {"name": name, "psnr_db": round(float(inversion.psnr[i]), 3)}
        if swap is not None:
            other, images = swap
            save_png(images[i], folder / f"with-{other}.png")
            row.append(images[i])
            record["swap"] = f"{name}/with-{other}.png"
        rows.append(row)
        records.append(record)
    cols = ["original", "reconstruction"] + ([f"rep of {swap[0]}"] if swap else [])
    labels = [f"{n} {float(p):.1f} dB" for n, p in zip(names, inversion.psnr, strict=True)]
    figure = grid(rows, row_labels=labels, col_labels=cols, cell=96)
    (with_caption(figure, caption) if caption else figure).save(out_dir / "figure.png")
    return {"images": records, "mean_psnr_db": round(inversion.mean_psnr, 3)}
