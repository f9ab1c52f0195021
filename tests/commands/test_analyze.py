"""`rcdm analyze`: figures and results.json written, bad input -> exit code 2."""

from __future__ import annotations

import json


def test_cli_writes_figure_and_results(tiny_run, two_images, tmp_path, analyze, capsys):
    out = tmp_path / "inv"
    assert (
        analyze(
            "invariance",
            tiny_run,
            two_images,
            out,
            "--augmentations",
            "grayscale",
            "--compare",  # as adversarial spells it; --compare-features still parses
            str(tiny_run),
        )
        == 0
    )
    assert (out / "figure.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    retention = results["results"][0]["augmentations"][0]["retention"]
    said = capsys.readouterr().out  # the headline numbers on the terminal, those of results.json
    assert (
        "(backbone) · grayscale: strength 1, relative_shift" in said and f"retention {retention:.3g}" in said
    ), said
    assert (
        len(results["results"]) == 2
        and results["results"][0]["augmentations"][0]["augmentation"] == "grayscale"
    )
    out = tmp_path / "itp"
    assert analyze("interpolate", tiny_run, two_images, out, "--num-steps", "3") == 0
    assert (out / "figure.png").is_file() and len(json.loads((out / "results.json").read_text())["t"]) == 3
    # the results and the figure say how the samples were drawn (the figure: a caption below it)
    results = json.loads((out / "results.json").read_text())
    assert {"sampler", "steps", "guidance", "seed"} <= set(results["sampling"])
    assert results["sampling"]["guidance"] is not None  # the resolved weight, not "the model's default"
    # sample's rules for --out: an earlier analysis is replaced only with --overwrite, other files never
    assert analyze("interpolate", tiny_run, two_images, out, "--num-steps", "3") == 2
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sample.json").write_text("{}")  # e.g. an rcdm sample output
    assert analyze("variance", tiny_run, two_images, mine, "--overwrite") == 2
    assert sorted(p.name for p in mine.iterdir()) == ["sample.json"]
    assert analyze("interpolate", tiny_run, two_images, out, "--num-steps", "4", "--overwrite") == 0
    assert len(json.loads((out / "results.json").read_text())["t"]) == 4


def test_cli_bad_input_exit_code_2(tiny_run, two_images, few_images, tmp_path, capsys, analyze):
    assert analyze("invariance", tiny_run, two_images, tmp_path / "a", "--augmentations", "sepia") == 2
    assert "unknown augmentation 'sepia'" in capsys.readouterr().err
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("hello")
    assert analyze("variance", tiny_run, [bad], tmp_path / "b") == 2
    assert "cannot read image" in capsys.readouterr().err
    code = analyze(
        "manipulate",
        tiny_run,
        two_images[:1],
        tmp_path / "c",
        "--neighbours",
        str(few_images),
        "--target",
        str(two_images[1]),
    )
    assert code == 2 and "k=20" in capsys.readouterr().err
    assert analyze("interpolate", tiny_run, two_images[:1], tmp_path / "d") == 2
