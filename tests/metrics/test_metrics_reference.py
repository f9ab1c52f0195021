"""Our quality metrics equal the reference implementations on the same features: torch-fidelity (FID, KID, IS)
and the authors' `prdc` package (precision, recall, density, coverage). Test-only dependency: prdc."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric

from rcdm.metrics.quality import (
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    manifold_metrics,
)


def features(n: int, dim: int, shift: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g) / dim**0.5  # correlated dimensions: a non-diagonal covariance
    return (torch.randn(n, dim, generator=g) @ mix + shift).double()


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_fid_equals_torch_fidelity(shift):
    real, fake = features(600, 32, 0.0, 0), features(500, 32, shift, 1)
    ours = frechet_distance(real.mean(0), torch.cov(real.T), fake.mean(0), torch.cov(fake.T))
    s1, s2 = fid_features_to_statistics(real), fid_features_to_statistics(fake)
    want = fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID]
    assert want > 0 and rel(ours, want) < 1e-3, (ours, want)


def test_kid_equals_torch_fidelity_on_whole_sets():
    # One subset of the whole sets: the unbiased MMD^2 does not depend on the row order, so both draw the same.
    real, fake = features(300, 16, 0.0, 2), features(300, 16, 0.2, 3)
    mean, _, size = kernel_inception_distance(real, fake, subsets=1, subset_size=300)
    want = kid_features_to_metric(real, fake, kid_subsets=1, kid_subset_size=300, verbose=False)
    assert size == 300 and rel(mean, want[KEY_METRIC_KID_MEAN]) < 1e-3, (mean, want)


def test_inception_score_equals_torch_fidelity():
    logits = features(1000, 10, 0.0, 4) * 3
    ours, _ = inception_score(logits, splits=1)
    want = isc_features_to_metric(logits, splits=1, shuffle=False)[KEY_METRIC_ISC_MEAN]
    assert ours > 1 and rel(ours, want) < 1e-3, (ours, want)


@pytest.mark.parametrize("k", [3, 5])
def test_precision_recall_density_coverage_equal_prdc(k, capsys):
    prdc = pytest.importorskip("prdc", reason="prdc is the dev extra's reference implementation")
    real, fake = features(400, 8, 0.0, 5).float(), features(300, 8, 0.4, 6).float()
    ours = manifold_metrics(real, fake, k_pr=k, k_dc=k)
    want = prdc.compute_prdc(real_features=real.numpy(), fake_features=fake.numpy(), nearest_k=k)
    capsys.readouterr()  # prdc prints the set sizes
    for name in ("precision", "recall", "density", "coverage"):
        assert want[name] > 0 and rel(ours[name], float(want[name])) < 1e-3, (name, ours[name], want[name])
    assert np.isfinite(list(ours.values())).all()
