"""Hub models: `--model user/repo[@rev]` from huggingface_hub's cache (no network), offline errors in one line,
and `rcdm push` with a model card (the HTTP layer replaced by a recorder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from rcdm.cli import main
from rcdm.errors import RCDMError
from rcdm.hub import parse_hub_ref, push
from rcdm.loading import load_model, resolve_model_dir
from rcdm.model import RCDM

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def tiny_model(seed: int = 0) -> RCDM:
    torch.manual_seed(seed)
    return RCDM.from_preset("tiny", representation_dim=6, encoder="pixels:1", feature="backbone")


def put_in_cache(cache: Path, repo: str, model: RCDM, revision: str = "main", commit: str = COMMIT) -> None:
    """The layout huggingface_hub writes: models--user--repo/{refs/<rev>, snapshots/<commit>/...}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    model.save_pretrained(root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)


def test_a_revision_or_name_that_walks_out_of_the_cache_is_no_hub_reference(offline_cache, capsys, tmp_path):
    assert parse_hub_ref("evil/good@../../../../mdl/good") is None
    assert parse_hub_ref("evil/good@/etc") is None and parse_hub_ref("../good") is None
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    argv = ["sample", "--model", "evil/good@../../x", "--images", str(tmp_path / "a.png")]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "evil/good@../../x" in capsys.readouterr().err


def test_hub_references_parse():
    assert parse_hub_ref("me/rcdm-r20") == ("me/rcdm-r20", None)
    assert parse_hub_ref("me/rcdm-r20@v1.0") == ("me/rcdm-r20", "v1.0")
    for not_a_ref in ("runs/a/b", "official:dino-backbone", "model", "/abs/path", "me/"):
        assert parse_hub_ref(not_a_ref) is None


def test_a_cached_hub_model_loads_offline_at_any_revision(offline_cache):
    m, other = tiny_model(0), tiny_model(1)
    put_in_cache(offline_cache, "me/r", m)
    put_in_cache(offline_cache, "me/r", other, revision="v2", commit="f" * 40)
    loaded = load_model("me/r")
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), m.state_dict().values(), strict=True)
    )
    assert resolve_model_dir("me/r@v2").name == "f" * 40
    assert load_model("me/r@v2").config.encoder == "pixels:1"


def test_an_uncached_hub_model_offline_is_one_line(offline_cache, capsys, tmp_path):
    out = str(tmp_path / "o")
    argv = ["sample", "--model", "me/missing", "--images", str(tmp_path / "x.png"), "--out", out]
    (tmp_path / "x.png").write_bytes(b"")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'me/missing'" in err and "huggingface-cli download me/missing" in err


def test_a_local_folder_wins_over_a_hub_name(offline_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_model().save_pretrained(tmp_path / "me" / "r")
    assert resolve_model_dir("me/r") == Path("me/r")


class RecordingApi:
    """Stands in for HfApi: records what would be sent instead of sending it."""

    def __init__(self):
        self.repo, self.files = None, {}

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.repo = (repo_id, private)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, commit_message=None):
        self.files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}


def test_push_uploads_the_model_and_a_card(tmp_path):
    run = tmp_path / "run"
    tiny_model().save_pretrained(run / "model")
    settings = {
        "data": "/data/cifar10/train",
        "num_images": 50000,
        "steps": 8000,
        "batch_size": 64,
        "loss": "hybrid",
    }
    api = RecordingApi()
    url = push(run / "model", "me/r", run=settings, metrics={"rank-1": 0.3}, private=True, api=api)
    assert url == "https://huggingface.co/me/r" and api.repo == ("me/r", True)
    assert {
        "config.json",
        "diffusion_pytorch_model.rcdm.safetensors",
        "README.md",
        "run.json",
        "metrics.json",
    } <= set(api.files)
    card = api.files["README.md"].decode()
    for fact in (
        "library_name: rcdm",
        "license: apache-2.0",
        "`pixels:1`",
        "50000 images",
        "8000 / 64",
        "rank-1 | 0.3",
    ):
        assert fact in card, fact
    assert "rcdm sample --model me/r" in card
    assert json.loads(api.files["config.json"])["encoder"] == "pixels:1"


def _unloadable(folder: Path, how: str) -> Path:
    tiny_model().save_pretrained(folder)
    weights = folder / "diffusion_pytorch_model.rcdm.safetensors"
    if how == "config":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "dropout": 5.0}))
    elif how == "nan":
        from safetensors.torch import load_file, save_file

        state = load_file(weights)
        name = next(iter(state))
        state[name] = torch.full_like(state[name], float("nan"))
        save_file(state, weights)
    else:  # a pickle under the safetensors name
        torch.save({"x": torch.zeros(1)}, weights)
    return folder


@pytest.mark.parametrize("how", ["config", "nan", "pickle"])
def test_push_refuses_a_model_that_would_not_load_before_uploading_anything(tmp_path, how):
    api = RecordingApi()
    with pytest.raises(RCDMError):
        push(_unloadable(tmp_path / "m", how), "me/r", api=api)
    assert api.repo is None and api.files == {}
