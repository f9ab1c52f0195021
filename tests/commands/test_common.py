"""rcdm.commands.common: options declared from a settings dataclass, and the one-line number checks."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from rcdm.commands.common import add_config_options, positive
from rcdm.errors import RCDMError


@dataclass
class Settings:
    steps: int = 100
    lr: float = 1e-4
    mode: Literal["a", "b"] = "a"
    size: int | None = None
    name: str = "x"


def test_options_take_type_choices_and_shown_default_from_the_dataclass() -> None:
    p = argparse.ArgumentParser()
    helps = {"steps": "steps in all", "lr": "learning rate", "mode": "a or b", "size": "side (default: none)"}
    add_config_options(p, Settings, {**helps, "name": "a name"})
    args = p.parse_args(["--steps", "7", "--lr", "0.5", "--mode", "b", "--size", "3"])
    assert (args.steps, args.lr, args.mode, args.size, args.name) == (7, 0.5, "b", 3, None)
    assert p.parse_args([]).steps is None  # unset: a run's saved settings, then the dataclass, decide
    text = p.format_help()
    assert "steps in all (default: 100)" in text and "learning rate (default: 0.0001)" in text
    assert "side (default: none)" in text and "(default: none) (default" not in text
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "c"])
    with pytest.raises(SystemExit):
        p.parse_args(["--steps", "x"])


def test_positive_names_the_option() -> None:
    assert positive("--n", 3) == 3
    with pytest.raises(RCDMError, match="--n 0 must be at least 1"):
        positive("--n", 0)
