"""rcdm.metrics.features: the Inception feature extractor and its weights (read without unpickling objects,
downloaded once and checked)."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
import torch


def test_inception_features_load_the_files_weights_without_unpickling_objects(tmp_path: Path, monkeypatch):
    """The FID network gets exactly the file's tensors; a file holding other objects never reaches torch-fidelity."""
    import pathlib

    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    from rcdm.errors import RCDMError
    from rcdm.metrics.features import InceptionFeatures

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with monkeypatch.context() as m:  # a randomly initialised network, for weights that are not the real ones
        m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        state = tf_inception.FeatureExtractorInceptionV3("x", ["2048"], empty).state_dict()
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    got = InceptionFeatures(path).net.state_dict()
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    torch.save({"w": pathlib.PurePosixPath("x")}, tmp_path / "pickled.pth")
    with pytest.raises(RCDMError, match="cannot read Inception weights"):
        InceptionFeatures(tmp_path / "pickled.pth")
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(RCDMError, match="is not the FID Inception-v3"):
        InceptionFeatures(tmp_path / "other.pth")


def test_inception_weights_record_is_torch_fidelitys_file():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    from rcdm.metrics.features import INCEPTION_WEIGHTS

    assert INCEPTION_WEIGHTS.url == URL_INCEPTION_V3
    # torch.hub's convention: the name carries the first hex digits of the file's sha256.
    assert INCEPTION_WEIGHTS.sha256 is not None and len(INCEPTION_WEIGHTS.sha256) == 64
    assert INCEPTION_WEIGHTS.sha256.startswith(INCEPTION_WEIGHTS.filename.rsplit("-", 1)[1].split(".")[0])


def test_inception_weights_are_downloaded_once_and_checked_at_every_use(tmp_path: Path, monkeypatch):
    import hashlib

    from rcdm.errors import RCDMError
    from rcdm.metrics import features

    src = tmp_path / "served.pth"
    src.write_bytes(b"inception" * 1000)
    _offline_inception(monkeypatch, tmp_path, src.as_uri())
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    monkeypatch.setattr(
        features, "INCEPTION_WEIGHTS", replace(features.INCEPTION_WEIGHTS, size=9000, sha256=digest)
    )
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert features.find_inception_weights(progress=False) == cached
    assert cached.read_bytes() == src.read_bytes()
    src.unlink()  # the second use reads the cache, no download
    assert features.find_inception_weights(progress=False) == cached
    cached.write_bytes(b"x" * 9000)  # same size, other content
    with pytest.raises(RCDMError, match="sha256"):
        features.find_inception_weights(progress=False)
    # A download with the wrong digest is refused and leaves nothing in the cache.
    cached.unlink()
    src.write_bytes(b"y" * 9000)
    with pytest.raises(RCDMError, match="sha256"):
        features.find_inception_weights(progress=False)
    assert not cached.exists() and not cached.with_name(cached.name + ".part").exists()


def test_inception_extractor_with_a_weights_file(random_inception):
    """The FID network's plumbing, with random weights of the right shape (the real file is not available)."""
    from rcdm.errors import RCDMError
    from rcdm.metrics import create_feature_extractor

    _, weights, empty = random_inception
    extractor = create_feature_extractor("inception", weights)
    assert extractor.standard and extractor.has_logits and extractor.name == "inception-v3"
    feats, logits = extractor(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and logits is not None and logits.shape == (2, 1008)
    with pytest.raises(RCDMError, match="not the FID Inception"):
        create_feature_extractor("inception", empty)


def _offline_inception(monkeypatch, tmp_path: Path, url: str = "http://127.0.0.1:9/") -> str:
    """TORCH_HOME in tmp_path and the Inception URL on the discard port (refused at once: offline, no network)."""
    from rcdm.metrics import features

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("RCDM_INCEPTION_WEIGHTS", raising=False)
    remote = features.INCEPTION_WEIGHTS
    url = url + remote.filename if url.endswith("/") else url
    monkeypatch.setattr(features, "INCEPTION_WEIGHTS", replace(remote, url=url))
    return url
