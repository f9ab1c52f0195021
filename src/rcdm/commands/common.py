"""Argument helpers shared by subcommands: the help format, the model options, the sampling options (and the
precision / compile / progress options every long-running command shares), and loading model and encoder.

One spelling per concept in every command: --precision {auto,bf16,fp32}, --compile MODE / --no-compile,
--no-progress, --num-samples (per input image), --feature {backbone,projector} (representation level) and
--extractor SPEC (the metrics' feature network). tests/test_cli.py walks the whole parser tree to keep it so.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import torch

from ..checks import check_guidance, check_guidance_interval, check_rep_noise, check_seed
from ..devices import COMPILE_MODES, PRECISIONS, default_device
from ..diffusion import (
    SAMPLERS,
    SAMPLING_PRESETS,
    SamplingConfig,
    sampling_preset,
)
from ..encoders import FEATURES, Encoder
from ..errors import RCDMError
from ..loading import encoder_for, load_model
from ..model import RCDM


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs printed as written; every option's default shown: ' (default: X)' is appended unless the help
    already states it. Options whose default is None say in their help what not giving them means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and action.nargs != 0  # flags (store_true, --x/--no-x) are off unless given
            and default not in (None, argparse.SUPPRESS)
            and "default" not in text.lower()
        ):
            text += " (default: %(default)s)"
        return text


def add_precision_arg(p: argparse.ArgumentParser, dest: str = "precision", help: str = "") -> None:
    """--precision {auto,bf16,fp32} (default None: auto); --mixed-precision, its old spelling, still parses."""
    p.add_argument(
        "--precision",
        dest=dest,
        choices=PRECISIONS,
        type=lambda s: "fp32" if s == "no" else s,  # accelerate's (and old run.json's) 'no'
        default=None,
        help=help
        or "auto (default): bf16 autocast on CUDA and on CPUs with native bf16 (AMX or AVX512-BF16), "
        "fp32 elsewhere",
    )
    p.add_argument(
        "--mixed-precision",
        dest=dest,
        choices=PRECISIONS,
        type=lambda s: "fp32" if s == "no" else s,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and batch jobs)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="run folder, saved model folder, hub repo user/repo[@revision], or official:NAME",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="local checkpoint file for a named model (official:...); default: downloaded once",
    )
    p.add_argument("--encoder", default=None, help="encoder spec; default: the one the model was trained on")
    p.add_argument("--feature", choices=FEATURES, default=None, help="default: the model's")
    add_device_args(p)


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device and --trust-remote-code: where a model runs, and whether its config may name code to run."""
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a model whose config names an encoder that runs code (hub:, module:); off by default",
    )


def add_standardize_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"standardise representations with the training set's per-dimension mean/std (default: {default})",
    )


def add_overwrite_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_folder_output_args(p: argparse.ArgumentParser, command: str) -> None:
    """--precision, --no-progress and --overwrite of a command that samples into an output folder of its own."""
    add_precision_arg(p)
    add_progress_arg(p)
    add_overwrite_arg(p, f"an earlier `{command}` output in --out (never a folder of other files)")


def load_model_and_encoder(
    args: argparse.Namespace, device: str | torch.device | None = None
) -> tuple[RCDM, Encoder]:
    """--model/--weights and --encoder/--feature, both on `device` (default --device, else the default)."""
    device = device or args.device or default_device()
    model = load_model(args.model, weights=args.weights, device=device)
    enc = encoder_for(model, args.encoder, args.feature, trust_remote_code=args.trust_remote_code)
    return model, enc.to(device)


def add_sampling_args(
    p: argparse.ArgumentParser, num_samples: int | None = 8, what: str = "samples per image"
) -> None:
    """--num-samples (per input image), --sampling PRESET and its overrides (default None: the preset, else
    SamplingConfig()), --no-progress."""
    p.add_argument(
        "--num-samples",
        type=int,
        default=num_samples,
        help=what if num_samples is not None else f"{what} (default: see --total-samples)",
    )
    presets = ", ".join(f"{k} ({v.sampler} {v.steps})" for k, v in SAMPLING_PRESETS.items())
    p.add_argument(
        "--sampling",
        choices=list(SAMPLING_PRESETS),
        default=None,
        help=f"named settings: {presets}; the options below override single fields (default: none, each "
        "option's own default)",
    )
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="sampler (default dpm++)")
    p.add_argument(
        "--steps", type=int, default=None, help="sampler steps (default: dpm++ 20, ddim 50, ddpm 100)"
    )
    p.add_argument("--seed", type=int, default=None, help="first noise seed (default 0)")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance weight (default: the model's recorded default, else 1 = none)",
    )
    p.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="guide only the steps whose noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) lies in (LOW, HIGH] "
        "(Kynkaanniemi et al. 2024); the others draw from the conditional prediction alone, at half the cost "
        "(default: every step)",
    )
    p.add_argument(
        "--rep-noise",
        type=float,
        default=None,
        help="standard deviations of Gaussian noise added to the standardised representation before "
        "conditioning: how much of it the samples depend on (default 0)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="images per network call (default 64)")
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default=None,
        help="UNet execution: auto (default; CUDA: the fast path; CPU: off), off, graphs (CUDA graph replay), "
        "default or reduce-overhead (torch.compile; the first call compiles)",
    )
    p.add_argument(
        "--no-compile", dest="compile", action="store_const", const="off", help="same as --compile off"
    )
    add_precision_arg(p)
    add_progress_arg(p)


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
    """The preset named by --sampling (default `SamplingConfig()`) with the options given on the command line."""
    if args.num_samples is not None:
        positive("--num-samples", args.num_samples, MAX_SAMPLES_PER_IMAGE)
    if args.batch_size is not None:
        positive("--batch-size", args.batch_size)
    if args.steps is not None:
        positive("--steps", args.steps)
    if args.seed is not None:
        check_seed(args.seed)
    if args.guidance is not None:
        check_guidance(args.guidance)
    if args.rep_noise is not None:
        check_rep_noise(args.rep_noise)
    if args.guidance_interval is not None:
        check_guidance_interval(args.guidance_interval)
    base = sampling_preset(args.sampling) if args.sampling else SamplingConfig()
    return base.replace(
        sampler=args.sampler,
        steps=args.steps,
        seed=args.seed,
        guidance=args.guidance,
        guidance_interval=None if args.guidance_interval is None else tuple(args.guidance_interval),
        rep_noise=args.rep_noise,
        batch_size=args.batch_size,
        compile=args.compile,
        precision=args.precision,
    )


