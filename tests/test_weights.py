"""Published weight files: downloads checked by size and sha256 (or the digest recorded at first use), offline errors."""

from __future__ import annotations

import hashlib
import logging

import pytest

from rcdm.cli import main
from rcdm.errors import RCDMError
from rcdm.loading import MODELS, PublishedModel
from rcdm.weights import Weights, fetch, recorded_digest_path

# --- downloads ------------------------------------------------------------------------------------------


def test_fetch_local_url_checks_size_and_sha256_and_logs_license_once(tmp_path, caplog):
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights" * 100)
    import hashlib

    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="rcdm.weights"):
        bad = Weights(src.as_uri(), "a.bin", size=5)
        with pytest.raises(RCDMError, match="700 bytes"):
            fetch(bad, cache, progress=False)
        assert not (cache / "a.bin").exists()
        with pytest.raises(RCDMError, match="sha256"):
            fetch(Weights(src.as_uri(), "b.bin", sha256="0" * 64), cache, progress=False)
        good = fetch(Weights(src.as_uri(), "c.bin", size=700, sha256=digest[:8]), cache, progress=False)
    assert good.read_bytes() == src.read_bytes()
    assert sum("CC-BY-NC" in r.getMessage() for r in caplog.records) == 1


def test_fetch_without_a_published_digest_records_the_first_and_checks_every_later_use(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights" * 100)
    cache = tmp_path / "cache"
    remote = Weights(src.as_uri(), "d.bin")  # no size, no sha256 published
    path = fetch(remote, cache, progress=False)
    record = recorded_digest_path(path)
    assert record.read_text().split()[0] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert fetch(remote, cache, progress=False) == path  # unchanged: still accepted
    path.write_bytes(b"tampered" * 100)
    with pytest.raises(RCDMError, match="changed since"):
        fetch(remote, cache, progress=False)
    # A file put in the cache by hand is recorded at its first use in the same way.
    (cache / "e.bin").write_bytes(b"by hand")
    hand = fetch(Weights("http://127.0.0.1:9/e.bin", "e.bin"), cache, progress=False)
    assert recorded_digest_path(hand).is_file()


def test_offline_named_model_error_names_url_and_cache_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RCDM_CACHE", str(tmp_path / "cache"))
    url = "http://127.0.0.1:9/rcdm_ema_dino_trunk.pt"  # nothing listens on the discard port: fails at once
    spec = MODELS["dino-backbone"]
    monkeypatch.setitem(
        MODELS,
        "dino-backbone",
        PublishedModel(Weights(url, "rcdm_ema_dino_trunk.pt"), spec.encoder, "backbone"),
    )
    img = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    code = main(
        ["sample", "--model", "official:dino-backbone", "--images", str(img), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert url in err and str(tmp_path / "cache" / "official" / "rcdm_ema_dino_trunk.pt") in err
    assert (
        main(["sample", "--model", "official:nope", "--images", str(img), "--out", str(tmp_path / "o")]) == 2
    )
    assert "dino-backbone" in capsys.readouterr().err
