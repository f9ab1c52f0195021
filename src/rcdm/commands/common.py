"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse

from ..diffusion import COMPILE_MODES, PRECISIONS, SAMPLERS
from ..encoders import FEATURES


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run folder, saved model folder, or official:NAME")
    p.add_argument("--weights", default=None, help="local checkpoint file for a named model (official:...)")
    p.add_argument("--encoder", default=None, help="encoder spec; default: the one the model was trained on")
    p.add_argument("--feature", choices=FEATURES, default=None, help="default: the model's")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def add_sampling_args(p: argparse.ArgumentParser, num_samples: int = 8) -> None:
    p.add_argument("--num-samples", type=int, default=num_samples, help="samples per image")
    p.add_argument(
        "--steps", type=int, default=None, help="sampler steps (default: dpm++ 20, ddim 50, ddpm 100)"
    )
    p.add_argument("--sampler", choices=SAMPLERS, default="dpm++")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight (1 = none)")
    p.add_argument("--batch-size", type=int, default=64)


def add_speed_args(p: argparse.ArgumentParser) -> None:
    """--compile MODE / --no-compile and --precision (docs/speed.md)."""
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="auto",
        help="UNet execution: auto (CUDA: the fast path; CPU: off), off, graphs (CUDA graph replay), "
        "default or reduce-overhead (torch.compile; the first call compiles)",
    )
    p.add_argument(
        "--no-compile", dest="compile", action="store_const", const="off", help="same as --compile off"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 autocast on CUDA and on CPUs with native bf16 (AMX or AVX512-BF16), fp32 elsewhere",
    )


def positive(name: str, value: int) -> int:
    from ..errors import RCDMError

    if value < 1:
        raise RCDMError(f"{name} {value} must be at least 1")
    return value
