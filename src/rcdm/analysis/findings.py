"""The paper's findings 1-4 judged against measured numbers: the verdicts the demo page shows (`findings`) and
the tables with standard errors that `rcdm recipe findings` writes for the README (`findings_tables`).

Numbers come from the invariance analysis of a backbone and a projector RCDM (retention per augmentation) and the
adversarial analysis of an SSL and a supervised RCDM (relative representation shift under the same PGD).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

RETAINED = 0.5  # mean retention at or above which a model's samples are said to keep an augmentation


def verdict(hits: int, total: int) -> str:
    if total == 0:
        return "undefined"
    return "yes" if hits == total else "no" if hits == 0 else "partly"


def findings(numbers: dict) -> list[dict]:
    """The paper's findings 1-3 next to what was measured, with a verdict each: yes, partly, no, or undefined
    (no number to judge by). Finding 4 (interpolation) is a picture; no number judges it.

    numbers: {"invariance": {"backbone": summary, "projector": summary}, "adversarial": {"ssl": summary,
    "supervised": summary}}, the `summary()` records of the analyses.
    """
    inv, adv = numbers["invariance"], numbers["adversarial"]
    ret = {
        role: {r["augmentation"]: r["retention"] for r in inv[role]["augmentations"]}
        for role in ("backbone", "projector")
    }
    both = [a for a, r in ret["backbone"].items() if r is not None and ret["projector"].get(a) is not None]
    kept = [a for a in both if ret["backbone"][a] >= RETAINED]
    lower = [a for a in both if ret["projector"][a] < ret["backbone"][a]]
    ssl, sup = adv["ssl"]["relative_shift"], adv["supervised"]["relative_shift"]
    flips = adv["supervised"].get("label_flip_rate")

    def pairs(names: list[str]) -> str:
        return ", ".join(f"{a} {ret['backbone'][a]:.2f} / {ret['projector'][a]:.2f}" for a in names) or "none"

    return [
        {
            "finding": 1,
            "paper": "backbone representations keep the augmentations SSL trains with",
            "measured": f"backbone retention >= {RETAINED} for {len(kept)} of {len(both)} augmentations "
            f"({', '.join(kept) or 'none'}); retention backbone / projector: {pairs(both)}",
            "agrees": verdict(len(kept), len(both)),
        },
        {
            "finding": 2,
            "paper": "projector embeddings are largely invariant to them",
            "measured": f"projector retention below the backbone's for {len(lower)} of {len(both)} augmentations "
            f"({', '.join(lower) or 'none'})",
            "agrees": verdict(len(lower), len(both)),
        },
        {
            "finding": 3,
            "paper": "SSL representations move less than supervised ones under a small adversarial perturbation",
            "measured": f"relative representation shift under the same PGD: SSL {ssl:.3f}, supervised {sup:.3f}"
            + ("" if flips is None else f"; the supervised classifier's label flip rate {flips:.2f}"),
            "agrees": "yes" if ssl < sup else "no",
        },
        {
            "finding": 4,
            "paper": "interpolating two representations gives a gradual path of images",
            "measured": "see the interpolation figure (frame change per step in results.json)",
            "agrees": "not judged by a number",
        },
    ]


def mean_se(values: Iterable) -> str:
    """'mean ± standard error' over the finite values, 'n/a' when there are none."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return "n/a"
    m = sum(v) / len(v)
    se = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v)) if len(v) > 1 else float("nan")
    return f"{m:.2f} ± {se:.2f}"


def _per_image(row: dict, key: str) -> list:
    return [d[key] for d in row["per_image"].values()]


def findings_tables(invariance: list[dict], adversarial: list[dict]) -> str:
    """Markdown: invariance per augmentation (backbone, projector), the PGD shift (SSL, supervised), each a mean
    with its standard error over images, and the verdicts of `findings`.

    invariance: the two `InvarianceResult.summary()` records, backbone then projector; adversarial: the two
    `AdversarialResult.summary()` records, SSL then supervised.
    """
    backbone, projector = invariance
    ssl, supervised = adversarial
    n_inv, n_adv = len(backbone["images"]), len(ssl["per_image"])
    out = [
        f"Invariance, {n_inv} CIFAR-10 test images (mean ± standard error over images):",
        "",
        "| augmentation | retention, backbone | retention, projector | relative shift, backbone | relative shift, "
        "projector |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for b, p in zip(backbone["augmentations"], projector["augmentations"], strict=True):
        cells = [mean_se(_per_image(r, k)) for k in ("retention", "relative_shift") for r in (b, p)]
        out.append(f"| {b['augmentation']} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    flips = supervised.get("label_flip_rate")
    out += [
        "",
        f"Untargeted PGD (eps {ssl['eps'] * 255:.0f}/255), {n_adv} images: relative representation shift, VICReg "
        f"{mean_se(_per_image(ssl, 'relative_shift'))}, supervised "
        f"{mean_se(_per_image(supervised, 'relative_shift'))}"
        + ("" if flips is None else f"; the supervised classifier's label flip rate {flips:.2f}")
        + ".",
        "",
        "| # | the paper | measured | agrees |",
        "| --- | --- | --- | --- |",
    ]
    numbers = {
        "invariance": {"backbone": backbone, "projector": projector},
        "adversarial": {"ssl": ssl, "supervised": supervised},
    }
    out += [f"| {r['finding']} | {r['paper']} | {r['measured']} | {r['agrees']} |" for r in findings(numbers)]
    return "\n".join(out) + "\n"
