"""scripts/findings_table.py: the pack's findings study -> the README's tables, with standard errors."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "findings_table.py"


def _inv(retention: dict[str, list[float]]) -> dict:
    rows = [
        {
            "augmentation": aug,
            "retention": sum(finite := [v for v in vals if v == v]) / len(finite),  # the summary: finite ones
            "per_image": {f"i{k}": {"retention": v, "relative_shift": 0.5} for k, v in enumerate(vals)},
        }
        for aug, vals in retention.items()
    ]
    return {"images": ["i0", "i1", "i2"], "augmentations": rows}


def _adv(shifts: list[float], flips: float | None) -> dict:
    per = {f"i{k}": {"relative_shift": s} for k, s in enumerate(shifts)}
    return {
        "eps": 4 / 255,
        "relative_shift": sum(shifts) / len(shifts),
        "label_flip_rate": flips,
        "per_image": per,
    }


def test_findings_table_gives_means_with_standard_errors_and_the_demo_verdicts(tmp_path: Path) -> None:
    (tmp_path / "invariance").mkdir()
    (tmp_path / "adversarial").mkdir()
    backbone = _inv({"grayscale": [1.0, 0.5, 0.0], "hflip": [0.2, 0.2, float("nan")]})
    projector = _inv({"grayscale": [0.0, 0.0, 0.0], "hflip": [0.5, 0.5, 0.5]})
    (tmp_path / "invariance" / "results.json").write_text(json.dumps({"results": [backbone, projector]}))
    adv = [_adv([0.1, 0.3], None), _adv([0.4, 0.6], 0.5)]
    (tmp_path / "adversarial" / "results.json").write_text(json.dumps({"results": adv}))
    text = runpy.run_path(str(SCRIPT))["tables"](tmp_path)
    assert "Invariance, 3 CIFAR-10 test images" in text
    assert "| grayscale | 0.50 ± 0.29 | 0.00 ± 0.00 | 0.50 ± 0.00 | 0.50 ± 0.00 |" in text  # sd 0.5 / sqrt 3
    assert "| hflip | 0.20 ± 0.00 | 0.50 ± 0.00 |" in text  # the non-finite retention is left out
    assert (
        "VICReg 0.20 ± 0.10, supervised 0.50 ± 0.10; the supervised classifier's label flip rate 0.50" in text
    )
    # The demo page's verdicts: backbone keeps 1 of 2 (grayscale 0.50 >= 0.5), projector lower for 1 of 2.
    lines = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert lines[0].endswith("| partly |") and lines[1].endswith("| yes |")
