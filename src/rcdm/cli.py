"""`rcdm` command line: a thin layer that parses, resolves presets, calls one API function and saves.

Each subcommand lives in rcdm/commands/<name>.py with `add_parser(subparsers)` setting `func(args) -> int`.
User mistakes (RCDMError) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import sys

from .commands.common import HelpFormatter
from .devices import check_device
from .errors import NonFiniteLossError, RCDMError, TrainingInterrupted

COMMANDS = (
    "train",
    "adapt",
    "sample",
    "invert",
    "prior",
    "generate",
    "encode",
    "convert",
    "export",
    "analyze",
    "evaluate",
    "demo",
    "recipe",
    "push",
    "app",
    "models",
)


EPILOG = """examples (`rcdm COMMAND --help` for each command's options and examples):
  rcdm demo                                                             # offline demo, demo-out/index.html
  rcdm sample --model official:dino-backbone --images my.jpg --out samples/
  rcdm train --data ~/data/cifar10/train --encoder cifar-resnet20:resnet20.th --out runs/r20
"""


def _version() -> str:
    try:
        return importlib.metadata.version("rcdm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcdm",
        description="See what an image encoder's representation keeps.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug information")
    parser.add_argument("--version", action="version", version=f"rcdm {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:  # a command module that fails to import fails the whole CLI, loudly
        importlib.import_module(f"rcdm.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("accelerate", "diffusers", "PIL", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if getattr(args, "no_progress", None) is False and not sys.stderr.isatty():
        # a log file or pipe: no progress bars, whose carriage returns garble it (training logs plain lines)
        args.no_progress = True
    try:
        if isinstance(
            getattr(args, "device", None), str
        ):  # every command's --device, checked before any work
            check_device(args.device)
        return int(args.func(args) or 0)
    except (RCDMError, NonFiniteLossError) as e:
        print(f"rcdm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:  # a checkpoint was written: say where, exit as the signal would
        if os.environ.get("RANK", "0") == "0":  # once, not once per process of a torchrun launch
            print(f"rcdm {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"rcdm {args.command}: interrupted", file=sys.stderr)
        return 130


def entry(argv: list[str] | None = None) -> int:
    """The `rcdm` command: `main`, plus a safety net that turns an unforeseen exception into one line (exit 1).

    `main` itself lets such exceptions through, so tests and Python callers see the real one; `-v` shows the
    traceback here too.
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        return main(argv)
    except BrokenPipeError:  # the reader went away (`rcdm models | head`): not an error of ours
        # Python's recipe: point stdout at devnull so that the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell tool killed by it returns
    except Exception as e:
        if "-v" in args or "--verbose" in args:
            raise
        what = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        print(f"rcdm: internal error: {what}", file=sys.stderr)
        print(
            "rcdm: this is a bug in rcdm, not your input: rerun with -v for the traceback and report it",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(entry())
