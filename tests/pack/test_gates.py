"""rcdm.pack.gates (`rcdm recipe metrics`): the CPU pack's evaluation folders -> the labelled metrics `recipe pack`
puts on cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rcdm.cli import main
from rcdm.pack.gates import STEP, gate_metrics, trend


def _evaluation(
    folder: Path,
    top1: float,
    agreement: float,
    guidance: float = 1.0,
    fid: float = 3.0,
    wall_s: float = 4.0,
    model: str = "/w/runs/t/model",
):
    """A score.json as `rcdm.pack.stages.score_into` writes it, on 4 images; a checkpoint's carries its images
    seen at 64 images per step."""
    folder.mkdir(parents=True)
    step = STEP.fullmatch(folder.name)
    record = {
        "num_images": 4,
        "sampler": "dpm++",
        "steps": 20,
        "guidance": guidance,
        "class_agreement": agreement,
        "rank1": top1,
        "mean_rank": 2.0,
        "frechet": fid,
        "own_rank1": 0.5,
        "wall_s": wall_s,
        "model": model,
        **({"step": int(step.group(1)), "images_seen": int(step.group(1)) * 64} if step else {}),
    }
    (folder / "score.json").write_text(json.dumps(record))


def test_pack_metrics_labels_the_final_guided_curve_and_sampler_numbers(tmp_path: Path, capsys) -> None:
    target = tmp_path / "metrics" / "rcdm-cifar10-supervised"
    _evaluation(target / "final", 0.25, 0.5, fid=3.5)
    _evaluation(target / "final-g2", 0.5, 0.75, guidance=2.0, fid=4.25)
    _evaluation(target / "step-00002000", 0.0, 0.25)
    _evaluation(target / "step-00004000", 0.25, 0.5)
    _evaluation(target / "step-00004000-g2", 0.5, 0.75, guidance=2.0)
    _evaluation(target / "sampler-fast-g2", 0.5, 1.0, guidance=2.0, wall_s=8.0)
    _evaluation(target / "sampler-published", 0.25, 0.5, model="/w/runs/t/checkpoints/step-00002500/ema")
    (target / "sampler-paired").mkdir()  # an interrupted sampler run: no row

    assert main(["recipe", "metrics", "--metrics-dir", str(tmp_path / "metrics"), "--eval-images", "4"]) == 0
    m = json.loads(capsys.readouterr().out)["rcdm-cifar10-supervised"]
    plain = "on 4 class-balanced CIFAR-10 test images, 1 sample each (dpm++ 20), judged by CIFAR ResNet-56"
    guided = plain.replace("(dpm++ 20)", "(dpm++ 20, guidance 2)")
    assert m[f"class agreement {plain}"] == 0.5 and m[f"rank-1 retrieval {plain} (chance 0.2500)"] == 0.25
    # as `recipe samplers` (200 images) writes them after `recipe evaluate`: each score keeps its own count
    assert gate_metrics(tmp_path / "metrics", "200")["rcdm-cifar10-supervised"] == m
    assert m[f"class agreement {guided}"] == 0.75 and m[f"rank-1 retrieval {guided} (chance 0.2500)"] == 0.5
    frechet = [v for k, v in m.items() if k.startswith("Frechet")]
    assert sorted(frechet) == [3.5, 4.25]
    curve = m["curve (images seen: rank-1 / class agreement; dpm++ 20; ResNet-56 judge)"]
    assert curve == "128000: 0.000 / 0.250; 256000: 0.250 / 0.500"  # 64 images per step of the CPU profile
    assert m["curve (images seen: rank-1 / class agreement; dpm++ 20, guidance 2; ResNet-56 judge)"] == (
        "256000: 0.500 / 0.750"
    )
    # the trend of each gate metric along the two-point curve: agreement 0.25 -> 0.5 in one doubling
    assert m["trend of class agreement (dpm++ 20; ResNet-56 judge) against log2(images seen)"] == (
        "+0.250 per doubling of images seen (2 checkpoints); the line reaches 0.7 at about 0.45M images seen "
        "(extrapolated)"
    )
    assert m["trend of rank-1 retrieval (dpm++ 20; ResNet-56 judge) against log2(images seen)"].endswith(
        "at or above 0.1 already"
    )
    assert not any(k.startswith("trend") and "guidance 2" in k for k in m)  # one point: no line
    assert m["sampler table (setting: rank-1 / class agreement / s per image, CPU)"] == (
        "dpm++ 20, guidance 2: 0.500 / 1.000 / 2.00; dpm++ 20: 0.250 / 0.500 / 1.00 (step-00002500)"
    )


def test_pack_metrics_falls_back_to_the_newest_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "rcdm-cifar10-vicreg-backbone"
    _evaluation(target / "step-00000500", 0.0, 0.0)
    _evaluation(target / "step-00001000", 0.25, 0.25)
    m = gate_metrics(tmp_path, "4")["rcdm-cifar10-vicreg-backbone"]
    assert [v for k, v in m.items() if k.startswith("class agreement")] == [0.25]


def test_pack_metrics_reports_the_packed_checkpoint_and_its_guided_runs(tmp_path: Path) -> None:
    target = tmp_path / "rcdm-cifar10-vicreg-backbone"
    _evaluation(target / "step-00000500", 0.0, 0.0)
    _evaluation(target / "step-00000500-g5", 0.25, 0.5, guidance=5.0)
    _evaluation(target / "step-00001000", 0.25, 0.25)  # newer, but not the packed step
    m = gate_metrics(tmp_path, "4", 500)["rcdm-cifar10-vicreg-backbone"]
    assert [v for k, v in m.items() if k.startswith("class agreement")] == [0.0, 0.5]
    assert gate_metrics(tmp_path, "4", 1500)["rcdm-cifar10-vicreg-backbone"].keys() == {
        "curve (images seen: rank-1 / class agreement; dpm++ 20; ResNet-56 judge)",
        "trend of class agreement (dpm++ 20; ResNet-56 judge) against log2(images seen)",
        "trend of rank-1 retrieval (dpm++ 20; ResNet-56 judge) against log2(images seen)",
        "curve (images seen: rank-1 / class agreement; dpm++ 20, guidance 5; ResNet-56 judge)",
    }  # an unevaluated step: no gate numbers, rather than another checkpoint's


def test_pack_metrics_reads_each_target_at_its_own_packed_model(tmp_path: Path) -> None:
    # The first target's curve must not change which model the next one reports (a loop variable once did).
    _evaluation(tmp_path / "rcdm-cifar10-supervised" / "step-00002000", 0.0, 0.25)
    _evaluation(tmp_path / "rcdm-cifar10-vicreg-backbone" / "final", 0.5, 0.75)
    _evaluation(tmp_path / "rcdm-cifar10-vicreg-backbone" / "step-00002000", 0.0, 0.0)
    m = gate_metrics(tmp_path, "4")["rcdm-cifar10-vicreg-backbone"]
    assert [v for k, v in m.items() if k.startswith("class agreement")] == [0.75]


def test_trend_fits_the_metric_against_log_images_and_extrapolates_to_the_gate() -> None:
    # 0.2, 0.3, 0.4 at 1M, 2M, 4M images: +0.1 per doubling, so 0.6 at 16M
    line = trend([(1_000_000, 0.2), (2_000_000, 0.3), (4_000_000, 0.4)], 0.6)
    assert (
        line
        == "+0.100 per doubling of images seen (3 checkpoints); the line reaches 0.6 at about 16M images seen (extrapolated)"
    )
    assert trend([(1_000_000, 0.3), (2_000_000, 0.2)], 0.6).endswith(
        "no gain, so no estimate of where it reaches 0.6"
    )
    assert trend([(1_000_000, 0.0), (2_000_000, 0.01)], 0.6).endswith(
        "at over 1000G images seen (extrapolated)"
    )
    # two significant figures where the crossing is under a million images (one decimal said 0.6M for 640k)
    assert "at about 0.64M images" in trend([(160_000, 0.4), (320_000, 0.5)], 0.6)  # 640k
    assert trend([(1_000_000, 0.2)], 0.6) is None  # one point is no line
    assert trend([(1_000_000, 0.2), (2_000_000, float("nan"))], 0.6) is None  # an unscored point is left out


def test_pack_metrics_reads_a_target_given_its_own_step_at_that_step(tmp_path: Path, capsys) -> None:
    # `TARGET=STEP` on the command line, as `recipe pack --step TARGET=STEP`: that target at its step, the others
    # at the plain one.
    for t in ("rcdm-cifar10-supervised", "rcdm-cifar10-vicreg-backbone"):
        _evaluation(tmp_path / t / "step-00000500", 0.0, 0.25)
        _evaluation(tmp_path / t / "step-00001000", 0.25, 0.5)
    argv = ["recipe", "metrics", "--metrics-dir", str(tmp_path), "--eval-images", "4", "--step", "1000"]
    assert main([*argv, "--step", "rcdm-cifar10-supervised=500"]) == 0
    m = json.loads(capsys.readouterr().out)
    agreement = {t: [v for k, v in m[t].items() if k.startswith("class agreement")] for t in m}
    assert agreement == {"rcdm-cifar10-supervised": [0.25], "rcdm-cifar10-vicreg-backbone": [0.5]}


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["1000", "2000"], "--step 1000 and --step 2000: give one plain step"),
        (
            ["rcdm-cifar10-supervised=500", "rcdm-cifar10-supervised=700"],
            "--step for rcdm-cifar10-supervised given twice (500 and 700)",
        ),
        (["=500"], "--step '=500': give a step N or TARGET=N"),
        (["rcdm-cifar10-supervised=x"], "--step 'rcdm-cifar10-supervised=x': give a step N"),
    ],
)
def test_pack_metrics_refuses_ambiguous_steps_in_one_line(tmp_path: Path, capsys, words, message) -> None:
    _evaluation(tmp_path / "rcdm-cifar10-supervised" / "step-00000500", 0.0, 0.25)
    steps = [w for word in words for w in ("--step", word)]
    assert main(["recipe", "metrics", "--metrics-dir", str(tmp_path), "--eval-images", "4", *steps]) == 2
    out = capsys.readouterr()
    assert out.out == "" and message in out.err and len(out.err.strip().splitlines()) == 1


def test_a_final_model_that_records_its_images_seen_ends_its_curve_once(tmp_path: Path) -> None:
    target = tmp_path / "rcdm-cifar10-vicreg-backbone"
    _evaluation(target / "step-00002000", 0.0, 0.25)
    _evaluation(target / "final", 0.5, 0.75)
    record = json.loads((target / "final" / "score.json").read_text())
    (target / "final" / "score.json").write_text(json.dumps({**record, "images_seen": 256000}))
    curve = "curve (images seen: rank-1 / class agreement; dpm++ 20; ResNet-56 judge)"
    assert gate_metrics(tmp_path, "4")[target.name][curve] == "128000: 0.000 / 0.250; 256000: 0.500 / 0.750"
    _evaluation(target / "step-00004000", 0.5, 0.75)  # the same step scored as a checkpoint: one point
    assert gate_metrics(tmp_path, "4")[target.name][curve] == "128000: 0.000 / 0.250; 256000: 0.500 / 0.750"


def test_pack_metrics_markdown_prints_the_readme_tables_read_at_each_models_own_default(
    tmp_path: Path, capsys
) -> None:
    # The VICReg backbone RCDM records guidance 5 as its default (`recipe guidance --record`); the supervised one
    # records none, so its default is guidance 1. The gates are read at each one's own default.
    backbone_model = tmp_path / "runs" / "rcdm-cifar10-vicreg-backbone" / "model"
    backbone_model.mkdir(parents=True)
    measured = [
        {"guidance": g, "class_agreement": a, "rank1": r, "mean_rank": 2.0, "frechet": 3.0, "diversity": d}
        for g, a, r, d in ((1.0, 0.25, 0.0, 0.5), (5.0, 0.75, 0.25, 0.25))
    ]
    sweep = {"guidance": 5.0, "chosen_by": "the lowest guidance within the slacks", "measured": measured}
    (backbone_model / "config.json").write_text(json.dumps({"sampling": sweep}))
    metrics = tmp_path / "metrics"
    backbone = metrics / "rcdm-cifar10-vicreg-backbone"
    _evaluation(backbone / "final", 0.0, 0.25, model=str(backbone_model))
    _evaluation(backbone / "final-g5", 0.25, 0.75, guidance=5.0, fid=2.5, model=str(backbone_model))
    _evaluation(backbone / "step-00002000-g5", 0.0, 0.5, guidance=5.0)
    _evaluation(backbone / "step-00004000-g5", 0.25, 0.75, guidance=5.0)
    _evaluation(backbone / "sampler-published", 0.5, 0.5, wall_s=8.0)
    supervised = metrics / "rcdm-cifar10-supervised"
    _evaluation(supervised / "step-00002000", 0.25, 0.5, model="/gone/rcdm-cifar10-supervised/model")
    for record in (backbone / "final", backbone / "final-g5"):  # a final model records its step
        data = json.loads((record / "score.json").read_text())
        (record / "score.json").write_text(json.dumps({**data, "step": 4000, "images_seen": 256000}))

    argv = ["recipe", "metrics", "--metrics-dir", str(metrics), "--eval-images", "4", "--markdown"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| RCDM (step) | sampling | class agreement (gate ≥ 0.7, backbone models)")
    assert "rank-1 among 4 (gate ≥ 0.1, backbone models; chance 0.250) | mean rank (chance 2.5)" in lines[0]
    rows = [line for line in lines if line.startswith("| VICReg backbone (4,000)")]
    assert rows == [
        "| VICReg backbone (4,000) | dpm++ 20 | 0.250 | 0.000 | 2.0 | 3.00 |",
        "| VICReg backbone (4,000) | dpm++ 20, guidance 5 (its default) | 0.750 | 0.250 | 2.0 | 2.50 |",
    ]
    # no final model: the newest checkpoint; no recorded default: guidance 1
    assert "| supervised backbone (2,000) | dpm++ 20 (its default) | 0.500 | 0.250 | 2.0 | 3.00 |" in lines
    met = "rank-1 retrieval 0.250 (gate 0.1: met)"
    assert (
        f"- VICReg backbone at its default (dpm++ 20, guidance 5): class agreement 0.750 (gate 0.7: met); {met}"
        in lines
    )
    missed = "class agreement 0.500 (gate 0.7: missed by 0.200)"
    assert f"- supervised backbone at its default (dpm++ 20): {missed}; {met}" in lines
    # the sweep that chose the default, from the model's config (the supervised model recorded none)
    assert "| VICReg backbone | 1 | 0.250 | 0.000 | 2.0 | 3.00 | 0.5000 |  |" in lines
    assert "| VICReg backbone | **5** | 0.750 | 0.250 | 2.0 | 3.00 | 0.2500 |  |" in lines
    assert "- VICReg backbone: guidance 5, the lowest guidance within the slacks" in lines
    assert not any(line.startswith("| supervised backbone | ") for line in lines)
    # the curves: a column per model and sampling, a row per images seen, the final model its last point
    header = next(line for line in lines if line.startswith("| images seen |"))
    columns = header.strip("| ").split(" | ")[1:]
    assert columns == [
        "supervised backbone, dpm++ 20",
        "VICReg backbone, dpm++ 20",
        "VICReg backbone, dpm++ 20, guidance 5",
    ]
    assert "| 128k | 0.500 / 0.250 |  | 0.500 / 0.000 |" in lines
    assert "| 256k |  | 0.250 / 0.000 | 0.750 / 0.250 |" in lines
    assert "| class agreement per doubling (least squares) |  |  | +0.250 |" in lines
    assert "| VICReg backbone | dpm++ 20 | 0.500 | 0.500 (chance 0.250) | 2.00 |" in lines


def test_pack_metrics_markdown_says_whose_weights_a_curve_started_from(tmp_path: Path, capsys) -> None:
    # The projector RCDM started from the backbone RCDM's final model (`rcdm train --init-from`): its images seen
    # are its own run's, which the tables say, naming the run and not the machine's path.
    model = tmp_path / "runs" / "rcdm-cifar10-vicreg-projector" / "model"
    model.mkdir(parents=True)
    start = {
        "model": "/home/x/runs/rcdm-cifar10-vicreg-backbone/model",
        "fresh": ["null_rep", "rep_proj.weight"],
    }
    (model / "config.json").write_text(json.dumps({"initialised_from": start}))
    target = tmp_path / "metrics" / "rcdm-cifar10-vicreg-projector"
    _evaluation(target / "final", 0.25, 0.5, model=str(model))
    _evaluation(target / "step-00002000", 0.0, 0.25)
    argv = [
        "recipe",
        "metrics",
        "--metrics-dir",
        str(tmp_path / "metrics"),
        "--eval-images",
        "4",
        "--markdown",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (
        "- VICReg projector: started from `rcdm-cifar10-vicreg-backbone` (`rcdm train --init-from`: its UNet, 2 "
        "tensors from random weights), so its images seen are its own run's only" in out
    )
    assert "/home/x" not in out


def test_pack_metrics_markdown_says_when_nothing_is_scored(tmp_path: Path, capsys) -> None:
    (tmp_path / "rcdm-cifar10-supervised").mkdir()
    assert (
        main(["recipe", "metrics", "--metrics-dir", str(tmp_path), "--eval-images", "4", "--markdown"]) == 0
    )
    assert capsys.readouterr().out == f"nothing scored under {tmp_path} yet\n"
