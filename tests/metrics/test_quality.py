"""Quality metrics: pure-tensor checks of FID/KID/PR against references, FID on CIFAR features, the quality CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

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
