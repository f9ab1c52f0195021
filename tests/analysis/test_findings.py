"""rcdm.analysis.findings: the paper's findings judged by numbers, and the tables with standard errors."""

from __future__ import annotations

from rcdm.analysis.findings import findings, findings_tables, mean_se, verdict


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


def test_findings_table_gives_means_with_standard_errors_and_the_demo_verdicts() -> None:
    backbone = _inv({"grayscale": [1.0, 0.5, 0.0], "hflip": [0.2, 0.2, float("nan")]})
    projector = _inv({"grayscale": [0.0, 0.0, 0.0], "hflip": [0.5, 0.5, 0.5]})
    adv = [_adv([0.1, 0.3], None), _adv([0.4, 0.6], 0.5)]
    text = findings_tables([backbone, projector], adv)
    assert "Invariance, 3 CIFAR-10 test images" in text
    assert "| grayscale | 0.50 ± 0.29 | 0.00 ± 0.00 | 0.50 ± 0.00 | 0.50 ± 0.00 |" in text  # sd 0.5 / sqrt 3
    assert "| hflip | 0.20 ± 0.00 | 0.50 ± 0.00 |" in text  # the non-finite retention is left out
    assert (
        "VICReg 0.20 ± 0.10, supervised 0.50 ± 0.10; the supervised classifier's label flip rate 0.50" in text
    )
    # The demo page's verdicts: backbone keeps 1 of 2 (grayscale 0.50 >= 0.5), projector lower for 1 of 2.
    lines = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert lines[0].endswith("| partly |") and lines[1].endswith("| yes |")


def test_verdicts_follow_the_numbers() -> None:
    assert [verdict(2, 2), verdict(1, 2), verdict(0, 2), verdict(0, 0)] == [
        "yes",
        "partly",
        "no",
        "undefined",
    ]
    assert mean_se([float("nan"), None]) == "n/a" and mean_se([1.0, 3.0]) == "2.00 ± 1.00"
    numbers = {
        "invariance": {
            "backbone": _inv({"grayscale": [0.9, 0.9, 0.9], "hflip": [0.8, 0.8, 0.8]}),
            "projector": _inv({"grayscale": [0.1, 0.1, 0.1], "hflip": [0.9, 0.9, 0.9]}),
        },
        "adversarial": {"ssl": _adv([0.5, 0.5], None), "supervised": _adv([0.2, 0.2], 0.1)},
    }
    rows = findings(numbers)
    # the backbone keeps both; the projector is below it for grayscale only; SSL moves more than supervised here
    assert [r["agrees"] for r in rows[:3]] == ["yes", "partly", "no"]
    assert "(grayscale)" in rows[1]["measured"]
