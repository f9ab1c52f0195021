"""The paper's findings 1-3 on the pack (`scripts/cpu_pack.sh findings`) as Markdown tables, for the README.

    python scripts/findings_table.py FINDINGS_DIR

FINDINGS_DIR/invariance/results.json (`rcdm analyze invariance --compare-features`: backbone, then projector) and
FINDINGS_DIR/adversarial/results.json (`rcdm analyze adversarial --compare`: VICReg, then supervised). Each mean
comes with its standard error over images; the verdicts are the demo page's (`rcdm.demo_page.findings`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from rcdm.demo_page import findings


def mean_se(values: list) -> str:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return "n/a"
    m = sum(v) / len(v)
    se = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v)) if len(v) > 1 else float("nan")
    return f"{m:.2f} ± {se:.2f}"


def per_image(row: dict, key: str) -> list:
    return [d[key] for d in row["per_image"].values()]


def tables(root: Path) -> str:
    inv = json.loads((root / "invariance" / "results.json").read_text())["results"]
    adv = json.loads((root / "adversarial" / "results.json").read_text())["results"]
    backbone, projector = inv
    ssl, supervised = adv
    n_inv, n_adv = len(backbone["images"]), len(ssl["per_image"])
    out = [
        f"Invariance, {n_inv} CIFAR-10 test images (mean ± standard error over images):",
        "",
        "| augmentation | retention, backbone | retention, projector | relative shift, backbone | relative shift, "
        "projector |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for b, p in zip(backbone["augmentations"], projector["augmentations"], strict=True):
        cells = [mean_se(per_image(r, k)) for k in ("retention", "relative_shift") for r in (b, p)]
        out.append(f"| {b['augmentation']} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    flips = supervised.get("label_flip_rate")
    out += [
        "",
        f"Untargeted PGD (eps {ssl['eps'] * 255:.0f}/255), {n_adv} images: relative representation shift, VICReg "
        f"{mean_se(per_image(ssl, 'relative_shift'))}, supervised {mean_se(per_image(supervised, 'relative_shift'))}"
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
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(tables(Path(sys.argv[1])))
