"""The CIFAR-10 pack's gates: its evaluation folders -> the labelled metrics `rcdm recipe pack --metrics` puts on
cards (`rcdm recipe metrics`; `rcdm recipe evaluate` prints them when it is done), or as the README's tables
(`markdown`, `rcdm recipe metrics --markdown`).

METRICS_DIR/<target>/<tag>/score.json (`rcdm.pack.stages`), where tag is `final`, `final-g<W>` (the final model
sampled with guidance W) or a checkpoint `step-NNNNNNNN[-g<W>]`. Output: {target: {labelled metric: value, ...,
"curve": "images seen: rank-1 / agreement; ..."}} with the labelled numbers of the final model (else the newest
checkpoint; with a step, the checkpoint `recipe pack --step STEP` packs; a TARGET=STEP sets it for one target, as
`--step TARGET=STEP` does), those of each of its guided runs, and a curve over checkpoints (and the final model)
per sampling, with its trend against the gates: the least-squares line of each gate metric against log2(images
seen), its gain per doubling and where the line would meet the gate (an extrapolation, labelled as one).
METRICS_DIR/<target>/sampler-<preset>[-g<W>]/ (`rcdm recipe samplers`) hold the same scores on a subset with each
sampling setting and its wall time: they become "sampler table" rows. Gates (issue 26's, for the pack trained
with the CPU profile's recipe; the first pack's were 0.60 and 0.05): backbone models' class agreement >= 0.70 and
rank-1 among 1,000 >= 0.10 under the ResNet-56 judge, each model at its own default sampling.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

from ..bundle import ROLES
from ..errors import RCDMError
from ..loading import recorded_sampling, recorded_start
from .rcdms import TARGETS
from .stages import SCORE

GATES = {"agreement": ("class agreement", 0.70), "top1": ("rank-1 retrieval", 0.10)}  # backbone models' gates
STEP = re.compile(r"step-(\d+)(?:-g(.+))?")  # a checkpoint's tag: step-NNNNNNNN, or step-NNNNNNNN-gW (guided)


def read(tag_dir: Path) -> dict:
    """One evaluation folder's score.json (`rcdm.pack.stages.score_into`) in the gates' words; {} if not scored."""
    path = tag_dir / SCORE
    if not path.is_file():
        return {}
    s = json.loads(path.read_text())
    guidance = s.get("guidance") or 1
    return {
        "sampling": f"{s['sampler']} {s['steps']}" + (f", guidance {guidance:g}" if guidance != 1 else ""),
        "images": s["num_images"],
        "top1": s["rank1"],
        "agreement": s.get("class_agreement"),
        "mean_rank": s["mean_rank"],
        "own_top1": s.get("own_rank1"),
        "frechet": s.get("frechet"),
        "images_seen": s.get("images_seen"),
        "step": s.get("step"),
        "guidance": float(guidance),
        "wall_s": s.get("wall_s"),
        "model": s.get("model", ""),
    }


def labelled(m: dict, n: str) -> dict:
    """The numbers of one evaluation, labelled with what they were measured on: its own image count (`n` only for
    a record without one; `recipe samplers`, which scores 200 images, rewrites the metrics of the 1,000-image
    evaluations too)."""
    n = str(m.get("images") or n)
    judge = (
        f"on {n} class-balanced CIFAR-10 test images, 1 sample each ({m.get('sampling')}), judged by CIFAR "
        "ResNet-56"
    )
    return {
        f"rank-1 retrieval {judge} (chance {1 / int(n):.4f})": m.get("top1"),
        f"class agreement {judge}": m.get("agreement"),
        f"mean rank {judge} (chance {(int(n) + 1) / 2})": m.get("mean_rank"),
        f"rank-1 under the conditioning encoder ({m.get('sampling')})": m.get("own_top1"),
        f"Frechet distance in CIFAR ResNet-56 features, {n} samples ({m.get('sampling')}) vs {n} test images "
        "(not FID)": m.get("frechet"),
    }


def _samplers(target: Path) -> list[tuple[dict, int | None]]:
    """A target's scored sampler-table runs, each with the checkpoint step it was measured on (None: the final
    model)."""
    runs = []
    for d in sorted(target.glob("sampler-*")):
        m = read(d)
        if m:
            on = re.search(r"step-(\d+)", m["model"])
            runs.append((m, int(on.group(1)) if on else None))
    return runs


def sampler_rows(target: Path) -> str:
    """One row per sampling setting measured on the same images: faithfulness and wall time per image."""
    return "; ".join(
        f"{m['sampling']}: {m['top1']:.3f} / {m.get('agreement') or float('nan'):.3f} / "
        f"{m['wall_s'] / m['images']:.2f}" + (f" (step-{step:08d})" if step is not None else "")
        for m, step in _samplers(target)
    )


def _line(points: list[tuple[int, float]]) -> statistics.LinearRegression | None:
    """The least-squares line of a metric against log2(images seen), unscored points left out; None under two
    distinct points."""
    points = [(seen, v) for seen, v in points if v is not None and not math.isnan(v)]
    if len({seen for seen, _ in points}) < 2:
        return None
    return statistics.linear_regression([math.log2(seen) for seen, _ in points], [v for _, v in points])


def trend(points: list[tuple[int, float]], gate: float) -> str | None:
    """The least-squares line of a metric against log2(images seen): its gain per doubling of images seen and the
    images seen at which the line reaches `gate`. Needs two points; an extrapolation, and labelled as one."""
    points = [(seen, v) for seen, v in points if v is not None and not math.isnan(v)]
    fit = _line(points)
    if fit is None:
        return None
    per_doubling = f"{fit.slope:+.3f} per doubling of images seen ({len(points)} checkpoints)"
    if max(v for _, v in points) >= gate:
        return per_doubling + f"; at or above {gate:g} already"
    if fit.slope <= 0:
        return per_doubling + f"; no gain, so no estimate of where it reaches {gate:g}"
    reach = 2 ** ((gate - fit.intercept) / fit.slope)

    def sig2(v: float) -> str:  # two significant figures (0.65, 4.4, 45), whole numbers from 100 on
        return f"{v:.2g}" if v < 100 else f"{v:.0f}"

    where = (
        "over 1000G"
        if reach >= 1e12
        else f"about {sig2(reach / 1e9)}G"
        if reach >= 1e9
        else f"about {sig2(reach / 1e6)}M"
    )
    return per_doubling + f"; the line reaches {gate:g} at {where} images seen (extrapolated)"


def _scored(target: Path) -> dict[str, dict]:
    """A target's evaluations other than the sampler table's, by tag (unscored folders give {})."""
    return {t.name: read(t) for t in target.iterdir() if t.is_dir() and not t.name.startswith("sampler-")}


def _packed(tags: dict[str, dict], step: int | None) -> list[dict]:
    """The evaluations of the model the bundle holds: checkpoint `step`, else the final model, else (no step
    given) the newest scored checkpoint; its plain evaluation first, then its guided ones. [] when the packed
    model is not scored (an unevaluated step: no gate numbers, rather than another checkpoint's)."""
    if step is not None:
        packed = f"step-{step:08d}"
    elif tags.get("final") or any(t.startswith("final-g") and tags[t] for t in tags):
        packed = "final"
    else:
        plain = sorted(t for t in tags if STEP.fullmatch(t) and not STEP.fullmatch(t).group(2) and tags[t])
        packed = plain[-1] if plain else "final"
    guided = sorted(
        (t for t in tags if t.startswith(f"{packed}-g") and tags[t]), key=lambda t: tags[t]["guidance"]
    )
    return [tags[t] for t in [packed, *guided] if tags.get(t)]


def _curves(tags: dict[str, dict]) -> dict[str, list[tuple[int, dict]]]:
    """One curve per sampling setting, in order of images seen; the final model is a point where it records its
    images seen and no checkpoint of the same step was scored the same way."""
    steps = sorted(t for t in tags if STEP.fullmatch(t) and tags[t])
    finals = [t for t in tags if (t == "final" or t.startswith("final-g")) and tags[t]]
    curves: dict[str, list[tuple[int, dict]]] = {}
    for t in [*steps, *finals]:
        seen, sampling = tags[t].get("images_seen"), tags[t]["sampling"]
        if seen and all(s != seen for s, _ in curves.get(sampling, [])):
            curves.setdefault(sampling, []).append((seen, tags[t]))
    for points in curves.values():
        points.sort(key=lambda p: p[0])
    return curves


def _targets(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def gate_metrics(
    root: Path, n: str, step: int | None = None, per_target: dict[str, int] | None = None
) -> dict:
    result: dict = {}
    for target in _targets(root):
        tags = _scored(target)
        m: dict = {}
        for record in _packed(tags, (per_target or {}).get(target.name, step)):
            m.update(labelled(record, n))
        for sampling, points in _curves(tags).items():
            m[f"curve (images seen: rank-1 / class agreement; {sampling}; ResNet-56 judge)"] = "; ".join(
                f"{seen}: {e.get('top1', float('nan')):.3f} / {e.get('agreement') or float('nan'):.3f}"
                for seen, e in points
            )
            for key, (name, gate) in GATES.items():
                m[f"trend of {name} ({sampling}; ResNet-56 judge) against log2(images seen)"] = trend(
                    [(seen, e.get(key)) for seen, e in points], gate
                )
        samplers = sampler_rows(target)
        if samplers:
            m["sampler table (setting: rank-1 / class agreement / s per image, CPU)"] = samplers
        result[target.name] = {k: v for k, v in m.items() if v is not None}
    return result


def _num(v: float | None, digits: int = 3) -> str:
    return "" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def _against(value: float, gate: float) -> str:
    return f"gate {gate:g}: met" if value >= gate else f"gate {gate:g}: missed by {gate - value:.3f}"


def markdown(root: Path, step: int | None = None, per_target: dict[str, int] | None = None) -> str:
    """The pack's numbers as README tables (`rcdm recipe metrics --markdown`): each RCDM's packed model under every
    guidance scored, its own default sampling marked (the one `recipe guidance --record` wrote into its config;
    guidance 1 without one), where the backbone models stand against the gates there, the guidance sweep each
    default was chosen by (recorded in the config too), the curves against images seen, and the sampler table.
    Read from the evaluation folders (and the scored models' configs, for their defaults), so a README table
    cannot drift from what was measured."""
    labels = dict(ROLES.values())
    features = {t.name: t.feature for t in TARGETS}
    gate_rows, gaps, curve_cols, sampler_lines, sweep_rows, chosen, starts = [], [], {}, [], [], [], []
    n = None
    for target in _targets(root):
        tags = _scored(target)
        label = labels.get(target.name, target.name)
        packed = _packed(tags, (per_target or {}).get(target.name, step))
        # the packed model's recorded sampling (its default and the sweep that chose it): every packed record is
        # one model folder, read once
        sweep = recorded_sampling(Path(packed[0]["model"]).expanduser()) if packed else {}
        for m in sweep.get("measured", []):
            g = f"{m['guidance']:g}"
            sweep_rows.append(
                f"| {label} | {f'**{g}**' if m['guidance'] == sweep.get('guidance') else g} | "
                f"{_num(m.get('class_agreement'))} | {_num(m.get('rank1'))} | {_num(m.get('mean_rank'), 1)} | "
                f"{_num(m.get('frechet'), 2)} | {_num(m.get('diversity'), 4)} | {_num(m.get('pixel_spread'))} |"
            )
        if sweep.get("measured"):
            chosen.append(f"- {label}: guidance {sweep['guidance']:g}, {sweep.get('chosen_by', '')}")
        start = recorded_start(Path(packed[0]["model"]).expanduser()) if packed else {}
        if start:
            # named by its folder, or by its run for a run's model/ (no machine path in a README)
            source = Path(str(start.get("model")))
            starts.append(
                f"- {label}: started from `{source.parent.name if source.name == 'model' else source.name}` "
                "(`rcdm train --init-from`: its UNet, "
                f"{len(start.get('fresh') or [])} tensors from random weights), so its images seen are its own "
                "run's only, not those its start had seen"
            )
        for record in packed:
            n = n or record["images"]
            at = f"{record['step']:,}" if record.get("step") else "final"
            default = " (its default)" if record["guidance"] == float(sweep.get("guidance", 1.0)) else ""
            gate_rows.append(
                f"| {label} ({at}) | {record['sampling']}{default} | {_num(record['agreement'])} | "
                f"{_num(record['top1'])} | {_num(record['mean_rank'], 1)} | {_num(record['frechet'], 2)} |"
            )
            if default and features.get(target.name) == "backbone":
                stands = [
                    f"{name} {_num(record[key])} ({_against(record[key], gate)})"
                    for key, (name, gate) in GATES.items()
                    if record.get(key) is not None
                ]
                gaps.append(f"- {label} at its default ({record['sampling']}): " + "; ".join(stands))
        for sampling, points in sorted(_curves(tags).items(), key=lambda c: c[1][0][1]["guidance"]):
            curve_cols[f"{label}, {sampling}"] = {seen: e for seen, e in points}
        for m, on in _samplers(target):
            sampler_lines.append(
                f"| {label}" + (f" (step {on:,})" if on is not None else "") + f" | {m['sampling']} | "
                f"{_num(m['agreement'])} | {_num(m['top1'])} (chance {1 / m['images']:.3f}) | "
                f"{m['wall_s'] / m['images']:.2f} |"
            )
    out = []
    if gate_rows:
        chance = f"; chance {1 / n:.3f}" if n else ""
        gates = {key: f"gate ≥ {gate:g}, backbone models" for key, (_, gate) in GATES.items()}
        out += [
            f"| RCDM (step) | sampling | class agreement ({gates['agreement']}) | rank-1 among {n} "
            f"({gates['top1']}{chance}) | mean rank (chance {(n + 1) / 2:g}) | Fréchet distance in ResNet-56 "
            "features (not FID) |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
            *gate_rows,
            "",
            *gaps,
        ]
    if sweep_rows:
        out += [
            "",
            "| RCDM | guidance (chosen in bold) | class agreement | rank-1 | mean rank | Fréchet (judge) | diversity "
            "(judge cosine) | pixel spread |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *sweep_rows,
            "",
            *chosen,
        ]
    if curve_cols:
        seen_all = sorted({seen for col in curve_cols.values() for seen in col})
        out += [
            "",
            "| images seen | " + " | ".join(curve_cols) + " |",
            "| ---: |" + " --- |" * len(curve_cols),
        ]
        for seen in seen_all:
            cells = [
                f"{_num(col[seen]['agreement'])} / {_num(col[seen]['top1'])}" if seen in col else ""
                for col in curve_cols.values()
            ]
            out.append(f"| {seen // 1000:,}k | " + " | ".join(cells) + " |")
        slopes = []
        for col in curve_cols.values():
            fit = _line([(seen, e.get("agreement")) for seen, e in col.items()])
            slopes.append("" if fit is None else f"{fit.slope:+.3f}")
        out.append("| class agreement per doubling (least squares) | " + " | ".join(slopes) + " |")
        out.append("")
        out.append("Cells: class agreement / rank-1, each point its checkpoint's EMA weights.")
        if starts:
            out += ["", *starts]
    if sampler_lines:
        out += [
            "",
            "| RCDM | sampling | class agreement | rank-1 | s per image (CPU) |",
            "| --- | --- | ---: | ---: | ---: |",
            *sampler_lines,
        ]
    return "\n".join(out).strip("\n") + "\n" if out else ""


def parse_steps(values: list[str], flag: str = "--step") -> tuple[int | None, dict[str, int]]:
    """FLAG's values -> (the step for every RCDM or None, {target: step}); a bad value names itself and the form."""
    step: int | None = None
    steps: dict[str, int] = {}
    for value in values:
        target, _, number = value.rpartition("=")
        if not number.strip().isdigit() or (target == "" and "=" in value):
            raise RCDMError(f"{flag} {value!r}: give a step N or TARGET=N, e.g. {flag} 7000")
        n = int(number)
        if n < 1:
            raise RCDMError(f"{flag} {n} must be at least 1")
        if not target and step is not None:
            raise RCDMError(f"{flag} {step} and {flag} {n}: give one plain step (others as TARGET=N)")
        if target in steps:
            raise RCDMError(f"{flag} for {target} given twice ({steps[target]} and {n}): give it once")
        if target:
            steps[target] = n
        else:
            step = n
    return step, steps
