"""rcdm.cli: the command line as a user meets it: one-line errors with exit code 2, help, examples and flag
spellings across the parser tree, no progress bars in a log."""

from __future__ import annotations

import pytest

from rcdm.cli import main


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("rcdm ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["encode", "--encoder", "nope:x", "--images", "{img}", "--out", "{tmp}/r.safetensors"],
            "torchvision:",
        ),
        (
            [
                "encode",
                "--encoder",
                "pixels:2",
                "--images",
                "{tmp}/missing.jpg",
                "--out",
                "{tmp}/r.safetensors",
            ],
            "image not found",
        ),
        (
            ["encode", "--encoder", "pixels:2", "--images", "{bad}", "--out", "{tmp}/r.safetensors"],
            "cannot read image",
        ),
        (
            ["encode", "--encoder", "pixels:2", "--images", "{empty}", "--out", "{tmp}/r.safetensors"],
            "no images in",
        ),
        (["train", "--data", "{empty}", "--encoder", "pixels:2", "--out", "{tmp}/run"], "no images in"),
        (
            [
                "train",
                "--data",
                "{imgdir}",
                "--encoder",
                "pixels:2",
                "--preset",
                "tiny",
                "--cond-drop",
                "1.5",
                "--out",
                "{tmp}/run",
            ],
            "--cond-drop",
        ),
        (["sample", "--model", "{tmp}/nothing", "--images", "{img}", "--out", "{tmp}/o"], "no model at"),
        (
            ["sample", "--model", "{run}", "--images", "{img}", "--encoder", "pixels:4", "--out", "{tmp}/o"],
            "expects 64-d",
        ),
        (
            [
                "sample",
                "--model",
                "{run}",
                "--images",
                "{img}",
                "--encoder",
                "cifar-resnet56:{r56}",
                "--out",
                "{tmp}/o",
            ],
            "trained on encoder",
        ),
        (
            ["sample", "--model", "{run}", "--images", "{img}", "--guidance", "3", "--out", "{tmp}/o"],
            "cond-drop",
        ),
        (
            ["sample", "--model", "{run}", "--images", "{img}", "--num-samples", "0", "--out", "{tmp}/o"],
            "--num-samples",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv, needle, tiny_run, few_images, resnet56_path, tmp_path, capsys
):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00not an image")
    (tmp_path / "empty").mkdir()
    fill = {
        "img": str(sorted(few_images.iterdir())[0]),
        "imgdir": str(few_images),
        "bad": str(bad),
        "empty": str(tmp_path / "empty"),
        "tmp": str(tmp_path),
        "run": str(tiny_run),
        "r56": str(resnet56_path),
    }
    assert main([a.format(**fill) for a in argv]) == 2
    line = error_line(capsys)
    assert "error:" in line and needle in line, line


def test_non_finite_loss_from_the_cli(few_images, tmp_path, capsys):
    argv = ["train", "--data", str(few_images), "--encoder", "module:encoders_for_tests:nan_after_two",
            "--preset", "tiny", "--image-size", "16", "--steps", "5", "--batch-size", "2", "--save-every", "2",
            "--num-workers", "0", "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    line = error_line(capsys)
    assert "loss became nan" in line and "step-00000002" in line
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "state.json").is_file()


# --- conventions: the whole parser tree ------------------------------------------------------------------


def _commands():
    """(command path, parser) for `rcdm` and every subcommand and sub-subcommand."""
    import argparse

    from rcdm.cli import build_parser

    todo = [("rcdm", build_parser())]
    while todo:
        path, parser = todo.pop(0)
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{path} {name}", sub) for name, sub in action.choices.items()]


def _options(parser):
    """The visible options and positionals (not --help, --version, subcommands or hidden old spellings)."""
    import argparse

    skip = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    return [a for a in parser._actions if not isinstance(a, skip) and a.help != argparse.SUPPRESS]


def test_every_option_has_help_that_shows_its_default():
    missing, no_default = [], []
    for path, parser in _commands():
        formatter = parser._get_formatter()
        for a in _options(parser):
            name = f"{path} {a.option_strings[0] if a.option_strings else a.dest}"
            if not a.help:
                missing.append(name)
                continue
            shown = formatter._expand_help(a).lower()
            flag = a.nargs == 0  # store_true / --x/--no-x: off unless given
            if (
                a.option_strings
                and not (a.required or flag)
                and not ("default" in shown or "required" in shown)
            ):
                no_default.append(f"{name}: {shown!r}")
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help shows no default: {no_default}"


