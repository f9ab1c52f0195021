"""The CIFAR-10 demo pack's RCDMs: three rcdm.train runs on the recipe encoders.

Run layout (one folder, ROOT):
    ROOT/ssl/encoder          `rcdm recipe ssl --objective vicreg --out ROOT/ssl`
    ROOT/supervised/encoder   `rcdm recipe ssl --objective supervised --out ROOT/supervised`
    ROOT/<target name>/       `rcdm recipe rcdm --runs ROOT`: one rcdm.train run per TARGETS entry + recipe.json
`rcdm.pack.write.pack` turns these into the bundle that ships them.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..bundle import CARD_NAME, ROLES, read_card
from ..devices import cpu_seconds, device_name, git_commit
from ..encoders import Feature
from ..errors import RCDMError
from ..loading import resolve_model_dir
from ..losses import LossType, LossWeighting, TimestepSampling
from ..model import PRESETS
from ..monitor import read_metrics
from ..runs import Checkpoints
from ..train import TrainConfig, check_time_budget, train

log = logging.getLogger(__name__)

EncoderRun = Literal["ssl", "supervised"]
MIN_KNN_ACCURACY = 0.5  # an encoder below this backbone k-NN accuracy on CIFAR-10 test counts as undertrained
RECIPE_NAME = "recipe.json"


@dataclass(frozen=True)
class Target:
    """One RCDM of the pack: its run / bundle folder name, which encoder run, and which feature."""

    name: str
    encoder_run: EncoderRun
    feature: Feature


# The three RCDMs, named as the demo's roles name them (rcdm.bundle.ROLES).
TARGETS: tuple[Target, ...] = (
    Target(ROLES["backbone"][0], "ssl", "backbone"),
    Target(ROLES["projector"][0], "ssl", "projector"),
    Target(ROLES["supervised"][0], "supervised", "backbone"),
)


@dataclass(frozen=True)
class RCDMRecipe:
    """Settings of `train_rcdms`; defaults are the GPU recipe (three runs side by side; docs/recipes.md).

    8,000 steps x 128 = 1.02M images seen (about 20 CIFAR-10 epochs) per RCDM.
    """

    data: str  # a CIFAR-10 root (its train/ split is used), or any image folder
    preset: str = "cifar32-small"  # cifar32 works too but three of them exceed the 30 MB bundle
    steps: int = 8000
    batch_size: int = 128
    lr: float = 2e-4
    loss: LossType = "hybrid"
    # the recipe knobs of `rcdm train` (docs/recipes.md, "Recipe A/B"); defaults: the published recipe
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    loss_weighting: LossWeighting = "none"
    snr_gamma: float = 5.0
    timestep_sampling: TimestepSampling = "uniform"
    warmup_steps: int = 0
    dropout: float = 0.0
    cond_drop: float = 0.0  # > 0: a learned null representation, so samples can use guidance (--guidance W)
    ema_decay: float = 0.999  # short runs: the published 0.9999 would average over too little training
    save_every: int = 500
    num_workers: int = 4
    seed: int = 0
    time_budget_s: float | None = None  # stop at the first checkpoint after this many seconds (a partial run)
    smoke: bool = False  # a tiny / test run: `pack` refuses it without allow_smoke
    standardize: bool = False  # standardise representations with the training set's statistics
    # more keeps the curve of a gate metric against images seen evaluable; 0: all (the run's steps / save_every + 1,
    # so that a run extended with a larger --steps keeps its whole curve)
    keep_checkpoints: int = 2
    compile: bool = False  # torch.compile the UNet: float rounding only; a resume may change it
    # a trained RCDM each new run starts from (`rcdm train --init-from`; scripts/cpu_pack.sh gives it per target)
    init_from: str | None = None


# RCDMRecipe's fields that are `rcdm train`'s recipe knobs, passed on to TrainConfig under the same names (and
# offered by `rcdm recipe rcdm` as `rcdm train` offers them)
RECIPE_KNOBS = ("prediction", "loss_weighting", "snr_gamma", "timestep_sampling", "warmup_steps", "dropout")

# Named settings over the dataclass defaults (the GPU recipe): `rcdm recipe rcdm --profile cpu`.
# cpu: one process per target on one core each (bf16 autocast on CPUs with native bf16); lr 5e-4, above the
# published 1e-4, for a CPU's short runs; standardised representations; condition dropout 0.1, so that
# samples can be guided; every 500-step checkpoint kept (the curve); v-prediction with Min-SNR-gamma weighting
# (gamma 5), the recipe A/B's lead: ahead of either alone on every measure at 64k images (the reasons, with
# measurements: docs/recipes.md, "The CPU pack" and "Recipe A/B").
RCDM_PROFILES: dict[str, dict[str, Any]] = {
    "gpu": {},
    "cpu": dict(
        steps=8000,
        batch_size=64,
        lr=5e-4,
        num_workers=0,
        standardize=True,
        cond_drop=0.1,
        save_every=500,
        keep_checkpoints=0,
        prediction="v_prediction",
        loss_weighting="min-snr",
    ),
}


@dataclass
class RCDMRun:
    name: str
    run_dir: Path
    steps: int
    images_seen: int
    wall_time_s: float  # all sessions of the run; counts time the process was stopped or starved
    device: str
    smoke: bool
    stopped_early: bool = False
    # CPU seconds (process + data workers, all threads) of steps cpu_time_from_step + 1 .. steps; > 0 when an
    # earlier session's CPU time is unknown (killed, or recorded before CPU time was)
    cpu_time_s: float = 0.0
    cpu_time_from_step: int = 0


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
    check_time_budget(recipe.time_budget_s)  # before the first target's set-up
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
            **{knob: getattr(recipe, knob) for knob in RECIPE_KNOBS},
            cond_drop=recipe.cond_drop,
            ema_decay=recipe.ema_decay,
            save_every=recipe.save_every,
            num_workers=recipe.num_workers,
            seed=recipe.seed,
            standardize=recipe.standardize,
            keep_checkpoints=recipe.keep_checkpoints or recipe.steps // recipe.save_every + 1,
            compile=recipe.compile,
            init_from=recipe.init_from,
        )
        previous = (
            json.loads((run_dir / RECIPE_NAME).read_text()) if (run_dir / RECIPE_NAME).is_file() else {}
        )
        t0, c0 = time.perf_counter(), cpu_seconds()
        done = {"step": 0}

        def on_step(step: int, loss: float, done: dict = done) -> None:
            done.setdefault("start", step - 1)  # the step this session resumed from
            done["step"] = step

        result = train(
            cfg,
            run_dir,
            resume=resume,
            progress=progress,
            on_step=on_step,
            time_budget_s=recipe.time_budget_s,
        )
        stopped, steps = result.stopped_early, result.steps
        if stopped:
            log.warning("%s: time budget reached; stopped at the checkpoint of step %d", target.name, steps)
        wall = float(previous.get("wall_time_s", 0.0)) + (time.perf_counter() - t0)
        # CPU time covers steps cpu_from + 1 .. steps: this session, plus the earlier ones when the previous
        # recipe.json recorded theirs and ends where this one started (a killed session leaves no record).
        start = done.get("start", steps)
        cpu, cpu_from = cpu_seconds() - c0, start
        if previous.get("cpu_time_s") is not None and previous.get("steps") == start:
            cpu += float(previous["cpu_time_s"])
            cpu_from = int(previous.get("cpu_time_from_step", 0))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        smoke = bool(recipe.smoke or recipe.preset == "tiny" or enc_card.get("smoke"))
        record = {
            "target": asdict(target),
            "recipe": asdict(recipe),
            "encoder_card": {k: enc_card.get(k) for k in ("name", "identity", "knn_accuracy", "smoke")},
            "steps": steps,
            "images_seen": steps * recipe.batch_size,
            "wall_time_s": wall,
            "cpu_time_s": cpu,
            "cpu_time_from_step": cpu_from,
            "device": device_name(device),
            "smoke": smoke,
            "stopped_early": stopped,
            "git_commit": git_commit(),
        }
        (run_dir / RECIPE_NAME).write_text(json.dumps(record, indent=2, default=str))
        runs.append(
            RCDMRun(
                target.name,
                run_dir,
                steps,
                steps * recipe.batch_size,
                wall,
                record["device"],
                smoke,
                stopped,
                cpu,
                cpu_from,
            )
        )
    return runs


def training_sessions(run_dir: Path) -> list[list[dict]]:
    """metrics.jsonl cut into training sessions. A resume drops the rows after its checkpoint and restarts the
    clock (rcdm.monitor), so a new session starts where elapsed_s falls (or the step does not increase)."""
    out: list[list[dict]] = []
    for row in read_metrics(run_dir):
        last = out[-1][-1] if out else None
        if last is None or row["step"] <= last["step"] or row.get("elapsed_s", 0) < last.get("elapsed_s", 0):
            out.append([])
        out[-1].append(row)
    return out


@dataclass(frozen=True)
class RunProgress:
    """Where one RCDM run stands against its planned steps, in CPU time (`rcdm recipe status`)."""

    target: str
    step: int  # the newest step metrics.jsonl logged (0: not started)
    planned_steps: int  # run.json's steps; for a run not started, the steps it was given
    cpu_s: float  # CPU seconds summed over its training sessions (work a kill lost after a checkpoint is not in it)
    cpu_s_per_step: float | None  # the recent rate (`recent_rate`; None: not started, or too few rows)
    started: bool

    def projected_cpu_s(self, rate: float | None) -> float | None:
        """CPU seconds at its planned steps: what it spent, and the steps left at its own rate, else at `rate`."""
        rate = self.cpu_s_per_step or rate
        if rate is None:
            return None if self.step < self.planned_steps else self.cpu_s
        return self.cpu_s + max(0, self.planned_steps - self.step) * rate


# the rate `rcdm recipe status` projects with: CPU seconds per step over the newest sessions that hold this many steps
RATE_STEPS = 500


def recent_rate(sessions: list[list[dict]], min_steps: int = RATE_STEPS) -> float | None:
    """CPU seconds per step over the newest training sessions, back until they hold `min_steps` steps (or all): the
    machine's speed now, yet not the few rows of a session just resumed. Within a session, from its first logged
    row (start-up is before it) to its last. None without two rows of one session."""
    cpu = steps = 0.0
    for seg in reversed(sessions):
        if (
            len(seg) < 2
            or "cpu_s" not in seg[0]
            or "cpu_s" not in seg[-1]
            or seg[-1]["step"] <= seg[0]["step"]
        ):
            continue
        cpu += float(seg[-1]["cpu_s"]) - float(seg[0]["cpu_s"])
        steps += seg[-1]["step"] - seg[0]["step"]
        if steps >= min_steps:
            break
    return cpu / steps if steps else None


def run_progress(run_dir: str | Path, target: str, planned_steps: int) -> RunProgress:
    """RunProgress of the run in RUN_DIR (`planned_steps` counts only for a run that has not started)."""
    run_dir = Path(run_dir)
    sessions = training_sessions(run_dir)  # none without a metrics.jsonl
    if not sessions:
        return RunProgress(target, 0, planned_steps, 0.0, None, started=False)
    cpu = sum(float(seg[-1].get("cpu_s", 0.0)) for seg in sessions)
    last = sessions[-1]
    rate = recent_rate(sessions)
    planned = int(run_settings(run_dir)["steps"]) if (run_dir / "run.json").is_file() else planned_steps
    return RunProgress(target, int(last[-1]["step"]), planned, cpu, rate, started=True)


def budget_table(runs_root: str | Path, steps: int, target_steps: dict[str, int], budget_cpu_h: float) -> str:
    """`rcdm recipe status`: a Markdown table of each RCDM run under RUNS_ROOT (steps, CPU hours spent, the last
    session's CPU seconds per step, CPU hours at its planned steps) and a line on the whole against the budget.
    A run not started yet is projected at `steps` (or its `target_steps` entry) and the started runs' mean rate."""
    runs = [run_progress(Path(runs_root) / t.name, t.name, target_steps.get(t.name, steps)) for t in TARGETS]
    rates = [r.cpu_s_per_step for r in runs if r.cpu_s_per_step]
    mean_rate = sum(rates) / len(rates) if rates else None
    hours = lambda s: "?" if s is None else f"{s / 3600:.2f}"  # noqa: E731
    lines = [
        f"| RCDM | step | planned | CPU h spent | CPU s per step (last {RATE_STEPS}+ steps) | CPU h at planned steps |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    projected = [r.projected_cpu_s(mean_rate) for r in runs]
    for r, total in zip(runs, projected, strict=True):
        rate = f"{r.cpu_s_per_step:.2f}" if r.cpu_s_per_step else ("not started" if not r.started else "?")
        lines.append(
            f"| {r.target} | {r.step} | {r.planned_steps} | {hours(r.cpu_s)} | {rate} | {hours(total)} |"
        )
    spent = sum(r.cpu_s for r in runs)
    whole = None if any(t is None for t in projected) else sum(projected)
    verdict = ""
    if whole is not None:
        over = whole / 3600 - budget_cpu_h
        verdict = f": {abs(over):.2f} CPU h {'over' if over > 0 else 'under'} it"
    lines += [
        "",
        f"spent {spent / 3600:.2f} CPU h; at the planned steps {hours(whole)} CPU h, against a budget of "
        f"{budget_cpu_h:g} CPU h ({budget_cpu_h / 2:g} hours of two cores){verdict}",
    ]
    waiting = [r.target for r in runs if not r.started]
    started = [total for r, total in zip(runs, projected, strict=True) if r.started]
    if waiting and mean_rate and all(t is not None for t in started):
        # what a run that has not started can still be given, for RCDM_TARGET_STEPS (scripts/cpu_pack.sh)
        left = budget_cpu_h * 3600 - sum(started)
        if left <= 0:
            lines.append(
                f"the started runs' planned steps use the whole budget: none left for {', '.join(waiting)}"
            )
        else:
            each = int(left / len(waiting) / mean_rate)
            lines.append(
                f"the budget leaves {left / 3600:.2f} CPU h for {', '.join(waiting)}: about {each} steps each at "
                f"the started runs' mean rate ({mean_rate:.2f} CPU s per step; "
                f'RCDM_TARGET_STEPS="{" ".join(f"{w}={each}" for w in waiting)}")'
            )
    return "\n".join(lines)


def packed_model(run_dir: str | Path, step: int | None = None) -> Path:
    """The model folder `recipe pack` bundles for a recipe run: checkpoint `step`'s EMA, else the final model,
    else (unfinished) the newest checkpoint's EMA; one line naming what exists when there is none."""
    run_dir = Path(run_dir)
    if step is None:
        try:
            return resolve_model_dir(run_dir)
        except RCDMError:
            raise RCDMError(
                f"no trained model in {str(run_dir)!r}: run `rcdm recipe rcdm --runs {run_dir.parent}` first"
            ) from None
    model = run_dir / "checkpoints" / f"step-{step:08d}" / "ema"
    if not (model.parent / "state.json").is_file() or not (model / "config.json").is_file():
        ckpts = Checkpoints(run_dir)
        have = [ckpts.number(p) for p in ckpts.complete()]
        raise RCDMError(
            f"{run_dir.name} has no complete checkpoint at step {step}: choose one of {have or 'none'}"
        )
    return model


def trained_steps(run_dir: str | Path) -> int:
    """The steps a recipe run's final model (RUN/model) is trained to, from the record of the session that wrote it
    (recipe.json); 0 while there is none. A session stopped by its time budget writes no model/, so after one the
    model/ there (if any) is older than the record: 0 too, and a resume with --steps decides. `scripts/cpu_pack.sh`
    asks this whether a run is done."""
    run_dir = Path(run_dir)
    if not (run_dir / "model" / "config.json").is_file() or not (run_dir / RECIPE_NAME).is_file():
        return 0
    record = json.loads((run_dir / RECIPE_NAME).read_text())
    return 0 if record.get("stopped_early") else int(record.get("steps", 0))


def run_settings(run_dir: Path) -> dict:
    """RUN/run.json, the settings `rcdm train` recorded; a folder without one is not a training run."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise RCDMError(
            f"{str(run_dir)!r} holds no run.json, so it is not a training run: --runs takes the ROOT that "
            "`rcdm recipe rcdm --runs ROOT` trained into (ROOT/<target>/run.json)"
        )
    return json.loads(path.read_text())


def run_record(run_dir: str | Path, step: int | None = None) -> tuple[Path, dict]:
    """The model of a recipe run to pack (`packed_model`) and its record (recipe.json's fields), at checkpoint
    `step` or its newest.

    recipe.json is written when a training session ends; a session that was killed (a machine handed back)
    leaves none, and a run packed at an earlier checkpoint must not carry the record of a later step. Then the
    record is rebuilt from run.json and metrics.jsonl: wall and CPU time are summed over the sessions up to
    `step`, and `planned_steps` says where it was going. So is the record of a run finished by a resumed session,
    which holds that session's time only. Work a kill lost after the last checkpoint is not counted: the resume
    dropped its rows.
    """
    run_dir = Path(run_dir)
    saved = json.loads((run_dir / RECIPE_NAME).read_text()) if (run_dir / RECIPE_NAME).is_file() else {}

    @functools.cache
    def run_config() -> dict:  # run.json, read once and only where recipe.json does not answer
        return run_settings(run_dir)

    model = packed_model(run_dir, step)
    if step is None and model == run_dir / "model":  # a finished run: its record, else its planned steps
        step = int(saved.get("steps") or run_config()["steps"])
    elif step is None:
        step = int(json.loads((model.parent / "state.json").read_text())["step"])
    if saved.get("steps") == step and not saved.get("cpu_time_from_step"):
        return model, saved
    # Rebuilt: an earlier checkpoint, no record, or a record of the resumed session alone (its time since
    # `cpu_time_from_step`), which would understate the run's time on the card.
    cfg = run_config()
    wall = cpu = 0.0
    cpu_known = True
    for seg in training_sessions(run_dir):
        done = [r for r in seg if r["step"] <= step]
        if done:
            wall += float(done[-1]["elapsed_s"])
            cpu_known = cpu_known and "cpu_s" in done[-1]
            cpu += float(done[-1].get("cpu_s", 0.0))
    record = {
        **{k: saved[k] for k in ("target", "recipe", "encoder_card", "git_commit") if k in saved},
        "steps": step,
        "planned_steps": cfg["steps"],
        "images_seen": step * cfg["batch_size"],
        "batch_size": cfg["batch_size"],
        "wall_time_s": wall,
        "cpu_time_s": cpu if cpu_known else None,
        "cpu_time_from_step": 0,
        "device": saved.get("device")
        or f"{device_name(torch.device('cpu'))}, the packing machine (not recorded)",
        "smoke": bool(saved.get("smoke", cfg.get("preset") == "tiny")),
        "stopped_early": step < cfg["steps"],
        "rebuilt_from": "run.json + metrics.jsonl",
    }
    return model, record
