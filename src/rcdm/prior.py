"""A representation prior: a small diffusion model trained on the representations themselves (RCG, Li, Katabi &
He 2024), so that an RCDM can draw images from representations nobody encoded: unconditional generation from an
SSL space, and a picture of what that space holds.

The network is RCG's representation diffusion model scaled to a 2-core CPU: a residual MLP whose blocks are
modulated by the timestep embedding (adaptive LayerNorm), predicting the noise under diffusers' cosine schedule,
on representations standardised by their own training statistics. Sampling is DDIM (diffusers). diffusers has
the schedulers and the timestep embeddings but no MLP denoiser, so that part is written here.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .bundle import model_search_dirs
from .data import list_images
from .devices import RunClock, cpu_model, default_device
from .diffusion import sample_generators
from .encoders import Encoder
from .encoders.cache import cache_file, cached_representations, load_cache
from .errors import RCDMError, TrainingInterrupted
from .figures import model_card
from .files import atomic_dir, write_text_atomic
from .loading import encoder_for, load_model
from .monitor import TrainingMonitor
from .runs import Checkpoints
from .stopping import StopSignals
from .train_config import setting_changes

log = logging.getLogger(__name__)

SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")  # RCG's cosine schedule
PRIOR_CHECKPOINT_FILES = ("prior.safetensors", "optimizer.pt", "state.json")
PRIOR_RECORD = "prior.json"


class _Block(nn.Module):
    """x + gate * MLP(LN(x) * (1 + scale) + shift), (shift, scale, gate) from the timestep embedding."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.mod = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.mod[1].weight)
        nn.init.zeros_(self.mod[1].bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.mod(emb).chunk(3, dim=-1)
        return x + (1 + gate) * self.mlp(self.norm(x) * (1 + scale) + shift)


class RepresentationPrior(ModelMixin, ConfigMixin):
    """eps(z_t, t) for standardised representations z (B, dim); `rep_mean` / `rep_std` map z back to the encoder's."""

    @register_to_config
    def __init__(self, representation_dim: int, width: int = 256, depth: int = 4) -> None:
        super().__init__()
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(width, width)
        self.proj_in = nn.Linear(representation_dim, width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, representation_dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        self.register_buffer("rep_mean", torch.zeros(representation_dim))
        self.register_buffer("rep_std", torch.ones(representation_dim))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embedding(self.time_proj(t).to(z.dtype))
        h = self.proj_in(z)
        for block in self.blocks:
            h = block(h, emb)
        return self.proj_out(self.norm_out(h))


@dataclass(frozen=True)
class PriorConfig:
    model: str  # the RCDM whose encoder's representations are modelled (its folder or name)
    data: str  # folder of training images
    steps: int = 10_000
    batch_size: int = 256
    lr: float = 1e-3
    ema_decay: float = 0.999
    # RCG's network is 12 blocks of 1536 for 256-d representations; width 256 and 4 blocks suit CIFAR-scale
    # 64-d ones and train 10,000 steps in minutes on one core (docs/beyond.md has the measurement)
    width: int = 256
    depth: int = 4
    save_every: int = 1000
    seed: int = 0
    cache: str | None = None  # representation cache folder (default OUT/cache)


def check_prior_config(cfg: PriorConfig) -> None:
    for name in ("steps", "batch_size", "width", "depth", "save_every"):
        if getattr(cfg, name) < 1:
            raise RCDMError(f"--{name.replace('_', '-')} {getattr(cfg, name)} must be at least 1")
    if not 0 < cfg.lr < 1:
        raise RCDMError(f"--lr {cfg.lr} is out of range: use a learning rate in (0, 1), e.g. 1e-3")
    if cfg.width > 8192 or cfg.depth > 64:
        raise RCDMError(
            f"--width {cfg.width} / --depth {cfg.depth} is too large: use width <= 8192, depth <= 64"
        )


def train_prior(cfg: PriorConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Train a prior on the representations of cfg.data's images (by the RCDM's encoder) into OUT; returns
    OUT/prior (a `RepresentationPrior.from_pretrained` folder). Checkpoints every cfg.save_every steps;
    `resume` continues from the newest one."""
    check_prior_config(cfg)
    run_dir = Path(out)
    saved = run_dir / "prior-run.json"
    if resume:
        if not saved.is_file():
            raise RCDMError(f"--resume: {str(run_dir)!r} holds no rcdm prior run; drop --resume to start one")
        diffs = setting_changes(
            json.loads(saved.read_text()), asdict(cfg), frozenset({"steps", "save_every"})
        )
        if diffs:
            names = ", ".join(d.split()[0] for d in diffs)
            raise RCDMError(
                f"--resume: {names} differ from the run's ({'; '.join(diffs)}); keep them or start a new --out"
            )
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RCDMError(f"--out {str(run_dir)!r} is not empty: choose a new folder, or pass --resume")
    model = load_model(cfg.model)
    encoder = encoder_for(model).to(default_device())  # the cache encodes on the GPU when there is one
    files = list_images(cfg.data)
    if len(files) < 2:
        raise RCDMError(f"--data {cfg.data!r} holds {len(files)} image(s): a prior needs a folder of many")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(saved, json.dumps(asdict(cfg), indent=2))
    caches = Path(cfg.cache).expanduser() if cfg.cache else run_dir / "cache"
    path = cached_representations(encoder, files, cache_file(caches, encoder, files), progress=progress)
    reps = load_cache(path)["representations"].float()
    dim = reps.shape[1]
    torch.manual_seed(cfg.seed)
    net = RepresentationPrior(dim, cfg.width, cfg.depth)
    net.rep_mean.copy_(reps.mean(0))
    net.rep_std.copy_(reps.std(0).clamp_min(1e-6))
    ema = RepresentationPrior(dim, cfg.width, cfg.depth)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    pair = nn.ModuleDict({"net": net, "ema": ema})  # prior.safetensors: net.* and ema.*
    ckpts = Checkpoints(run_dir, files=PRIOR_CHECKPOINT_FILES)
    # the time spent: this process's plus what the checkpoint resumed from records (all processes of the run)
    start, spent = 0, {"wall_time_s": 0.0, "cpu_time_s": 0.0}
    ckpt = ckpts.start(resume)
    if ckpt is not None:
        with ckpts.reading(ckpt, "prior.safetensors"):
            pair.load_state_dict(ckpts.read(ckpt, "prior.safetensors"))
            opt.load_state_dict(ckpts.read(ckpt, "optimizer.pt"))
        state = ckpts.state(ckpt, "step")
        start = state["step"]
        spent = {k: float(state.get(k, 0.0)) for k in spent}
    z = (reps - net.rep_mean) / net.rep_std
    sched = DDPMScheduler(**SCHEDULE)
    log.info(
        "training a representation prior (%.1fM parameters, %d-d, width %d, depth %d) on %d representations of "
        "%s (%s); steps %d -> %d, batch %d, checkpoints every %d in %s",
        sum(p.numel() for p in net.parameters()) / 1e6,
        dim,
        cfg.width,
        cfg.depth,
        len(files),
        encoder.spec,
        encoder.feature,
        start,
        cfg.steps,
        cfg.batch_size,
        cfg.save_every,
        run_dir,
    )
    monitor = TrainingMonitor(
        run_dir, start=start, total=cfg.steps, log_every=50, progress=progress, main_process=True
    )
    clock = RunClock(spent["wall_time_s"], spent["cpu_time_s"])

    def spent_now() -> dict:
        return {"wall_time_s": round(clock.wall_s(), 1), "cpu_time_s": round(clock.cpu_s(), 1)}

    net.train()
    with StopSignals() as signals:  # a SIGINT or SIGTERM ends the step under way, saves it and stops
        signals.armed = True
        for step in range(start + 1, cfg.steps + 1):
            # each step's draws from its own generator: a resumed run replays the same batches
            g = sample_generators(cfg.seed, step, 1)[0]
            idx = torch.randint(0, z.shape[0], (cfg.batch_size,), generator=g)
            t = torch.randint(0, SCHEDULE["num_train_timesteps"], (cfg.batch_size,), generator=g)
            noise = torch.randn(cfg.batch_size, dim, generator=g)
            loss = nn.functional.mse_loss(net(sched.add_noise(z[idx], noise, t), t), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for pe, pn in zip(ema.parameters(), net.parameters(), strict=True):
                    pe.lerp_(pn, 1 - cfg.ema_decay)
            if not torch.isfinite(loss):
                raise RCDMError(f"the prior's loss became {float(loss)} at step {step}: try a smaller --lr")
            monitor.step(step, float(loss.detach()), cfg.batch_size, terms={}, lr=cfg.lr, grad_norm=None)
            if step % cfg.save_every == 0 or step == cfg.steps or signals.received:
                ckpts.save(step, {"step": step, **spent_now()}, prior=pair, optimizer=opt)
                ckpts.prune(2)
            if signals.received and step < cfg.steps:
                monitor.close()
                raise TrainingInterrupted.at(signals.received, f"step {step} of {cfg.steps} in {run_dir}")
    monitor.close()
    final = run_dir / "prior"
    with atomic_dir(final, run_dir / f".tmp-prior-{os.getpid()}") as folder:
        ema.save_pretrained(folder)
        record = {
            "model": cfg.model,
            "encoder": encoder.spec,
            "encoder_identity": encoder.identity,
            "feature": encoder.feature,
            "representations": len(files),
            "steps": cfg.steps,
            "training": training_settings(asdict(cfg)),
            **spent_now(),  # every process of a resumed run; a checkpoint from before 2026-12-05 recorded none
            "machine": cpu_model(),
        }
        write_prior(ema, record, folder)
    return final


def training_settings(cfg: dict) -> dict:
    """What a prior's record says of its training: the PriorConfig without the model and the cache, the data
    folder as its last two parts (a record may be shipped: no machine paths)."""
    out = {k: v for k, v in cfg.items() if k not in ("model", "cache")}
    if out.get("data"):
        out["data"] = str(Path(*Path(out["data"]).parts[-2:]))
    return out


def prior_card(record: dict) -> str:
    """The README.md of a prior folder, from its prior.json record alone."""
    t = record.get("training") or {}
    measured = record.get("metrics") or {}
    return model_card(
        "Representation prior",
        [
            f"A diffusion model of the representations of `{record['encoder']}` ({record['feature']}), trained by "
            f"`rcdm prior` on {record['representations']} images of `{t.get('data', '?')}` for {record['steps']} "
            f"steps of {t.get('batch_size', '?')} (RCG's design: a residual MLP, width {t.get('width', '?')}, depth "
            f"{t.get('depth', '?')}, cosine schedule). `rcdm generate --model MODEL --prior THIS` samples "
            "representations from it and draws one image for each with an RCDM conditioned on the same encoder, "
            f"such as `{record['model']}`.",
            "What it shows: the images the RCDM draws from representations typical of the training images. A "
            "representation the prior never learned to produce cannot appear; nor can an image the RCDM never "
            "learned to draw.",
        ],
        [(k, record[k]) for k in ("encoder_identity", "wall_time_s", "cpu_time_s", "machine") if k in record],
        sections=[("Measured", "\n".join(f"- {k}: {v}" for k, v in measured.items()))] if measured else [],
    )


def write_prior(net: RepresentationPrior, record: dict, folder: Path, *, half: bool = False) -> None:
    """FOLDER/{config.json, diffusion_pytorch_model.safetensors, prior.json, README.md}. `half`: the weights in
    float16 (a sampled representation moves by under 0.1%), the representation statistics kept in float32."""
    # a fresh copy: a loaded network's config holds the folder it came from (`_name_or_path`), a machine path
    copy = RepresentationPrior(net.config.representation_dim, net.config.width, net.config.depth)
    copy.load_state_dict(net.state_dict())
    if half:
        for param in copy.parameters():  # the buffers (rep_mean, rep_std) stay float32
            param.data = param.data.half()
    copy.save_pretrained(folder)
    (folder / PRIOR_RECORD).write_text(json.dumps(record, indent=2))
    (folder / "README.md").write_text(prior_card(record))


def find_prior(name: str | Path) -> Path:
    """A prior's folder from what a user passes: the folder, a run folder holding prior/, or the name of one
    installed with the models (a bundle's prior-<encoder>-<feature>, found where `rcdm-cifar:NAME` looks)."""
    folder = Path(name).expanduser()
    if (folder / "prior" / PRIOR_RECORD).is_file():
        return folder / "prior"
    if (folder / PRIOR_RECORD).is_file():
        return folder
    installed = _installed() if len(folder.parts) == 1 else {}
    if str(folder) in installed:
        return installed[str(folder)]
    raise RCDMError(
        f"--prior {str(name)!r} is not an rcdm prior (no prior.json): train one with rcdm prior, or name an "
        f"installed one ({', '.join(installed_priors()) or 'none installed'})"
    )


def _installed() -> dict[str, Path]:
    """Name -> folder of the priors installed with the models (the bundle's prior-* folders); the first of a
    name in the search order wins, as for `rcdm-cifar:NAME`."""
    found: dict[str, Path] = {}
    for root in model_search_dirs():
        for record in sorted(root.glob(f"prior-*/{PRIOR_RECORD}")) if root.is_dir() else []:
            found.setdefault(record.parent.name, record.parent)
    return found


def installed_priors() -> list[str]:
    """Names of the priors installed with the models (the bundle's prior-* folders)."""
    return sorted(_installed())


def prior_for(encoder: Encoder) -> Path | None:
    """The installed prior of this encoder's representations (same identity and feature), or None."""
    for _, folder in sorted(_installed().items()):
        record = json.loads((folder / PRIOR_RECORD).read_text())
        if record.get("encoder_identity") == encoder.identity and record.get("feature") == encoder.feature:
            return folder
    return None


def load_prior(folder: str | Path) -> tuple[RepresentationPrior, dict]:
    """A prior (see find_prior) -> the network (float32, eval) and its prior.json record."""
    folder = find_prior(folder)
    net = RepresentationPrior.from_pretrained(folder).float().eval()
    return net, json.loads((folder / PRIOR_RECORD).read_text())


def check_prior_matches(record: dict, encoder: Encoder) -> None:
    """The prior must model the representations of the encoder the RCDM is conditioned on."""
    if record.get("encoder_identity") != encoder.identity or record.get("feature") != encoder.feature:
        raise RCDMError(
            f"the prior models {record.get('encoder')!r} ({record.get('feature')}) but the model is conditioned "
            f"on {encoder.spec!r} ({encoder.feature}): train a prior with this model (rcdm prior --model ...)"
        )


@torch.no_grad()
def sample_representations(
    prior: RepresentationPrior, n: int, *, steps: int = 50, seed: int = 0
) -> torch.Tensor:
    """n representations (n, dim) in the encoder's own space, by DDIM; row i from its own generator (seed, i)."""
    if not 1 <= steps <= 1000:
        raise RCDMError(f"--prior-steps {steps} is out of range: use 1..1000")
    # "leading" + offset 1 starts at t = 981 of a 50-step schedule: the cosine schedule's last beta is capped at
    # 0.999, so abar_999 is ~1e-6 and a first step from there would multiply the network's error a thousandfold.
    sched = DDIMScheduler(
        **SCHEDULE, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading", steps_offset=1
    )
    sched.set_timesteps(steps)
    dim = prior.config.representation_dim
    gens = sample_generators(seed, 0, n)
    z = torch.cat([torch.randn((1, dim), generator=g) for g in gens])
    for t in sched.timesteps:
        eps = prior(z, torch.full((n,), int(t), dtype=torch.long))
        z = sched.step(eps, t, z).prev_sample
    return z * prior.rep_std + prior.rep_mean
