"""The pack's measuring stages, which `scripts/cpu_pack.sh` and `scripts/gpu_demo_pack.sh` launch as
`rcdm recipe evaluate | samplers | findings` (docs/recipes.md, "The CPU pack").

- `evaluate_runs`: each RCDM run scored by `rcdm.pack.evaluation.score_model` on class-balanced CIFAR-10 test
  images: the model the bundle will hold (its checkpoint at `step`, else its final model, else its newest
  checkpoint) at each weight of `guidance` and at its own default guidance (`rcdm recipe guidance --record`, run
  first: the gates are read at each model's default), and every `curve_every`-th checkpoint at each weight of
  `curve_guidance` (the curves).
- `score_samplers`: the newest model of each run scored under each sampling setting, with its wall time.
- `findings`: the paper's findings 1-3 on an installed pack (`rcdm.analysis.findings`).

Scores land in METRICS/<target>/<tag>/score.json, which `rcdm.pack.gates.gate_metrics` reads: tag `final`,
`step-NNNNNNNN`, either with `-gW` for guidance W, or `sampler-<preset>[-gW]`. A tag already scored for the same
model folder is kept, so a stage run again after an interruption resumes; one stage writes METRICS at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import __version__
from ..analysis import adversarial, adversarial_figure, invariance, invariance_figure
from ..analysis.adversarial import DEFAULT_EPS, DEFAULT_PGD_STEPS
from ..analysis.findings import findings_tables
from ..bundle import ROLES, read_bundle
from ..data import files_digest
from ..diffusion import SAMPLING_PRESETS, SamplingConfig, sampling_preset
from ..encoders import Encoder
from ..errors import RCDMError
from ..files import write_text_atomic
from ..loading import encoder_for, load_model, recorded_sampling, weights_digest
from ..locks import output_lock
from ..runs import Checkpoints
from .evaluation import score_model
from .rcdms import TARGETS, packed_model, run_settings

log = logging.getLogger(__name__)

SCORE = "score.json"
# The augmentations the findings measure: the four VICReg trains with, and two it does not.
FINDING_AUGMENTATIONS = ("random_resized_crop", "hflip", "colour_jitter", "grayscale", "vflip", "invert")
# The attack finding 3 measures: untargeted L-inf PGD on the encoder's representation (rcdm.analysis.adversarial).
FINDING_ATTACK = {"eps": DEFAULT_EPS, "pgd_steps": DEFAULT_PGD_STEPS}


def tag(name: str, guidance: float) -> str:
    """An evaluation's folder name: `name` at guidance 1, `name-gW` otherwise."""
    return name if guidance == 1 else f"{name}-g{guidance:g}"