# The most samples one command draws per input image: more would not fit in memory as one batch of
# representations (1e9 of them: 256 GB) and no figure shows them; several runs, each with its own --seed, can.
MAX_SAMPLES_PER_IMAGE = 10_000


def positive(name: str, value: int, most: int | None = None) -> int:
    """A count of at least 1 (and at most `most`), or one line naming the option."""
    if value < 1:
        raise RCDMError(f"{name} {value} must be at least 1")
    if most is not None and value > most:
        raise RCDMError(
            f"{name} {value} is too large: use at most {most:,} (split the work into several runs)"
        )
    return value


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, epilog: str
) -> argparse.ArgumentParser:
    """A subcommand whose --help shows every option's default and ends with its examples (`epilog`, as written)."""
    return sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=HelpFormatter)


def add_command_group(
    sub: argparse._SubParsersAction, name: str, help: str, epilogs: dict[str, str], dest: str, metavar: str
) -> Callable[[str, str], argparse.ArgumentParser]:
    """A command with subcommands (`rcdm analyze ANALYSIS`, ...); returns the function that adds one of them, whose
    examples are `epilogs[its name]` (the group's own: `epilogs[name]`)."""
    group = add_command(sub, name, help, epilogs[name]).add_subparsers(
        dest=dest, required=True, metavar=metavar
    )
    return lambda sub_name, sub_help: add_command(group, sub_name, sub_help, epilogs[sub_name])


def read_json_object(path: str | None, flag: str) -> dict | None:
    """The JSON object in the file `path` given as `flag` (None when not given); one-line error otherwise."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RCDMError(f"cannot read {flag} {path!r}: {e}") from None
    if not isinstance(data, dict):
        raise RCDMError(f"{flag} {path!r} must hold a JSON object {{name: value}}")
    return data


def settings_from_args(
    args: argparse.Namespace, settings: type, saved: dict | None, required: Sequence[str], record: str
) -> dict:
    """The dataclass `settings`' fields given as flags (options default to None), over `saved` (the run's own
    record, on --resume); each of `required` must come from one of the two (one line naming it otherwise)."""
    given = {
        f.name: getattr(args, f.name) for f in fields(settings) if getattr(args, f.name, None) is not None
    }
    out = {**(saved or {}), **given}
    for name in required:
        if out.get(name) is None:
            raise RCDMError(
                f"--{name} is required: give it, or --resume a run folder whose {record} records it"
                + (f" ({args.out!r} has none)" if args.resume else "")
            )
    return out


def add_config_options(
    p: argparse.ArgumentParser,
    settings: type,
    helps: dict[str, str],
    choices: dict[str, Sequence[str]] | None = None,
) -> None:
    """One `--field-name` option per entry of `helps`, for the dataclass `settings`' field of that name: its type
    from the field's annotation (int, float or str; a Literal's values become the choices, unless `choices` names
    them), default None (so that a run's saved settings, then the dataclass default, apply: `settings_from_args`),
    and the help followed by the field's default, which is declared once, in the dataclass. A help that speaks of
    its own default is kept as it is."""
    hints = typing.get_type_hints(settings)
    fields_ = {f.name: f for f in fields(settings)}
    for name, help in helps.items():
        kind = hints[name]
        options = [a for a in typing.get_args(kind) if a is not type(None)] if typing.get_origin(kind) else []
        literal = _literal_values(kind)
        kwargs: dict[str, Any] = {}
        if choices and name in choices:
            kwargs["choices"] = tuple(choices[name])
        elif literal:
            kwargs["choices"] = literal
        else:
            base = options[0] if options else kind
            if base in (int, float):
                kwargs["type"] = base
        default = fields_[name].default
        if "default" not in help and default is not MISSING:
            shown = f"{default:g}" if isinstance(default, float) else default
            help = f"{help} (default: {shown})"
        p.add_argument(f"--{name.replace('_', '-')}", default=None, help=help, **kwargs)


def _literal_values(kind: Any) -> tuple[str, ...]:
    """The values of a Literal annotation (also inside a union: Literal[...] | Literal[...]), else ()."""
    if typing.get_origin(kind) is typing.Literal:
        return tuple(typing.get_args(kind))
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return tuple(v for a in typing.get_args(kind) for v in _literal_values(a))
    return ()
