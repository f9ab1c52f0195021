"""Models on the Hugging Face Hub: `--model user/repo[@revision]` through huggingface_hub's cache, and
`rcdm push RUN user/repo` with a generated model card.

A hub repo holds one rcdm model folder at its root (config.json + diffusion_pytorch_model.rcdm.safetensors, as
`RCDM.save_pretrained` writes) plus README.md (the model card). Downloads go to huggingface_hub's own cache
(HF_HOME / HF_HUB_CACHE), so a model fetched once is reused offline (HF_HUB_OFFLINE=1 never touches the network).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from . import figures
from .errors import RCDMError, first_line


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The network errors huggingface_hub lets through: httpx's (hub 1.x), httpx2's (hub 2.x) or requests' (0.x),
    whichever are installed; looked up here because which one the installed hub uses is not ours to pin."""
    found: list[type[BaseException]] = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for module, name in (
        ("httpx", "TransportError"),
        ("httpx2", "TransportError"),
        ("requests", "ConnectionError"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


# user/repo, optionally @revision (a branch, tag or commit); names as the hub allows them.
_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")
MODEL_FILES = ["config.json", "*.safetensors", "README.md", "metrics.json", "run.json"]


def parse_hub_ref(text: str) -> tuple[str, str | None] | None:
    """'user/repo[@rev]' -> (repo id, revision or None); None when `text` is not such a reference."""
    m = _REF.match(text)
    if m is None or ".." in m["repo"] or (m["rev"] and (".." in m["rev"] or m["rev"].startswith("/"))):
        return None  # '..' would walk out of the hub cache: the revision becomes a path there
    return m["repo"], m["rev"]


def resolve_hub_model(text: str) -> Path:
    """A hub reference -> the local snapshot folder holding the model (downloaded once, then cached)."""
    ref = parse_hub_ref(text)
    if ref is None:
        raise RCDMError(f"{text!r} is not a hub model reference: use user/repo or user/repo@revision")
    repo, rev = ref
    try:
        folder = Path(snapshot_download(repo, revision=rev, allow_patterns=MODEL_FILES, library_name="rcdm"))
    except LocalEntryNotFoundError:
        raise RCDMError(
            f"model {text!r} is no local folder, and as a hub repo it is not in the Hugging Face cache and the "
            f"hub cannot be reached (offline or HF_HUB_OFFLINE=1): check the path, or run `huggingface-cli "
            f"download {repo}` where there is internet and copy the cache (HF_HOME)"
        ) from None
    except RevisionNotFoundError:
        raise RCDMError(f"repo {repo!r} has no revision {rev!r}: check the branch, tag or commit") from None
    except RepositoryNotFoundError:
        raise RCDMError(
            f"no model repo {repo!r} on the hub (or it is private: log in with `huggingface-cli login`)"
        ) from None
    except HfHubHTTPError as e:
        raise RCDMError(f"the hub refused {text!r}: {first_line(e)}") from None
    if not (folder / "config.json").is_file():
        raise RCDMError(f"hub repo {text!r} holds no rcdm model (config.json): is it an rcdm repo?")
    return folder


def model_card(
    config: dict[str, Any], *, repo_id: str, run: dict[str, Any] | None, metrics: dict | None
) -> str:
    """README.md for a pushed model: what it is conditioned on, what it was trained on, how to use it."""
    run = run or {}
    license_ = "apache-2.0"
    rows = [
        (
            "encoder",
            f"`{config.get('encoder')}` ({config.get('feature')}, {config.get('representation_dim')}-d)",
        ),
        ("encoder identity", f"`{config.get('encoder_identity')}`"),
        ("image size", f"{config.get('sample_size')} px"),
        (
            "training data",
            f"`{run['data']}` ({run.get('num_images', '?')} images)" if run.get("data") else "not recorded",
        ),
        (
            "steps / batch",
            f"{run.get('steps', '?')} / {run.get('batch_size', '?')}" if run else "not recorded",
        ),
        ("loss", run.get("loss", "not recorded")),
    ]
    usage = (
        "```bash\npip install rcdm\n"
        f"rcdm sample --model {repo_id} --images my.jpg --num-samples 8 --out samples/\n```"
    )
    return figures.model_card(
        repo_id,
        [
            "A Representation-Conditional Diffusion Model (Bordes, Balestriero, Vincent, TMLR 2022): samples drawn "
            "from one image's representation show what the representation keeps.",
            usage,
        ],
        [*rows, *(metrics or {}).items()],
        sections=[
            (
                "Licence and citation",
                "The weights' licence is the uploader's choice (Apache-2.0 by default); weights trained on CC-BY-NC "
                "data or encoders inherit those terms. Cite the paper: https://openreview.net/forum?id=urfWb7VjmL",
            )
        ],
        front_matter=[
            "library_name: rcdm",
            f"license: {license_}",
            "tags:",
            "- rcdm",
            "- diffusion",
            "- representation-learning",
        ],
    )


def push(
    model_dir: Path,
    repo_id: str,
    *,
    run: dict | None = None,
    metrics: dict | None = None,
    private: bool = False,
    token: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Upload an rcdm model folder and its model card to `repo_id` (created if missing); returns the repo URL."""
    if parse_hub_ref(repo_id) is None or "@" in repo_id:
        raise RCDMError(f"{repo_id!r} is not a repo id: use user/repo")
    from .loading import load_model  # loading resolves hub references through this module

    load_model(model_dir)  # what users would download must load: config, strict weights, all finite
    config = json.loads((model_dir / "config.json").read_text())
    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        for f in model_dir.iterdir():
            if f.is_file() and (f.suffix == ".safetensors" or f.name == "config.json"):
                shutil.copy2(f, staged / f.name)
        if run is not None:
            (staged / "run.json").write_text(json.dumps(run, indent=2, default=str))
        if metrics:
            (staged / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (staged / "README.md").write_text(model_card(config, repo_id=repo_id, run=run, metrics=metrics))
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=staged, commit_message="rcdm push")
        except HfHubHTTPError as e:
            raise RCDMError(
                f"the hub refused the push to {repo_id!r}: {first_line(e)} (log in with `huggingface-cli login`)"
            ) from None
        except _transport_errors() as e:
            raise RCDMError(
                f"cannot reach the hub to push to {repo_id!r} ({type(e).__name__}: {first_line(e)}): "
                "check the network (and that HF_HUB_OFFLINE is not set), then run again"
            ) from None
    return str(url)
