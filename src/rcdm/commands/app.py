"""rcdm app: a local web page (gradio) to drop in a photo and see what each representation keeps."""

from __future__ import annotations

import argparse
import errno
import math
import socket

from ..errors import RCDMError
from .common import add_command, add_device_args

EPILOG = """examples:
  pip install -e '.[app]'
  rcdm app                                        # the bundled pack and cached official models
  rcdm app --model runs/r20 --model official:dino-backbone --port 8080
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "app",
        "a web page: drop in a photo, see what each representation keeps (needs rcdm[app])",
        EPILOG,
    )
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="run folder, saved model folder or official:NAME (repeat for several); "
        "default: the bundled CIFAR-10 pack, the models in --runs and cached official:NAME models",
    )
    p.add_argument(
        "--runs",
        action="append",
        default=None,
        help="without --model: also offer the run folders in this folder (repeatable; default: none)",
    )
    p.add_argument(
        "--prior",
        default=None,
        help="a representation prior (rcdm prior's --out, or an installed one's name): adds a Dream tab, images "
        "from representations it samples, for each picked model conditioned on the prior's encoder (default without "
        "--model: the installed prior, as the CIFAR-10 pack ships; 'none': no Dream tab)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (1-65535)")
    p.add_argument(
        "--request-limit",
        type=float,
        default=None,
        help="seconds one request may sample before it is stopped with a message, so one request cannot hold "
        "the page for minutes; 0 = no limit (default: 120)",
    )
    add_device_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..app import REQUEST_LIMIT_S, build_app, discover_models, start  # lazily: only needed here

    if not 1 <= args.port <= 65535:
        raise RCDMError(f"--port {args.port} is out of range: use a port from 1 to 65535 (default 7860)")
    limit = REQUEST_LIMIT_S if args.request_limit is None else args.request_limit
    if not (math.isfinite(limit) and limit >= 0):
        raise RCDMError(
            f"--request-limit {args.request_limit} must be a number of seconds >= 0 (0 = no limit)"
        )
    choices = discover_models(args.model or (), args.runs or (), trust_remote_code=args.trust_remote_code)
    from ..prior import installed_priors, load_prior

    # without --model the page offers the installed models, which the installed prior was made for
    name = args.prior or (None if args.model else next(iter(installed_priors()), None))
    prior = (
        None if name in (None, "none") else load_prior(name)
    )  # a bad folder is refused before the page starts
    app = build_app(choices, args.device, prior=prior, request_limit_s=limit or None)
    check_port_free(args.host, args.port)  # gradio would fail after building the page, with a trace
    url = start(app, args.host, args.port)
    where = (
        "this machine only"
        if args.host in ("127.0.0.1", "localhost")
        else f"every host that reaches {args.host}"
    )
    print(
        f"rcdm app: serving {len(choices)} model(s) at {url} (bound to {args.host}: {where}); Ctrl-C stops it"
    )
    try:
        app.block_thread()
    finally:
        app.close()
    return 0


def check_port_free(host: str, port: int) -> None:
    """Refuse, in one line, a port that another program holds (gradio would fail with a trace after loading)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gradio binds: a closing port is free
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise RCDMError(
                    f"--port {port} on {host} is in use by another program: choose another --port"
                ) from None
            raise RCDMError(
                f"cannot serve on {host}:{port}: {e.strerror or e}: check --host and --port"
            ) from None
