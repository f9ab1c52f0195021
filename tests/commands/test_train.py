"""rcdm.commands.train (`rcdm train`): flags reach the run, bad ones exit 2."""

from __future__ import annotations

import json
from pathlib import Path

from rcdm.cli import main
from training_for_tests import tiny_argv


def test_cli_flags_reach_the_run_and_bad_ones_exit_2(few_images: Path, tmp_path, capsys):
    argv = tiny_argv(few_images)
    assert main([*argv, "--steps", "2", "--snr-gamma", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "--snr-gamma -1.0 must be a positive number" in capsys.readouterr().err
    flags = ["--prediction", "v_prediction", "--loss-weighting", "min-snr", "--warmup-steps", "3"]
    assert main([*argv, "--steps", "2", *flags, "--out", str(tmp_path / "run")]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (run["prediction"], run["loss_weighting"], run["warmup_steps"]) == ("v_prediction", "min-snr", 3)
    assert run["model"]["prediction_type"] == "v_prediction"