def score_into(
    folder: Path | None,
    model_dir: Path,
    judge: Encoder,
    images: Sequence[Path],
    sampling: SamplingConfig,
    *,
    extra: dict | None = None,
    num_samples: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict:
    """Score the model in `model_dir` once into folder/score.json (the `Score` record, the model folder and
    `extra`, e.g. a checkpoint's images seen); a folder already scored for this model on as many images and
    samples, with the same `extra` (a final model trained on since has another step), is read back instead.
    folder None: scored, nothing kept."""
    path = None if folder is None else folder / SCORE
    if path is not None and path.is_file():
        done = json.loads(path.read_text())
        same = all(done.get(k) == v for k, v in (extra or {}).items())
        if (
            done.get("model") == str(model_dir)
            and done.get("num_images") == len(images)
            and done.get("num_samples", 1) == num_samples
            and same
        ):
            return done
    model = load_model(model_dir, device=device)
    encoder = encoder_for(model).to(device)
    log.info("scoring %s (%s) on %d images", model_dir, sampling.describe(), len(images))
    score = score_model(model, encoder, judge, images, sampling, num_samples=num_samples, progress=progress)
    record = {**score.record(), "model": str(model_dir), **(extra or {})}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(record, indent=1) + "\n")
    return record


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate_runs` measures (the defaults of `rcdm recipe evaluate`)."""

    guidance: tuple[float, ...] = (1.0, 5.0)  # weights for the packed model
    curve_guidance: tuple[float, ...] = (1.0, 5.0)  # weights for the curve's checkpoints
    curve_every: int = 2000  # steps between the curve's checkpoints; 0: no curve
    sampling: SamplingConfig = SAMPLING_PRESETS["fast"]


def evaluate_runs(
    runs: str | Path,
    metrics: str | Path,
    images: Sequence[Path],
    judge: Encoder,
    plan: Evaluation = Evaluation(),
    *,
    only: Sequence[str] | None = None,
    step: int | None = None,
    steps: dict[str, int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[Path]:
    """Score every RCDM run under RUNS (see the module docstring); returns the folders scored. `step` (or
    `steps[target]`) names the checkpoint the bundle will hold instead of the final model."""
    runs, metrics = Path(runs), Path(metrics)
    scored: list[Path] = []
    for name, run in _runs(runs, only):
        # one lock per RCDM: evaluations of other RCDMs may run beside this one (scripts/cpu_pack.sh runs two)
        with output_lock(metrics / name, flag="--metrics", command="rcdm recipe evaluate"):
            at = (steps or {}).get(name, step)
            ckpts = Checkpoints(run)
            to_pack = _to_pack(run, at)
            if to_pack is not None:
                packed, tagged, extra = to_pack
                # and at its own default (`recipe guidance --record`): the gates are read there
                own = recorded_sampling(packed).get("guidance")
                for g in sorted({*plan.guidance, *([float(own)] if own else [])}):
                    folder = metrics / name / tag(tagged, g)
                    score_into(
                        folder,
                        packed,
                        judge,
                        images,
                        replace(plan.sampling, guidance=g),
                        extra=extra,
                        device=device,
                        progress=progress,
                    )
                    scored.append(folder)
            if plan.curve_every <= 0:
                continue
            for ckpt in ckpts.complete():
                n = ckpts.number(ckpt)
                if n % plan.curve_every:
                    continue
                for g in plan.curve_guidance:
                    folder = metrics / name / tag(ckpt.name, g)
                    score_into(
                        folder,
                        ckpt / "ema",
                        judge,
                        images,
                        replace(plan.sampling, guidance=g),
                        extra=_seen(run, n),
                        device=device,
                        progress=progress,
                    )
                    scored.append(folder)
    return scored


def _to_pack(run: Path, at: int | None) -> tuple[Path, str, dict] | None:
    """(model folder, evaluation name, {step, images seen}) of what `recipe pack` bundles for RUN
    (`packed_model`): checkpoint `at`, else the final model, else the newest checkpoint; None when nothing is
    trained yet."""
    try:
        model = packed_model(run, at)
    except RCDMError:
        if at is not None:
            raise
        return None
    if model == run / "model":
        # a finished run's final model is its last step's EMA: a point of the curve too
        return model, "final", _seen(run, run_settings(run)["steps"])
    return model, model.parent.name, _seen(run, Checkpoints(run).number(model.parent))


def _runs(runs: Path, only: Sequence[str] | None) -> Iterator[tuple[str, Path]]:
    """(name, folder) of the pack's RCDM runs under RUNS that exist (those in `only`, when given)."""
    for target in TARGETS:
        run = runs / target.name
        if (not only or target.name in only) and run.is_dir():
            yield target.name, run


def _seen(run: Path, step: int) -> dict:
    """A checkpoint's step and images seen (steps x the run's batch size, from RUN/run.json)."""
    return {"step": step, "images_seen": step * run_settings(run)["batch_size"]}


def parse_setting(text: str) -> tuple[str, float]:
    """'PRESET:GUIDANCE' (or 'PRESET', guidance 1) -> (preset, guidance), the preset checked."""
    preset, _, g = text.partition(":")
    try:
        sampling_preset(preset)
        guidance = float(g) if g else 1.0
    except (RCDMError, ValueError):
        raise RCDMError(f"--settings {text!r}: give PRESET:GUIDANCE, e.g. fast:5") from None
    return preset, guidance


def score_samplers(
    runs: str | Path,
    metrics: str | Path,
    images: Sequence[Path],
    judge: Encoder,
    settings: Sequence[tuple[str, float]],
    *,
    only: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[Path]:
    """Score the newest model of each run (final, else its newest checkpoint's EMA) under each (preset, guidance)
    into METRICS/<target>/sampler-<preset>[-gW]; a table measured on an older checkpoint is measured again."""
    runs, metrics = Path(runs), Path(metrics)
    scored: list[Path] = []
    for name, run in _runs(runs, only):
        with output_lock(metrics / name, flag="--metrics", command="rcdm recipe samplers"):
            to_pack = _to_pack(run, None)
            if to_pack is None:
                continue  # nothing trained yet
            model_dir, _, extra = to_pack
            for preset, g in settings:
                folder = metrics / name / tag(f"sampler-{preset}", g)
                score_into(
                    folder,
                    model_dir,
                    judge,
                    images,
                    replace(sampling_preset(preset), guidance=g),
                    extra=extra,
                    device=device,
                    progress=progress,
                )
                scored.append(folder)
    return scored


def findings(
    pack: str | Path,
    images: Sequence[Path],
    out: str | Path,
    *,
    sampling: SamplingConfig | None = None,
    num_samples: int = 2,
    parts: Sequence[str] = ("invariance", "adversarial", "table"),
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Path | None:
    """The paper's findings 1-3 on the pack installed at PACK: invariance of the VICReg backbone vs projector
    RCDM, PGD on the VICReg vs the supervised backbone RCDM; each part writes OUT/<part>/{results.json,
    figure.png}, and `table` writes OUT/tables.md from both (returned). sampling: default dpm++ 20 at the
    bundle's guidance, one weight for every model compared (`rcdm.bundle.Bundle.guidance`). A part whose
    results.json was measured on the same models' weights, images, sampling, augmentations or attack, and by the
    same rcdm release is kept, so a run cut short resumes after its last finished part (and an upgrade, whose
    analysis may measure otherwise, measures again)."""
    pack, out = Path(pack), Path(out)
    for role in ("backbone", "projector", "supervised"):
        if not (pack / ROLES[role][0] / "config.json").is_file():
            raise RCDMError(f"no {ROLES[role][0]} in {str(pack)!r}: give the folder of an installed pack")

    def load(role: str):
        model = load_model(pack / ROLES[role][0], device=device)
        return model, encoder_for(model).to(device)

    if sampling is None:  # guidance reads as invariance: the models compared share one weight
        sampling = replace(SAMPLING_PRESETS["fast"], guidance=read_bundle(pack).guidance)
    common = dict(num_samples=num_samples, sampling=sampling, progress=progress)

    def measured(part: str, roles: tuple[str, str]) -> dict | None:
        """What a part measures (its models' weights, the images, the sampling, the augmentations or the attack,
        the rcdm release that measured), recorded with its results; None when OUT/<part> already holds results
        measured so (a part run again after a later one was cut short)."""
        key = {
            "rcdm": __version__,
            "models": {role: weights_digest(pack / ROLES[role][0]) for role in roles},
            "images": files_digest(images),
            "num_images": len(images),
            "num_samples": num_samples,
            "sampling": sampling.record(),
            **({"augmentations": list(FINDING_AUGMENTATIONS)} if part == "invariance" else {}),
            **({"attack": FINDING_ATTACK} if part == "adversarial" else {}),
        }
        done = out / part / "results.json"
        if done.is_file() and json.loads(done.read_text()).get("measured") == key:
            log.info("%s: kept (measured on these models, images and sampling)", done)
            return None
        return key

    if "invariance" in parts and (key := measured("invariance", ("backbone", "projector"))) is not None:
        results = [
            invariance(
                *load(role), images, augmentations=FINDING_AUGMENTATIONS, label=ROLES[role][1], **common
            )
            for role in ("backbone", "projector")
        ]
        _write_part(out / "invariance", "invariance", results, invariance_figure(results), key)
    if "adversarial" in parts and (key := measured("adversarial", ("backbone", "supervised"))) is not None:
        results = [
            adversarial(*load(role), images, label=ROLES[role][1], **FINDING_ATTACK, **common)
            for role in ("backbone", "supervised")
        ]
        _write_part(out / "adversarial", "adversarial", results, adversarial_figure(results), key)
    if "table" not in parts:
        return None
    done = {}
    for part in ("invariance", "adversarial"):
        f = out / part / "results.json"
        if not f.is_file():
            raise RCDMError(f"no {f}: run the {part} part first")
        done[part] = json.loads(f.read_text())["results"]
    table = out / "tables.md"
    write_text_atomic(table, findings_tables(done["invariance"], done["adversarial"]))
    return table


def _write_part(folder: Path, analysis: str, results: list, figure, measured: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    figure.save(folder / "figure.png")
    record = {"analysis": analysis, "results": [r.summary() for r in results], "measured": measured}
    write_text_atomic(folder / "results.json", json.dumps(record, indent=2) + "\n")
