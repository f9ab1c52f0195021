"""The CIFAR-10 demo pack: three RCDMs on the recipe encoders, and the bundle that ships them.

Run layout (one folder, ROOT):
    ROOT/ssl/encoder          `rcdm recipe ssl --objective vicreg --out ROOT/ssl`
    ROOT/supervised/encoder   `rcdm recipe ssl --objective supervised --out ROOT/supervised`
    ROOT/<target name>/       `rcdm recipe rcdm --runs ROOT`: one rcdm.train run per TARGETS entry + recipe.json
`pack` turns these into a bundle folder (fp16 safetensors + card.json + README.md per model, bundle.json) that
`rcdm-cifar:NAME` and `rcdm sample --model FOLDER` read, refusing smoke runs unless asked to label them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..diffusion import LossType
from ..encoders import Feature
from ..encoders.rcdm_cifar import CARD_NAME, load_encoder_net, read_card, save_encoder
from ..errors import RCDMError
from ..model import PRESETS, RCDM
from ..train import TrainConfig, latest_checkpoint, train
from .ssl import CIFAR_LICENSE, device_name, git_commit, model_card_markdown

log = logging.getLogger(__name__)

EncoderRun = Literal["ssl", "supervised"]
MIN_KNN_ACCURACY = 0.5  # an encoder below this backbone k-NN accuracy on CIFAR-10 test counts as undertrained
MAX_BUNDLE_MB = 30.0  # MB = 10**6 bytes
RECIPE_NAME = "recipe.json"


@dataclass(frozen=True)
class Target:
    """One RCDM of the pack: its run / bundle folder name, which encoder run, and which feature."""

    name: str
    encoder_run: EncoderRun
    feature: Feature


TARGETS: tuple[Target, ...] = (
    Target("rcdm-cifar10-vicreg-backbone", "ssl", "backbone"),
    Target("rcdm-cifar10-vicreg-projector", "ssl", "projector"),
    Target("rcdm-cifar10-supervised", "supervised", "backbone"),
)


@dataclass(frozen=True)
class RCDMRecipe:
    """Settings of `train_rcdms`; defaults are the GPU recipe (one H100, three runs side by side, unmeasured).

    8,000 steps x 128 = 1.02M images seen (about 20 CIFAR-10 epochs) per RCDM.
    """

    data: str  # a CIFAR-10 root (its train/ split is used), or any image folder
    preset: str = "cifar32-small"  # cifar32 works too but three of them exceed the 30 MB bundle
    steps: int = 8000
    batch_size: int = 128
    lr: float = 2e-4
    loss: LossType = "hybrid"
    ema_decay: float = 0.999  # short runs: the published 0.9999 would average over too little training
    save_every: int = 500
    num_workers: int = 4
    seed: int = 0
    time_budget_s: float | None = None  # stop at the first checkpoint after this many seconds (a partial run)
    smoke: bool = False  # a tiny / test run: `pack` refuses it without allow_smoke
    standardize: bool = False  # standardise representations with the training set's statistics
    keep_checkpoints: int = 2  # more keeps the curve of a gate metric against images seen evaluable


# Named settings over the dataclass defaults (the GPU recipe): `rcdm recipe rcdm --profile cpu`.
# cpu: one process per target on one core each (bf16 autocast on CPUs with native bf16, about 20-25 img/s per
# core for cifar32-small); lr 5e-4 learned faster than the published 1e-4 in short CPU runs (at 1e-4 the samples
# were still noise after 13k images); standardised representations; every 500-step checkpoint kept.
RCDM_PROFILES: dict[str, dict[str, Any]] = {
    "gpu": {},
    "cpu": dict(
        steps=8000,
        batch_size=64,
        lr=5e-4,
        num_workers=0,
        standardize=True,
        save_every=500,
        keep_checkpoints=40,
    ),
}


@dataclass
class RCDMRun:
    name: str
    run_dir: Path
    steps: int
    images_seen: int
    wall_time_s: float
    device: str
    smoke: bool
    stopped_early: bool = False


class _TimeUp(Exception):
    pass


def encoder_dir(runs_root: str | Path, run: EncoderRun) -> Path:
    """ROOT/<run>/encoder, checked to hold a finished recipe encoder."""
    path = Path(runs_root) / run / "encoder"
    if not (path / CARD_NAME).is_file():
        raise RCDMError(
            f"no finished encoder at {str(path)!r}: run `rcdm recipe ssl --objective "
            f"{'vicreg' if run == 'ssl' else 'supervised'} --out {Path(runs_root) / run}` first"
        )
    return path


def select_targets(only: list[str] | tuple[str, ...] | None) -> tuple[Target, ...]:
    if not only:
        return TARGETS
    names = {t.name: t for t in TARGETS}
    bad = [n for n in only if n not in names]
    if bad:
        raise RCDMError(f"unknown target(s) {bad}: choose from {', '.join(names)}")
    return tuple(names[n] for n in only)


def _train_folder(data: str | Path) -> Path:
    path = Path(data).expanduser()
    return path / "train" if (path / "train").is_dir() else path


def train_rcdms(
    recipe: RCDMRecipe,
    runs_root: str | Path,
    *,
    only: list[str] | tuple[str, ...] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> list[RCDMRun]:
    """Train each target RCDM with rcdm.train.train into ROOT/<name>, writing ROOT/<name>/recipe.json."""
    if recipe.preset not in PRESETS:
        raise RCDMError(f"unknown preset {recipe.preset!r}: choose one of {', '.join(PRESETS)}")
    root = Path(runs_root)
    runs = []
    for target in select_targets(only):
        enc = encoder_dir(root, target.encoder_run)
        enc_card = read_card(enc)
        run_dir = root / target.name
        cfg = TrainConfig(
            data=str(_train_folder(recipe.data)),
            encoder=f"rcdm-cifar:{enc.resolve()}",
            feature=target.feature,
            preset=recipe.preset,
            steps=recipe.steps,
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            loss=recipe.loss,
            ema_decay=recipe.ema_decay,
            save_every=recipe.save_every,
            num_workers=recipe.num_workers,
            seed=recipe.seed,
            standardize=recipe.standardize,
            keep_checkpoints=recipe.keep_checkpoints,
        )
        previous = (
            json.loads((run_dir / RECIPE_NAME).read_text()) if (run_dir / RECIPE_NAME).is_file() else {}
        )
        t0 = time.perf_counter()
        done = {"step": 0}

        def on_step(step: int, loss: float, t0: float = t0, done: dict = done) -> None:
            done["step"] = step
            budget = recipe.time_budget_s
            if budget is not None and step % recipe.save_every == 0 and time.perf_counter() - t0 > budget:
                raise _TimeUp

        stopped = False
        try:
            result = train(cfg, run_dir, resume=resume, progress=progress, on_step=on_step)
            steps = result.steps
        except _TimeUp:
            stopped, steps = True, done["step"]
            log.warning("%s: time budget reached; stopped at the checkpoint of step %d", target.name, steps)
        wall = float(previous.get("wall_time_s", 0.0)) + time.perf_counter() - t0
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        smoke = bool(recipe.smoke or recipe.preset == "tiny" or enc_card.get("smoke"))
        record = {
            "target": asdict(target),
            "recipe": asdict(recipe),
            "encoder_card": {k: enc_card.get(k) for k in ("name", "identity", "knn_accuracy", "smoke")},
            "steps": steps,
            "images_seen": steps * recipe.batch_size,
            "wall_time_s": wall,
            "device": device_name(device),
            "smoke": smoke,
            "stopped_early": stopped,
            "git_commit": git_commit(),
        }
        (run_dir / RECIPE_NAME).write_text(json.dumps(record, indent=2, default=str))
        runs.append(
            RCDMRun(
                target.name, run_dir, steps, steps * recipe.batch_size, wall, record["device"], smoke, stopped
            )
        )
    return runs


# --- pack ------------------------------------------------------------------------------------------


@dataclass
class PackResult:
    out_dir: Path
    total_bytes: int
    sizes: dict[str, int]  # bundle entry -> bytes
    smoke: bool
    notes: list[str] = field(default_factory=list)


def _folder_bytes(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def _model_dir(run_dir: Path) -> Path:
    if (run_dir / "model" / "config.json").is_file():
        return run_dir / "model"
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None and (ckpt / "ema" / "config.json").is_file():
        return ckpt / "ema"
    raise RCDMError(
        f"no trained model in {str(run_dir)!r}: run `rcdm recipe rcdm --runs {run_dir.parent}` first"
    )


def _problems(runs_root: Path, targets: tuple[Target, ...]) -> list[str]:
    """Why these runs would be undertrained (empty when all look like real runs)."""
    out = []
    for run in sorted({t.encoder_run for t in targets}):
        card = read_card(encoder_dir(runs_root, run))
        if card.get("smoke"):
            out.append(f"encoder {run} is a smoke run")
        knn = (card.get("knn_accuracy") or {}).get("backbone", 0.0)
        if knn < MIN_KNN_ACCURACY:
            out.append(f"encoder {run} has backbone k-NN accuracy {knn:.3f} < {MIN_KNN_ACCURACY}")
    for t in targets:
        rec_path = runs_root / t.name / RECIPE_NAME
        if not rec_path.is_file():
            raise RCDMError(
                f"{str(rec_path)!r} is missing: train it with `rcdm recipe rcdm --runs {runs_root}`"
            )
        if json.loads(rec_path.read_text()).get("smoke"):
            out.append(f"{t.name} is a smoke run")
    return out


@torch.no_grad()
def _fp16_cosine(net: torch.nn.Module, probe: torch.Tensor) -> float:
    """Min cosine similarity between features of `net` in fp32 and with weights rounded to fp16 (both in fp32)."""
    from ..encoders.rcdm_cifar import CifarEncoderNet, default_preprocessing

    assert isinstance(net, CifarEncoderNet)
    rounded = CifarEncoderNet(net.arch).eval()
    rounded.load_state_dict(
        {k: v.half().float() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    )
    x = default_preprocessing()(probe)
    h, hr = net.eval().backbone(x), rounded.backbone(x)
    sims = [F.cosine_similarity(h, hr).min()]
    if net.projector is not None and rounded.projector is not None:
        sims.append(F.cosine_similarity(net.projector(h), rounded.projector(hr)).min())
    return float(torch.stack(sims).min())


@torch.no_grad()
def _fp16_rcdm_error(model: RCDM) -> float:
    """Relative L2 error of the model output with fp16-rounded weights, on a fixed random input."""
    g = torch.Generator().manual_seed(0)
    size, dim = model.config.sample_size, model.config.representation_dim
    x = torch.randn(4, 3, size, size, generator=g)
    rep = torch.randn(4, dim, generator=g)
    t = torch.tensor([10, 250, 500, 900])
    ref = model(x, t, rep)
    rounded = RCDM.from_config(model.config)
    rounded.load_state_dict(
        {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    )
    out = rounded.eval()(x, t, rep)
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def _rcdm_readme(card: dict) -> str:
    lines = [
        f"# {card['name']}",
        "",
        *(["**SMOKE TEST: undertrained, for tests only; not the real model.**", ""] if card["smoke"] else []),
        f"An RCDM (preset `{card['preset']}`) conditioned on the {card['feature']} feature of the bundled encoder "
        f"`{card['encoder']}`, trained on the CIFAR-10 train split by `rcdm recipe rcdm`. Sample with "
        f"`rcdm sample --model PATH_TO_THIS_FOLDER --images ...`.",
        "",
        "| field | value |",
        "| --- | --- |",
        f"| steps / batch / images seen | {card['steps']} / {card['batch_size']} / {card['images_seen']} |",
        f"| wall time | {card['wall_time_s']:.0f} s on {card['device']} |",
        f"| stopped early (time budget) | {card['stopped_early']} |",
        f"| weights | {card['dtype']} (relative output error from fp16 rounding: {card['fp16_relative_error']:.2e}) |",
        f"| data license | {card['data_license']} |",
        f"| rcdm commit | {card['git_commit']} |",
        "",
    ]
    if card.get("metrics"):
        lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in card["metrics"].items()]
        lines.append("")
    else:
        lines += ["No metrics were given when this model was packed.", ""]
    return "\n".join(lines)


def pack(
    runs_root: str | Path,
    out_dir: str | Path,
    *,
    only: list[str] | tuple[str, ...] | None = None,
    metrics: dict[str, dict[str, Any]] | None = None,  # target name -> {metric name (labelled): value}
    allow_smoke: bool = False,
    max_mb: float = MAX_BUNDLE_MB,
    demo_images: list[Path] | tuple[Path, ...] = (),
    overwrite: bool = False,
    min_fp16_cosine: float = 0.999,  # encoders below this stay float32
    max_fp16_error: float = 1e-2,  # RCDMs above this relative output error stay float32
) -> PackResult:
    """Bundle the encoders and RCDMs of ROOT into OUT (written as a whole or not at all).

    OUT/<encoder name>/{encoder.safetensors, card.json, README.md}, OUT/<target>/{config.json,
    diffusion_pytorch_model.safetensors, card.json, README.md}, OUT/demo-inputs/*, OUT/bundle.json. The RCDMs'
    config names their encoder as `rcdm-cifar:<encoder name>` so that a bundle under rcdm/assets/models is
    found by name. Raises RCDMError for smoke runs (unless allow_smoke: then every card says so) and when the
    bundle exceeds `max_mb` MB (10**6 bytes).
    """
    root, out = Path(runs_root), Path(out_dir)
    targets = select_targets(only)
    metrics = dict(metrics or {})
    unknown = sorted(set(metrics) - {t.name for t in targets})
    if unknown:
        raise RCDMError(f"metrics given for {unknown}, which are not packed: use {[t.name for t in targets]}")
    problems = _problems(root, targets)
    if problems and not allow_smoke:
        raise RCDMError(
            f"refusing to bundle undertrained models ({'; '.join(problems)}): train with the full recipe, or pass "
            "--allow-smoke to pack them labelled as a smoke test"
        )
    smoke = bool(problems)
    encoders = {run: encoder_dir(root, run) for run in sorted({t.encoder_run for t in targets})}
    enc_names = {run: read_card(path)["name"] for run, path in encoders.items()}
    entries = [*enc_names.values(), *(t.name for t in targets), "bundle.json"]
    if demo_images:
        entries.append("demo-inputs")
    clash = [e for e in entries if (out / e).exists()]
    if clash and not overwrite:
        raise RCDMError(f"{str(out)!r} already holds {clash}: pass --overwrite or another --out")

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-pack-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        probe = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        notes: list[str] = []
        identities = {}
        for run, path in encoders.items():
            net, card = load_encoder_net(path)
            cos = _fp16_cosine(net, probe)
            dtype = torch.float16 if cos >= min_fp16_cosine else torch.float32
            if dtype == torch.float32:
                notes.append(f"encoder {enc_names[run]} kept in float32 (fp16 feature cosine {cos:.5f})")
            card = {
                **card,
                "smoke": smoke or bool(card.get("smoke")),
                "packed": {"from": str(path), "fp16_min_cosine": cos},
            }
            identities[run] = card["identity"]
            folder = save_encoder(net, tmp / enc_names[run], card, dtype=dtype)
            full = read_card(folder)
            (folder / "README.md").write_text(model_card_markdown(full))
        for t in targets:
            rec = json.loads((root / t.name / RECIPE_NAME).read_text())
            model = RCDM.from_pretrained(_model_dir(root / t.name)).eval()
            if model.config.encoder_identity != identities[t.encoder_run]:
                raise RCDMError(
                    f"{t.name} was trained on encoder {model.config.encoder_identity} but {encoders[t.encoder_run]} "
                    f"is {identities[t.encoder_run]}: retrain it with `rcdm recipe rcdm`"
                )
            err = _fp16_rcdm_error(model)
            half = err <= max_fp16_error
            if not half:
                notes.append(f"{t.name} kept in float32 (fp16 relative output error {err:.2e})")
            model.register_to_config(encoder=f"rcdm-cifar:{enc_names[t.encoder_run]}")
            (model.half() if half else model).save_pretrained(tmp / t.name)
            run_cfg = json.loads((root / t.name / "run.json").read_text())
            card = {
                "name": t.name,
                "kind": "rcdm",
                "encoder": enc_names[t.encoder_run],
                "feature": t.feature,
                "preset": run_cfg.get("preset"),
                "steps": rec["steps"],
                "batch_size": rec["recipe"]["batch_size"],
                "images_seen": rec["images_seen"],
                "wall_time_s": rec["wall_time_s"],
                "device": rec["device"],
                "stopped_early": rec.get("stopped_early", False),
                "smoke": smoke or bool(rec.get("smoke")),
                "dtype": "float16" if half else "float32",
                "fp16_relative_error": err,
                "metrics": metrics.get(t.name, {}),
                "train_config": run_cfg,
                "data_license": CIFAR_LICENSE,
                "git_commit": rec.get("git_commit"),
            }
            (tmp / t.name / "card.json").write_text(json.dumps(card, indent=2, default=str))
            (tmp / t.name / "README.md").write_text(_rcdm_readme(card))
        if demo_images:
            (tmp / "demo-inputs").mkdir()
            for p in demo_images:
                name = f"{Path(p).parent.name}-{Path(p).name}" if Path(p).parent.name else Path(p).name
                shutil.copyfile(p, tmp / "demo-inputs" / name)
        sizes = {e: _folder_bytes(tmp / e) for e in entries if e != "bundle.json"}
        index = {
            "smoke": smoke,
            "smoke_reasons": problems,
            "encoders": {enc_names[r]: {"objective": r, "bytes": sizes[enc_names[r]]} for r in encoders},
            "rcdms": {
                t.name: {"encoder": enc_names[t.encoder_run], "feature": t.feature, "bytes": sizes[t.name]}
                for t in targets
            },
            "notes": notes,
            "max_bytes": int(max_mb * 1e6),
        }
        (tmp / "bundle.json").write_text(json.dumps(index, indent=2))
        sizes["bundle.json"] = _folder_bytes(tmp / "bundle.json")
        total = sum(sizes.values())
        if total > max_mb * 1e6:
            listing = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items())
            raise RCDMError(
                f"the bundle is {total / 1e6:.2f} MB, over the {max_mb:g} MB limit ({listing}): train a smaller "
                "--preset (cifar32-small), pack fewer models (--only), or raise --max-mb"
            )
        for e in entries:
            if (out / e).exists():
                shutil.rmtree(out / e) if (out / e).is_dir() else (out / e).unlink()
            os.rename(tmp / e, out / e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PackResult(out, total, sizes, smoke, notes)
