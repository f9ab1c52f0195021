"""One training loop on accelerate: CPU, one GPU, or many GPUs / nodes (`accelerate launch`, `torchrun`).

Every batch, noise draw and timestep is a pure function of (seed, step), whatever the number of processes.
Checkpoints hold the model, its EMA, the optimizer and the step, written to a temporary folder and renamed into
place: a run killed at any point (even mid-save) resumes with `resume=True` exactly where the last complete
checkpoint left it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader

from .data import (
    PairedViews,
    StepBatchSampler,
    batched,
    decode_images,
    list_images,
    load_views,
    to_model_space,
)
from .devices import Precision, autocast_for, cpu_seconds, resolve_precision, training_precision
from .diffusion import SamplingConfig, sample, sample_generators
from .encoders import Encoder, create_encoder
from .encoders.cache import cached_representations, check_cache, load_cache
from .encoders.registry import check_rebuilds_the_same
from .errors import NonFiniteLossError, RCDMError, TrainingInterrupted
from .files import atomic_dir, write_text_atomic
from .locks import run_lock
from .losses import GaussianDiffusion, draw_timesteps
from .model import PRESETS, RCDM, check_encoder, folder_holds
from .monitor import TrainingMonitor
from .runs import Checkpoints, nbytes
from .stopping import StopSignals
from .train_config import (
    TrainConfig,
    check_output_folder,
    check_resume_config,
    learning_rate,
    validate_config,
)
from .warm_start import initialise_from

log = logging.getLogger(__name__)
# Offsets the training-noise seeds from the augmentation seeds of the same image ((seed, position) in both).
NOISE_STREAM = 1 << 20


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    last_loss: float
    images_per_second: float
    history: list[float] = field(default_factory=list)
    # This call of `train` (set-up included; not earlier runs of a resumed one): wall-clock seconds, which count
    # time the process was stopped or starved, and CPU seconds of the process and its data workers, which do not.
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    stopped_early: bool = False  # ended by the time budget at the checkpoint of `steps`, before cfg.steps


def _fixed_views(files: list[Path], size: int, enc: Encoder, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n training files' centre views: (images (n, 3, size, size) in [0, 1], representations)."""
    picks = files[:: max(1, len(files) // n)][:n]
    images, views = load_views(picks, size, enc.preprocessing.input_size, enc.preprocessing.resample)
    return images, enc.encode(views)


@torch.no_grad()
def _sample_fixed(model: RCDM, reps: torch.Tensor, precision: Precision, per: int = 4) -> torch.Tensor:
    """per samples of each representation (dpm++ 20, fixed seed) -> (n, per, 3, H, W) in [0, 1]."""
    device = next(model.parameters()).device
    imgs = sample(
        model,
        reps.to(device).repeat_interleave(per, 0),
        SamplingConfig(steps=20, seed=0, precision=precision),
    )
    return imgs.view(reps.shape[0], per, *imgs.shape[1:]).cpu()


@torch.no_grad()
def _representation_sample(
    enc: Encoder, dataset: PairedViews, device: torch.device, precision: Precision, n: int = 4096
) -> torch.Tensor:
    """Representations of up to n training views (fixed seeds: every process gets the same), (n, dim)."""
    keys = [(i, i) for i in torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).long().tolist()]
    out = []
    for s in range(0, len(keys), 256):
        views = torch.stack([dataset[k]["enc_image"] for k in keys[s : s + 256]]).to(device)
        with autocast_for(device, precision):
            out.append(enc(views).float())
    return torch.cat(out)


def _batches_for(cfg: TrainConfig, dataset: PairedViews, start: int, acc: Accelerator) -> DataLoader:
    sampler = StepBatchSampler(
        len(dataset), cfg.batch_size, cfg.seed, start, cfg.steps, acc.process_index, acc.num_processes
    )
    workers = cfg.num_workers
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=acc.device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


@contextlib.contextmanager
def _holding_run_folder(acc: Accelerator, run_dir: Path) -> Iterator[None]:
    """The main process holds RUN_DIR/.lock for the block; every process raises when it is taken."""
    with contextlib.ExitStack() as stack:
        refused = None
        if acc.is_main_process:
            try:
                stack.enter_context(run_lock(run_dir, "rcdm train"))
            except RCDMError as e:
                refused = str(e)
        if acc.num_processes > 1:
            box = [refused]
            broadcast_object_list(box)
            refused = box[0]
        if refused is not None:
            raise RCDMError(refused)
        yield


def check_time_budget(seconds: float | None) -> None:
    """Refuse a time budget that is not a positive number of seconds (None: no limit)."""
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise RCDMError(f"--time-budget-s {seconds} must be a positive number of seconds (default: no limit)")


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,  # called after each optimizer step (step, loss)
    encoder: Encoder | None = None,  # a ready encoder (Python API); else built from cfg.encoder
    time_budget_s: float | None = None,
) -> TrainResult:
    """Train an RCDM on the frozen representations of `cfg.encoder`; returns when `cfg.steps` are done, or
    with `stopped_early` at the first checkpoint (counted or interim) written after `time_budget_s` seconds of
    this call (set-up included): the run is then usable as it stands and continues with `resume=True`.

    The main process holds RUN_DIR/.lock meanwhile (a second run in the same folder is refused); a full disk
    raises DiskFullError with the last checkpoint intact; a damaged newest checkpoint on resume raises naming
    the file and the newest intact one.
    """
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    check_time_budget(time_budget_s)
    deadline = None if time_budget_s is None else wall0 + time_budget_s
    run_dir = Path(run_dir)
    validate_config(cfg)
    check_output_folder(run_dir)
    # cpu=True on a CPU-only machine: a torchrun of N CPU processes then joins one gloo group and each rank
    # trains on its share (without it accelerate runs every rank as a separate single-process job).
    acc = Accelerator(
        cpu=not torch.cuda.is_available(),
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=str(run_dir),  # trackers write under RUN_DIR/rcdm
    )
    ckpts = Checkpoints(run_dir)
    with (
        _holding_run_folder(acc, run_dir),
        ckpts.reporting_full_disk("to the run folder"),
        StopSignals() as signals,
    ):
        result = _train(
            cfg,
            ckpts,
            acc,
            resume=resume,
            progress=progress,
            on_step=on_step,
            encoder=encoder,
            deadline=deadline,
            signals=signals,
        )
    result.wall_time_s, result.cpu_time_s = time.perf_counter() - wall0, cpu_seconds() - cpu0
    return result


