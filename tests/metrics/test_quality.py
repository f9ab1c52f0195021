"""Quality metrics: pure-tensor checks of FID/KID/PR against references, FID on CIFAR features, the quality CLI."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rcdm.cli import main
from rcdm.metrics import (
    EncoderFeatures,
    extract_features,
    frechet_distance,
    kernel_inception_distance,
    manifold_metrics,
    mmd2_unbiased,
)

# --- quality: pure tensors --------------------------------------------------------------------------------


def test_frechet_distance_matches_torchmetrics():
    from torchmetrics.image.fid import _compute_fid

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 8, generator=g).double(), (torch.randn(300, 8, generator=g) * 1.5 + 0.3).double()
    mu_a, mu_b, ca, cb = a.mean(0), b.mean(0), a.T.cov(), b.T.cov()
    assert frechet_distance(mu_a, ca, mu_b, cb) == pytest.approx(
        float(_compute_fid(mu_a, ca, mu_b, cb)), rel=1e-6
    )
    assert abs(frechet_distance(mu_a, ca, mu_a, ca)) < 1e-6


def test_kid_is_unbiased_on_small_sets():
    from torchmetrics.image.kid import poly_mmd

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 10, generator=g), torch.randn(20, 10, generator=g)
    assert mmd2_unbiased(x, y) == pytest.approx(float(poly_mmd(x.double(), y.double())), rel=1e-6)
    # Expectation of the unbiased estimator is 0 for two samples of one distribution, even with 10 points each
    # (the biased V-statistic would be clearly positive).
    vals = torch.tensor(
        [
            mmd2_unbiased(torch.randn(10, 10, generator=g), torch.randn(10, 10, generator=g))
            for _ in range(400)
        ]
    )
    assert abs(vals.mean()) < 3 * vals.std() / 400**0.5
    shifted = kernel_inception_distance(
        torch.randn(30, 10, generator=g), torch.randn(30, 10, generator=g) + 1, subsets=20
    )
    same = kernel_inception_distance(
        torch.randn(30, 10, generator=g), torch.randn(30, 10, generator=g), subsets=20
    )
    assert shifted[2] == 30 and shifted[0] > 10 * abs(same[0])


def test_precision_recall_of_a_set_against_itself_is_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g)
    m = manifold_metrics(x, x.clone(), chunk=128)
    assert m["precision"] == 1 and m["recall"] == 1 and m["coverage"] == 1
    far = manifold_metrics(x, torch.randn(500, 16, generator=g) + 10, chunk=128)
    assert far["precision"] == 0 and far["recall"] == 0 and far["coverage"] == 0 and far["density"] == 0
    same_dist = manifold_metrics(x, torch.randn(500, 16, generator=g))
    assert 0.5 < same_dist["precision"] <= 1 and 0.5 < same_dist["density"] < 1.5


# --- quality on CIFAR features ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet56_features(resnet56_path: Path) -> EncoderFeatures:
    from rcdm.encoders import create_encoder

    return EncoderFeatures(create_encoder(f"cifar-resnet56:{resnet56_path}"))


def _class_files(cifar_root: Path, cls: str, start: int, count: int) -> list[Path]:
    return sorted((cifar_root / "test" / cls).glob("*.jpg"))[start : start + count]


def test_fid_orders_cifar_sets(cifar_root: Path, resnet56_features: EncoderFeatures, tmp_path: Path):
    cats_a = _class_files(cifar_root, "cat", 0, 120)
    cats_b = _class_files(cifar_root, "cat", 120, 120)
    planes = _class_files(cifar_root, "airplane", 0, 120)
    store = tmp_path / "store"
    fa, fb, fp = (
        extract_features(f, resnet56_features, store, batch_size=64) for f in (cats_a, cats_b, planes)
    )
    assert fa.count == 120 and fa.dim == 64 and fa.has_logits
    self_fid = frechet_distance(*fa.mean_cov(), *fa.mean_cov())
    halves = frechet_distance(*fa.mean_cov(), *fb.mean_cov())
    classes = frechet_distance(*fa.mean_cov(), *fp.mean_cov())
    print(f"FID[resnet56] self {self_fid:.4g}, cat halves {halves:.3f}, cat vs airplane {classes:.3f}")
    assert abs(self_fid) < 1e-6
    assert classes > 2 * halves > 0
    # The store is reused: a second call extracts nothing (no new marker) and reads the same numbers.
    again = extract_features(cats_a, resnet56_features, store, batch_size=64)
    assert again.folder == fa.folder and torch.equal(
        torch.cat(list(again.chunks())), torch.cat(list(fa.chunks()))
    )


# --- CLI -------------------------------------------------------------------------------------------------


def _folder(files: list[Path], dest: Path) -> Path:
    dest.mkdir(parents=True)
    for f in files:
        shutil.copy(f, dest / f.name)
    return dest


def test_cli_quality_writes_json_and_markdown(cifar_root: Path, resnet56_path: Path, tmp_path: Path, capsys):
    real = _folder(_class_files(cifar_root, "dog", 0, 40), tmp_path / "real")
    fake = _folder(_class_files(cifar_root, "dog", 40, 40), tmp_path / "fake")
    out = tmp_path / "q" / "quality.json"
    spec = f"cifar-resnet56:{resnet56_path}"
    argv = ["evaluate", "quality", "--real", str(real), "--fake", str(fake), "--extractor", spec]
    assert main([*argv, "--out", str(out), "--num-workers", "0", "--kid-subsets", "10"]) == 0
    data = json.loads(out.read_text())
    assert data["features"] == spec and data["standard"] is False
    assert data["num_real"] == data["num_fake"] == 40 and data["settings"]["kid_subset_size"] == 40
    assert data["fid"] > 0 and 0 <= data["precision"] <= 1 and 0 <= data["coverage"] <= 1
    assert 1 <= data["inception_score"] <= 10 and "non-standard" in data["inception_score_note"]
    md = out.with_suffix(".md").read_text()
    assert f"{data['fid']:.4f}" in md and f"FID [{spec}]" in md and f"{data['recall']:.4f}" in md
    assert (tmp_path / "q" / "quality.features").is_dir()
    self_out = tmp_path / "self.json"
    assert (
        main([*argv[:4], "--fake", str(real), *argv[6:], "--out", str(self_out), "--num-workers", "0"]) == 0
    )
    same = json.loads(self_out.read_text())
    assert abs(same["fid"]) < 1e-6 and same["precision"] == 1 and same["recall"] == 1
    assert "FID" in capsys.readouterr().out


def test_fid_from_real_stats_equals_fid_from_the_real_images(
    cifar_root: Path, resnet56_path: Path, tmp_path: Path, capsys
):
    import numpy as np

    real = _folder(_class_files(cifar_root, "cat", 0, 40), tmp_path / "real")
    fake = _folder(_class_files(cifar_root, "dog", 0, 40), tmp_path / "fake")
    spec = f"cifar-resnet56:{resnet56_path}"
    argv = ["evaluate", "quality", "--fake", str(fake), "--extractor", spec, "--num-workers", "0"]
    assert main([*argv, "--real", str(real), "--out", str(tmp_path / "a.json"), "--kid-subsets", "5"]) == 0
    images = json.loads((tmp_path / "a.json").read_text())
    feats = np.load(Path(images["settings"]["real_store"]) / "features.npy").astype(np.float64)
    # ADM's reference-batch layout: the images (arr_0) beside mu/sigma (and the spatial mu_s/sigma_s).
    stats = tmp_path / "ref.npz"
    np.savez(
        stats,
        arr_0=np.zeros((2, 8, 8, 3), np.uint8),
        mu=feats.mean(0),
        sigma=np.cov(feats, rowvar=False),
        mu_s=np.zeros(3),
        sigma_s=np.eye(3),
    )
    both = ["--real", str(real), "--real-stats", str(stats), "--kid-subsets", "5"]
    assert main([*argv, *both, "--out", str(tmp_path / "b.json")]) == 0
    with_stats = json.loads((tmp_path / "b.json").read_text())
    assert with_stats["fid"] == pytest.approx(images["fid"], rel=1e-6) and images["fid"] > 1
    assert with_stats["fid_reference"] == str(stats) and images["fid_reference"] == "real images"
    assert with_stats["kid"] == images["kid"] and with_stats["precision"] == images["precision"]
    # Statistics alone: FID (and IS, from the fake logits); the scores that need real images are null.
    assert main([*argv, "--real-stats", str(stats), "--out", str(tmp_path / "c.json")]) == 0
    alone = json.loads((tmp_path / "c.json").read_text())
    assert alone["fid"] == pytest.approx(images["fid"], rel=1e-6)
    assert alone["num_real"] is None and alone["kid"] is None and alone["precision"] is None
    assert alone["inception_score"] == pytest.approx(images["inception_score"])
    assert "n/a" in (tmp_path / "c.md").read_text()
    capsys.readouterr()


def test_real_stats_files_are_checked_in_one_line(
    few_images: Path, resnet20_spec: str, tmp_path: Path, capsys
):
    import numpy as np

    def run(stats: Path) -> str:
        argv = ["evaluate", "quality", "--fake", str(few_images), "--extractor", resnet20_spec]
        assert main([*argv, "--real-stats", str(stats), "--out", str(tmp_path / "q.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(stats) in err
        return err

    images_only = tmp_path / "images.npz"
    np.savez(images_only, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    assert "no mu/sigma" in run(images_only) and "arr_0" in run(images_only)
    inception = tmp_path / "inception.npz"
    np.savez(inception, mu=np.zeros(2048), sigma=np.eye(2048))
    assert "2048-d" in run(inception) and "64-d" in run(inception)
    square = tmp_path / "bad-sigma.npz"
    np.savez(square, mu=np.zeros(64), sigma=np.eye(63))
    assert "(63, 63)" in run(square)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(1))
    assert "allow_pickle=False" in run(pickled)  # never unpickled
    assert "No such file" in run(tmp_path / "absent.npz")
    text = tmp_path / "notes.npz"
    text.write_text("hello\n")
    said = run(text)
    assert "not a numpy .npz" in said and "allow_pickle" not in said  # numpy's unsafe advice is never relayed
    assert not (tmp_path / "q.json").exists()
    argv = ["evaluate", "quality", "--fake", str(few_images), "--out", str(tmp_path / "q.json")]
    assert main(argv) == 2 and "--real-stats" in capsys.readouterr().err


def _offline_inception(monkeypatch, tmp_path: Path, url: str = "http://127.0.0.1:9/") -> str:
    """TORCH_HOME in tmp_path and the Inception URL on the discard port (refused at once: offline, no network)."""
    from rcdm.metrics import features

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("RCDM_INCEPTION_WEIGHTS", raising=False)
    remote = features.INCEPTION_WEIGHTS
    url = url + remote.filename if url.endswith("/") else url
    monkeypatch.setattr(features, "INCEPTION_WEIGHTS", replace(remote, url=url))
    return url


def test_cli_missing_inception_weights_is_a_one_line_error(
    few_images: Path, tmp_path: Path, monkeypatch, capsys
):
    url = _offline_inception(monkeypatch, tmp_path)
    argv = ["evaluate", "quality", "--real", str(few_images), "--fake", str(few_images)]
    assert main([*argv, "--out", str(tmp_path / "q.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert url in err and "weights-inception-2015-12-05-6726825d.pth" in err and "--inception-weights" in err
    assert (
        str(tmp_path / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth") in err
    )
    assert (
        main([*argv, "--out", str(tmp_path / "q.json"), "--inception-weights", str(tmp_path / "nope.pth")])
        == 2
    )
    assert "nope.pth" in capsys.readouterr().err
    assert not (tmp_path / "q.json").exists()


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


def test_a_bad_real_stats_file_is_named_before_the_inception_weights_are_fetched(
    few_images: Path, tmp_path: Path, monkeypatch, capsys
):
    url = _offline_inception(monkeypatch, tmp_path)
    absent = tmp_path / "absent.npz"
    argv = ["evaluate", "quality", "--fake", str(few_images), "--real-stats", str(absent)]
    assert main([*argv, "--out", str(tmp_path / "q.json")]) == 2
    err = capsys.readouterr().err
    assert str(absent) in err and url not in err
