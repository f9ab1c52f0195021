"""The CIFAR-10 pack's gates: its evaluation folders -> the labelled metrics `rcdm recipe pack --metrics` puts on
cards (`rcdm recipe metrics`; `rcdm recipe evaluate` prints them when it is done).

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

from ..errors import RCDMError
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


def sampler_rows(target: Path) -> str:
    """One row per sampling setting measured on the same images: faithfulness and wall time per image."""
    rows = []
    for d in sorted(target.glob("sampler-*")):
        m = read(d)
        if not m:
            continue
        per_image = m["wall_s"] / m["images"]
        on = re.search(r"step-\d+", m["model"])  # measured on a checkpoint, not the final model
        rows.append(
            f"{m['sampling']}: {m['top1']:.3f} / {m.get('agreement') or float('nan'):.3f} / {per_image:.2f}"
            + (f" ({on.group(0)})" if on else "")
        )
    return "; ".join(rows)


def trend(points: list[tuple[int, float]], gate: float) -> str | None:
    """The least-squares line of a metric against log2(images seen): its gain per doubling of images seen and the
    images seen at which the line reaches `gate`. Needs two points; an extrapolation, and labelled as one."""
    points = [(seen, v) for seen, v in points if v is not None and not math.isnan(v)]
    if len({seen for seen, _ in points}) < 2:
        return None
    fit = statistics.linear_regression([math.log2(seen) for seen, _ in points], [v for _, v in points])
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


def gate_metrics(
    root: Path, n: str, step: int | None = None, per_target: dict[str, int] | None = None
) -> dict:
    result: dict = {}
    for target in sorted(p for p in root.iterdir() if p.is_dir()):
        step_here = (per_target or {}).get(target.name, step)
        tags = {t.name: read(t) for t in target.iterdir() if t.is_dir() and not t.name.startswith("sampler-")}
        steps = sorted(t for t in tags if STEP.fullmatch(t) and tags[t])
        plain = [t for t in steps if not STEP.fullmatch(t).group(2)]
        packed = "final" if step_here is None else f"step-{step_here:08d}"  # the model the bundle holds
        best = tags.get(packed) or ({} if step_here is not None else tags[plain[-1]] if plain else {})
        m = labelled(best, n) if best else {}
        for tag in sorted(t for t in tags if t.startswith(f"{packed}-g") and tags[t]):
            m.update(labelled(tags[tag], n))
        curves: dict[str, list[tuple[int, dict]]] = {}
        # one curve per sampling setting, in order of images seen; the final model is a point where it records
        # its images seen and no checkpoint of the same step was scored the same way
        finals = [t for t in tags if (t == "final" or t.startswith("final-g")) and tags[t]]
        for t in [*steps, *finals]:
            seen, sampling = tags[t].get("images_seen"), tags[t]["sampling"]
            if seen and all(s != seen for s, _ in curves.get(sampling, [])):
                curves.setdefault(sampling, []).append((seen, tags[t]))
        for points in curves.values():
            points.sort(key=lambda p: p[0])
        for sampling, points in curves.items():
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


def parse_steps(values: list[str]) -> tuple[int | None, dict[str, int]]:
    """--step values -> (the step for every RCDM or None, {target: step}); a bad value names itself and the form."""
    step: int | None = None
    steps: dict[str, int] = {}
    for value in values:
        target, _, number = value.rpartition("=")
        if not number.strip().isdigit() or (target == "" and "=" in value):
            raise RCDMError(f"--step {value!r}: give a checkpoint step N or TARGET=N, e.g. --step 7000")
        n = int(number)
        if n < 1:
            raise RCDMError(f"--step {n} must be at least 1")
        if not target and step is not None:
            raise RCDMError(f"--step {step} and --step {n}: give one plain step (others as TARGET=N)")
        if target in steps:
            raise RCDMError(f"--step for {target} given twice ({steps[target]} and {n}): give it once")
        if target:
            steps[target] = n
        else:
            step = n
    return step, steps