def _train(
    cfg: TrainConfig,
    ckpts: Checkpoints,
    acc: Accelerator,
    *,
    resume: bool,
    progress: bool,
    on_step: Callable[[int, float], None] | None,
    encoder: Encoder | None,
    deadline: float | None,  # time.perf_counter() past which the next checkpoint ends the run
    signals: StopSignals,
) -> TrainResult:
    """`train` once the settings are checked and the run folder is this run's."""
    run_dir = ckpts.run_dir
    ckpt = ckpts.start(resume, sweep=acc.is_main_process)
    if resume and ckpt is None and (run_dir / "run.json").is_file():
        log.warning("no complete checkpoint in %s: starting from step 0", run_dir)

    size = cfg.image_size or PRESETS[cfg.preset]["sample_size"]
    if resume:
        check_resume_config(cfg, run_dir, size)
    files = list_images(cfg.data)
    mp = cfg.mixed_precision
    if acc.num_processes > 1 and (cfg.batch_size // acc.num_processes) % cfg.gradient_accumulation_steps:
        raise RCDMError(
            f"each of the {acc.num_processes} processes takes {cfg.batch_size // acc.num_processes} images per "
            f"step, which {cfg.gradient_accumulation_steps} micro-batches do not divide: change the batch size"
        )
    precision = training_precision(mp)
    bf16 = resolve_precision(precision, acc.device) == torch.bfloat16
    enc = encoder if encoder is not None else create_encoder(cfg.encoder, cfg.feature)
    if encoder is None:
        check_rebuilds_the_same(enc)
    if encoder is not None and enc.feature != cfg.feature:
        enc = enc.with_feature(cfg.feature)
    enc.to(acc.device)
    arch = dict(
        sample_size=size,
        learned_variance=cfg.loss == "hybrid",
        prediction_type=cfg.prediction,
        dropout=cfg.dropout,
        null_representation=cfg.cond_drop > 0,
        standardize_representation=cfg.standardize,
        **enc.describe(),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the initial weights are a function of the seed too
        model = RCDM.from_preset(cfg.preset, **arch)
    if ckpt is None and cfg.init_from:
        initialise_from(model, cfg.init_from)  # the EMA starts from the same weights (saved_ema below)
    saved_ema, saved_opt, start = model, None, 0
    if ckpt is not None:
        saved, saved_ema = ckpts.read(ckpt, "model/", RCDM), ckpts.read(ckpt, "ema/", RCDM)
        saved_opt, start = ckpts.read(ckpt, "optimizer.pt"), ckpts.state(ckpt, "step")["step"]
        check_encoder(saved, enc.describe())
        model.load_state_dict(saved.state_dict(), strict=True)
    ema_model = RCDM.from_config(model.config)
    ema_model.load_state_dict(saved_ema.state_dict(), strict=True)
    del saved_ema
    ema_model.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    model.to(acc.device).train()
    if cfg.compile:
        model.unet.compile(dynamic=False)  # nn.Module.compile: same module, same state_dict keys
    # On CUDA: fused AdamW and a foreach EMA (one kernel per step over all parameters instead of one per
    # parameter): the same update rule, so the same model, up to float rounding.
    fused = acc.device.type == "cuda"
    ema = EMAModel(ema_model.parameters(), decay=cfg.ema_decay, foreach=fused)
    ema.optimization_step = start
    ema.to(acc.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if saved_opt is not None:
        opt.load_state_dict(saved_opt)
        del saved_opt
    pmodel, opt = acc.prepare(model, opt)

    # Decode the data set once into memory when it fits (the main process writes the cache file first).
    decoded = decode_images(files, progress=progress) if acc.is_main_process else None
    acc.wait_for_everyone()
    if not acc.is_main_process:
        decoded = decode_images(files, progress=False)
    cache = None
    if cfg.feature_cache:
        cache_path = Path(cfg.feature_cache)
        if acc.is_main_process:
            cached_representations(enc, files, cache_path, flipped=True, decoded=decoded, progress=progress)
        acc.wait_for_everyone()
        cache = {k: v.to(acc.device) for k, v in load_cache(check_cache(enc, files, cache_path)).items()}
    dataset = PairedViews(
        files,
        size,
        enc.preprocessing.input_size,
        min_scale=1.0 if cache is not None else cfg.min_scale,
        decoded=decoded,
    )
    if cfg.standardize and ckpt is None:
        reps = (
            cache["representations"]
            if cache is not None
            else _representation_sample(enc, dataset, acc.device, precision)
        )
        for m in (acc.unwrap_model(pmodel), ema_model):
            m.set_representation_stats(reps.to(acc.device))
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = {
            **asdict(replace(cfg, image_size=size)),
            "num_images": len(files),
            "num_processes": acc.num_processes,  # batch_size is global: each process takes its share
            "model": dict(model.config),
        }
        write_text_atomic(run_dir / "run.json", json.dumps(resolved, indent=2, default=str))

    if acc.is_main_process:
        log.info(
            "training %s (%.1fM parameters, %d px) on %d images (%s) with %s %s (%d-d%s; sees %s); global batch "
            "%d on %d process(es), %s, steps %d -> %d, checkpoints every %d in %s",
            cfg.preset,
            sum(p.numel() for p in model.parameters()) / 1e6,
            size,
            len(files),
            "decoded in memory" if decoded is not None else "decoded per file",
            cfg.encoder,
            cfg.feature,
            enc.dim,
            ", cached features" if cache is not None else "",
            enc.preprocessing.summary(),
            cfg.batch_size,
            acc.num_processes,
            "bf16 autocast" if bf16 else "fp32",
            start,
            cfg.steps,
            cfg.save_every,
            run_dir,
        )
    if cfg.report_to != "none":
        acc.init_trackers("rcdm", config={k: v for k, v in asdict(cfg).items() if v is not None})
    monitor = TrainingMonitor(
        run_dir,
        start=start,
        total=cfg.steps,
        log_every=cfg.log_every,
        progress=progress,
        main_process=acc.is_main_process,
        accelerator=acc,
    )
    fixed = _fixed_views(files, size, enc) if cfg.sample_every > 0 and acc.is_main_process else None
    diffusion = GaussianDiffusion()
    history: list[float] = []
    t0, seen, last = time.perf_counter(), 0, float("nan")
    last_save, stopped_early = t0, False
    step = start
    k = cfg.gradient_accumulation_steps
    stop_signal: str | None = None
    interrupted = False  # a stop signal ended the run before cfg.steps
    signals.armed = True  # from here a SIGINT or SIGTERM ends the run at a checkpoint
    for batch in _batches_for(cfg, dataset, start, acc):
        x0 = to_model_space(batch["image"].to(acc.device, non_blocking=True))
        if cache is not None:
            idx, flipped = batch["index"].to(acc.device), batch["flipped"].to(acc.device)
            rep = torch.where(flipped.view(-1, 1), cache["flipped"][idx], cache["representations"][idx])
        else:
            with torch.no_grad(), autocast_for(acc.device, precision):
                rep = enc(batch["enc_image"].to(acc.device, non_blocking=True)).float()
        # Each image's timestep, noise and conditioning drop come from its own generator, seeded by its place in
        # the global batch (as its augmentation is): the number of processes does not change what is trained, and
        # each rank draws only its own rows.
        b = x0.shape[0]
        gens = sample_generators(cfg.seed + NOISE_STREAM, step * cfg.batch_size + acc.process_index * b, b)
        t = draw_timesteps(gens, diffusion.num_timesteps, cfg.timestep_sampling)
        noise = torch.cat([torch.randn((1, *x0.shape[1:]), generator=g) for g in gens])
        drop = None
        if cfg.cond_drop > 0:
            drop = (torch.cat([torch.rand(1, generator=g) for g in gens]) < cfg.cond_drop).to(acc.device)
        # k micro-batches of b / k images: the mean of their means is the batch mean, so gradients are those of
        # the whole batch (only the last one all-reduces across processes).
        total = torch.zeros((), device=acc.device)
        terms: dict[str, float] = {}
        for j, (a, e) in enumerate(batched(b, b // k)):
            sync = contextlib.nullcontext() if j == k - 1 else acc.no_sync(pmodel)
            with sync, autocast_for(acc.device, precision):
                part = (
                    diffusion.losses(
                        pmodel,
                        x0[a:e],
                        rep[a:e],
                        cfg.loss,
                        drop=None if drop is None else drop[a:e],
                        t=t[a:e],
                        noise=noise[a:e],
                        terms=terms,
                        prediction=cfg.prediction,
                        snr_gamma=cfg.snr_gamma if cfg.loss_weighting == "min-snr" else None,
                    ).mean()
                    / k
                )
                acc.backward(part)
            total += part.detach()
        value = float(acc.gather(total).mean())
        if not math.isfinite(value):
            good = ckpts.latest()
            where = f"the last good checkpoint is {good}" if good else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"loss became {value} at step {step}: stopped; {where} (lower --lr or check the encoder's output)"
            )
        logging_step = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = float(acc.clip_grad_norm_(pmodel.parameters(), cfg.grad_clip))
        elif logging_step:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(pmodel.parameters(), float("inf")))
        lr = learning_rate(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(acc.unwrap_model(pmodel).parameters())
        step += 1
        seen += x0.shape[0] * acc.num_processes
        last = value
        history.append(value)
        monitor.step(step, value, x0.shape[0] * acc.num_processes, terms=terms, lr=lr, grad_norm=grad_norm)
        if fixed is not None and (step % cfg.sample_every == 0 or step == cfg.steps):
            ema.copy_to(ema_model.parameters())
            monitor.samples(step, fixed[0], _sample_fixed(ema_model, fixed[1], precision))
        due = step % cfg.save_every == 0 or step == cfg.steps
        # a stop signal: in one process at the step it came in; across processes at a log step, as the main
        # process received it
        stop_signal = signals.received if acc.num_processes == 1 else None
        if step % cfg.log_every == 0:
            # the main process's clock (an interim checkpoint) and signal decide for all, in one broadcast, so that
            # every process reaches wait_for_everyone below and all stop at the same step
            late = (
                cfg.save_every_minutes > 0 and time.perf_counter() - last_save >= cfg.save_every_minutes * 60
            )
            late, stop_signal = broadcast_object_list([late, signals.received])
            due = due or bool(late)
        interrupted = stop_signal is not None and step < cfg.steps
        due = due or interrupted
        if due:
            if acc.is_main_process:
                ema.copy_to(ema_model.parameters())
                saved = ckpts.save(
                    step, {"step": step}, model=acc.unwrap_model(pmodel), ema=ema_model, optimizer=opt
                )
                ckpts.prune(cfg.keep_checkpoints, every=cfg.save_every)
                window = history[-cfg.save_every :]
                log.info(
                    "step %d/%d: mean loss %.4f over the last %d steps, %.1f img/s; saved %s",
                    step,
                    cfg.steps,
                    sum(window) / len(window),
                    len(window),
                    seen / max(1e-9, time.perf_counter() - t0),
                    saved,
                )
            acc.wait_for_everyone()
            last_save = time.perf_counter()
            if deadline is not None and step < cfg.steps:
                # the main process's clock decides for all, so that every process stops at the same step
                stopped_early = bool(broadcast_object_list([last_save > deadline])[0])
        if on_step is not None:
            on_step(step, value)
        if stopped_early:
            log.info("time budget spent: stopped at the checkpoint of step %d of %d", step, cfg.steps)
            break
        if interrupted:
            break
    signals.armed = False
    monitor.close()
    if interrupted:
        raise TrainingInterrupted.at(stop_signal, f"step {step} of {cfg.steps} in {run_dir}")
    if acc.is_main_process and step >= cfg.steps:
        ema.copy_to(ema_model.parameters())
        if step == start and folder_holds(run_dir / "model", ema_model):
            # a resume of a finished run: model/ holds these weights already, and what was written into it since
            # (the sampling `rcdm recipe guidance --record` measured for them) must stay
            log.info("%s already holds the model of step %d: kept as it is", run_dir / "model", step)
        else:
            tmp_model = run_dir / ".tmp-model"
            with (
                ckpts.reporting_full_disk(
                    "the final model/", needed=nbytes(ema_model.state_dict()), partial=tmp_model
                ),
                atomic_dir(run_dir / "model", tmp_model) as tmp,
            ):
                ema_model.save_pretrained(tmp)
    rate = seen / max(1e-9, time.perf_counter() - t0)
    return TrainResult(run_dir, step, last, rate, history, stopped_early=stopped_early)
