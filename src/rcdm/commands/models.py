"""rcdm models: the models --model finds by name (the bundled pack, the published checkpoints)."""

from __future__ import annotations

import argparse

from ..figures import markdown_table
from ..loading import list_models
from ..prior import installed_priors
from .common import add_command

EPILOG = """examples:
  rcdm models
  rcdm sample --model cifar10-vicreg-backbone --images cat.jpg --out samples/
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "models", "list the models --model takes by name (bundled and published)", EPILOG)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = [[m.name, m.kind, m.encoder, m.feature, m.note] for m in list_models()]
    print(markdown_table(["--model", "kind", "encoder", "feature", "notes"], rows), end="")
    priors = installed_priors()
    if priors:
        print(
            f"\nRepresentation priors (rcdm generate --prior NAME, the app's Dream tab): {', '.join(priors)}"
        )
    print("\nAny run folder, saved model folder or hub repo (user/repo[@revision]) works as --model too.")
    return 0
