"""rcdm.figures: titles that fit (wrapped, never cut) and captions that carry how a figure was drawn."""

from __future__ import annotations

import numpy as np
import torch

from rcdm.diffusion import SamplingConfig
from rcdm.figures import grid, with_caption


def _cells(n: int) -> list[list[torch.Tensor]]:
    return [[torch.rand(3, 16, 16) for _ in range(n)]]


def test_a_long_title_wraps_onto_more_lines_instead_of_being_cut():
    short = grid(_cells(2), title="airplane")
    long = grid(_cells(2), title="adversarial: " + "/a/very/long/path/to/some/model/folder" * 4)
    assert long.width == short.width  # the grid sets the width, the title does not
    assert long.height >= short.height + 3 * 14  # the title's extra lines, not cut at the edge


def test_a_row_label_of_two_lines_takes_two_lines_and_the_width_of_the_longer():
    numbers = "d=0.49 | 0.62  r=1.00 | 0.43"
    one = grid(_cells(2), row_labels=[f"random_resized_crop {numbers}"])
    two = grid(_cells(2), row_labels=[f"random_resized_crop\n{numbers}"])
    assert two.width < one.width and two.height == one.height
    label = np.asarray(two.convert("L"))[:, : two.width - 2 * (64 + 2)]  # the label column
    inked = np.flatnonzero((label < 128).any(1))
    assert inked.max() - inked.min() > 14  # ink on two lines, one under the other (LINE = 14 px)


def test_a_caption_goes_below_the_figure_and_widens_a_narrow_one():
    fig = grid(_cells(1))
    out = with_caption(
        fig, "runs/r20 (pixels:4, backbone); " + SamplingConfig(steps=20, guidance=5).describe()
    )
    assert out.width == max(fig.width, 360) and out.height > fig.height
    assert (
        out.crop((0, 0, fig.width, fig.height)).tobytes() == fig.convert("RGB").tobytes()
    )  # figure untouched


def test_sampling_describes_itself_for_captions():
    assert SamplingConfig(guidance=5.0).describe() == "dpm++ 20 steps, guidance 5, seed 0"
    assert SamplingConfig(sampler="ddim", seed=3, rep_noise=0.5, guidance=1).describe() == (
        "ddim 50 steps, guidance 1, seed 3, rep-noise 0.5"
    )


def test_model_card_has_one_shape_for_every_card() -> None:
    from rcdm.figures import SMOKE_BANNER, model_card

    text = model_card(
        "m",
        ["intro"],
        [("score", 0.061000000685453415), ("steps", 7)],
        smoke=True,
        sections=[("Metrics", "| a | b |")],
        front_matter=["library_name: rcdm"],
    )
    assert text.startswith("---\nlibrary_name: rcdm\n---\n\n# m\n\n" + SMOKE_BANNER + "\n\nintro\n")
    assert "| score | 0.061 |" in text and "| steps | 7 |" in text  # floats to 4 significant digits
    assert text.index("| field | value |") < text.index("## Metrics") and text.endswith("| a | b |\n\n")
    assert SMOKE_BANNER not in model_card("m", [], [])