def test_every_command_has_examples():
    from rcdm.commands.common import HelpFormatter

    for path, parser in _commands():
        assert parser.formatter_class is HelpFormatter, path
        assert parser.epilog, f"{path} has no examples epilog"
        assert any(line.strip().startswith("rcdm ") for line in parser.epilog.splitlines()), path
        assert "examples" in parser.format_help(), path


# One spelling per concept across commands (dest -> the flags every command shows for it).
SPELLINGS = {
    "precision": "--precision",
    "mixed_precision": "--precision",
    "compile": "--compile --no-compile",
    "no_progress": "--no-progress",
    "num_samples": "--num-samples",
    "feature": "--feature",
    "extractor": "--extractor",
    "device": "--device",
    "seed": "--seed",
    "batch_size": "--batch-size",
    "trust_remote_code": "--trust-remote-code",
    "num_workers": "--num-workers",
}
LONG_RUNNING = (
    "train", "sample", "encode", "analyze invariance", "analyze adversarial", "analyze interpolate",
    "analyze manipulate", "analyze variance", "analyze report", "evaluate faithfulness", "evaluate quality",
    "evaluate generate", "demo", "recipe ssl", "recipe rcdm",
)  # fmt: skip


def test_the_same_thing_has_the_same_flag_in_every_command():
    from rcdm.devices import COMPILE_MODES, PRECISIONS
    from rcdm.encoders import FEATURES

    wrong = []
    for path, parser in _commands():
        flags = {s for a in parser._actions for s in a.option_strings}
        shown: dict[str, set[str]] = {}
        for a in _options(parser):
            if a.dest in SPELLINGS:
                shown.setdefault(a.dest, set()).add(a.option_strings[0])
            if a.dest in ("precision", "mixed_precision"):
                assert tuple(a.choices) == PRECISIONS, path
            if a.dest == "compile" and a.choices is not None:
                assert set(a.choices) <= set(COMPILE_MODES), path
                assert "--no-compile" in flags, path
            if a.dest == "feature":
                assert tuple(a.choices) == FEATURES, path
            if a.dest == "num_samples":
                assert "per " in a.help, f"{path}: --num-samples must count samples per input image"
        assert "--features" not in {a.option_strings[0] for a in _options(parser) if a.option_strings}, path
        if path.removeprefix("rcdm ") in LONG_RUNNING:
            assert "--no-progress" in flags, f"{path} has no --no-progress"
        wrong += [f"{path}: {sorted(s)}" for d, s in shown.items() if s != set(SPELLINGS[d].split())]
    assert not wrong, f"one concept, another spelling: {wrong}"


def test_old_spellings_still_parse():
    from rcdm.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--out", "r", "--mixed-precision", "no", "--compile"])
    assert args.mixed_precision == "fp32" and args.compile is True
    args = parser.parse_args(["train", "--out", "r", "--precision", "bf16", "--compile", "off"])
    assert args.mixed_precision == "bf16" and args.compile is False
    args = parser.parse_args(
        ["evaluate", "quality", "--fake", "f", "--out", "q.json", "--features", "timm:x"]
    )
    assert args.extractor == "timm:x"
    argv = ["evaluate", "generate", "--model", "m", "--images", "i", "--out", "o", "--no-progress"]
    args = parser.parse_args(argv)
    assert args.num_samples is None and args.total_samples is None and args.no_progress


def test_progress_bars_stay_out_of_a_log_that_is_not_a_terminal(few_images, tmp_path, capfd):
    # pytest's captured stderr is not a terminal: no bar (and none of its carriage returns) may reach it
    out = tmp_path / "reps.safetensors"
    assert main(["encode", "--encoder", "pixels:2", "--images", str(few_images), "--out", str(out)]) == 0
    assert "\r" not in capfd.readouterr().err


def test_a_reader_that_goes_away_is_not_an_internal_error() -> None:
    """`rcdm models | head`: the pipe closes before rcdm writes; rcdm stops quietly with 141 (128 + SIGPIPE),
    not with the internal-error lines."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "rcdm.cli", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the child has imported anything, let alone written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "internal error" not in err, err
