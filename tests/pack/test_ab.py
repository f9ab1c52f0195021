"""The recipe A/B's evaluation stage and table, on checkpoints of a tiny model (tests only) laid out as A/B runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rcdm.cli import main
from rcdm.encoders.base import file_identity
from rcdm.errors import RCDMError
from rcdm.pack.ab import (
    VARIANTS,
    ABConfig,
    ab_table,
    eval_path,
    eval_steps,
    evaluate_variants,
    train_variants,
    variant_config,
    with_images,
)


@pytest.fixture
def ab_runs(tiny_run: Path, tmp_path: Path) -> tuple[ABConfig, Path]:
    """ROOT/baseline with checkpoints at steps 1 and 2 (64 and 128 images at batch 64), each the tiny model, and a
    metrics.jsonl of two sessions (the second resumed at step 1: its CPU clock restarted)."""
    ab = ABConfig(data="unused", images=128, eval_images=(64, 128), save_every_images=64)
    run = tmp_path / "ab" / "baseline"
    for step in (1, 2):
        ck = run / "checkpoints" / f"step-{step:08d}"
        shutil.copytree(tiny_run / "model", ck / "ema")
        (ck / "state.json").write_text(json.dumps({"step": step}))
    rows = [
        {"step": 1, "loss": 1.0, "cpu_s": 30.0, "elapsed_s": 20.0},
        {"step": 2, "loss": 1.0, "cpu_s": 12.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ab, tmp_path / "ab"


def test_evaluation_scores_each_point_and_guidance_once_and_tabulates_the_best(
    ab_runs, cifar_root, resnet56_path, tmp_path
):
    ab, root = ab_runs
    judge = f"cifar-resnet56:{resnet56_path}"
    written = evaluate_variants(ab, root, ["baseline"], judge, cifar_root, guidances=(1.0,), num_images=10)
    assert written == [eval_path(root, "baseline", 64, 1.0), eval_path(root, "baseline", 128, 1.0)]
    score = json.loads(written[0].read_text())
    assert score["num_images"] == 10 and score["step"] == 1 and score["judge"] == judge
    assert score["judge_identity"] == file_identity(
        "cifar-resnet56", resnet56_path
    )  # stands without the path
    assert 0 <= score["class_agreement"] <= 1 and 1 <= score["mean_rank"] <= 10 and score["frechet"] > 0
    assert evaluate_variants(ab, root, ["baseline"], judge, cifar_root, guidances=(1.0,), num_images=10) == []
    # A better score at another guidance becomes the row's best; the first moves to 'other guidance'.
    better = {**score, "guidance": 4.0, "class_agreement": 1.0, "rank1": 0.5}
    eval_path(root, "baseline", 64, 4.0).write_text(json.dumps(better))
    table = ab_table(ab, root)
    row64 = next(line for line in table.splitlines() if line.startswith("| baseline | 64 |"))
    assert "| 4 | 1.000 | 0.500 |" in row64 and "g1: " in row64
    assert row64.endswith("| 30 |")  # CPU seconds to step 1
    row128 = next(line for line in table.splitlines() if line.startswith("| baseline | 128 |"))
    assert row128.endswith("| 42 |")  # both sessions: 30 + 12
    # The records stand alone: with the checkpoints and metrics gone (a new machine), the table is the same.
    assert score["training_cpu_s"] == 30.0 and score["machine"] and score["device"].startswith("cpu")
    kept = tmp_path / "kept"
    shutil.copytree(root / "baseline" / "eval", kept / "baseline" / "eval")
    assert ab_table(ab, kept) == table
    # A point outside the A/B's own (cifar32's at equal CPU time) is a row of its own, in order of images seen.
    eval_path(kept, "baseline", 32, 1.0).write_text(json.dumps({**score, "images_seen": 32}))
    rows = [line.split(" | ")[1] for line in ab_table(ab, kept).splitlines()[2:]]
    assert rows == ["32", "64", "128"]


def test_cli_evaluate_needs_a_judge_and_names_bad_variants(ab_runs, cifar_root, capsys):
    _, root = ab_runs
    base = ["recipe", "ab", "--runs", str(root), "--data", str(cifar_root), "--images", "128"]
    assert main([*base, "--stage", "evaluate"]) == 2
    assert "--stage evaluate needs --judge" in capsys.readouterr().err
    assert main([*base, "--stage", "table", "--variants", "baseline+warp"]) == 2
    assert "unknown A/B variant 'warp'" in capsys.readouterr().err
    assert main([*base, "--stage", "evaluate", "--judge", "x", "--device", "cuda:7"]) == 2
    assert "cuda:7" in capsys.readouterr().err


def test_ab_variants_share_everything_but_their_change(tmp_path):
    ab = ABConfig(data=str(tmp_path))
    base = variant_config(ab, "baseline")
    assert (base.preset, base.batch_size, base.lr, base.cond_drop, base.steps) == (
        "cifar32-small",
        64,
        5e-4,
        0.1,
        2000,
    )
    both = variant_config(ab, "min-snr+v-prediction")
    assert (both.loss_weighting, both.prediction) == ("min-snr", "v_prediction")
    assert {k: v for k, v in both.__dict__.items() if k not in ("loss_weighting", "prediction")} == {
        k: v for k, v in base.__dict__.items() if k not in ("loss_weighting", "prediction")
    }
    big = variant_config(ab, "lr1e-3-batch128")
    assert big.steps * big.batch_size == base.steps * base.batch_size  # equal images seen
    assert eval_steps(ab, "lr1e-3-batch128") == {64_000: 500, 128_000: 1000}
    assert eval_steps(ab, "baseline") == {64_000: 1000, 128_000: 2000}
    for name in ("baseline", "lr1e-3-batch128"):  # every evaluation point is a kept checkpoint
        cfg = variant_config(ab, name)
        assert all(s % cfg.save_every == 0 for s in eval_steps(ab, name).values())
        assert cfg.keep_checkpoints * cfg.save_every >= cfg.steps
    assert set(VARIANTS) >= {"baseline", "min-snr", "v-prediction", "logit-normal", "dropout", "cifar32"}
    with pytest.raises(RCDMError, match="unknown A/B variant 'edm'"):
        variant_config(ab, "baseline+edm")
    with pytest.raises(RCDMError, match="not a whole number of batches"):
        variant_config(with_images(ab, 1000), "baseline")


def test_a_variant_trained_to_the_first_point_goes_on_to_the_full_budget(few_images, resnet20_spec, tmp_path):
    # scripts/cpu_ab.sh trains each variant to 64k images, scores it, then goes on to 128k: the run that finished
    # the first budget must resume to the second, not count as done (tiny preset: tests only)
    ab = ABConfig(
        data=str(few_images), encoder=resnet20_spec, images=16, eval_images=(8, 16), save_every_images=8
    )
    tiny = dict(preset="tiny", batch_size=8)
    root, half = tmp_path / "ab", with_images(ab, 8)
    first = train_variants(half, root, ["baseline"], progress=False, extra=tiny)["baseline"]
    assert first is not None and first.steps == 1
    assert (root / "baseline" / "model" / "config.json").is_file()
    assert train_variants(half, root, ["baseline"], progress=False, extra=tiny) == {"baseline": None}
    full = train_variants(ab, root, ["baseline"], progress=False, extra=tiny)["baseline"]
    assert full is not None and full.steps == 2
    kept = sorted(p.name for p in (root / "baseline" / "checkpoints").iterdir())
    assert kept == ["step-00000001", "step-00000002"]  # both evaluation points
    assert train_variants(ab, root, ["baseline"], progress=False, extra=tiny) == {"baseline": None}
