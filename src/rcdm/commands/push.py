"""rcdm push: upload a trained model and its model card to the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import RCDMError
from ..hub import push
from ..loading import resolve_model_dir
from .common import add_command, read_json_object

EPILOG = """examples:
  huggingface-cli login
  rcdm push runs/r20 me/rcdm-cifar10-resnet20          # the run's final model, its run.json and a model card
  rcdm push runs/r20 me/rcdm-cifar10-resnet20 --metrics faith.json --private
  rcdm sample --model me/rcdm-cifar10-resnet20 --images my.jpg --out samples/   # anyone, afterwards
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "push", "upload a model to the Hugging Face Hub with a model card", EPILOG)
    p.add_argument("model", help="a run folder from `rcdm train` or a saved model folder")
    p.add_argument("repo", help="the hub repo id, user/repo (created if missing)")
    p.add_argument(
        "--metrics", default=None, help="JSON file of {metric name: value} for the model card (default: none)"
    )
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--token", default=None, help="hub token (default: the one `huggingface-cli login` saved)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not Path(args.model).is_dir():
        raise RCDMError(
            f"rcdm push uploads a local folder, and {args.model!r} is none: pass a run folder from `rcdm train` "
            "or a saved model folder"
        )
    folder = resolve_model_dir(args.model)
    run_json = Path(args.model) / "run.json"
    settings = read_json_object(str(run_json), "the run's record") if run_json.is_file() else None
    metrics = read_json_object(args.metrics, "--metrics")
    url = push(folder, args.repo, run=settings, metrics=metrics, private=args.private, token=args.token)
    print(f"pushed {folder} to {url}")
    return 0
