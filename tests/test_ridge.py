"""rcdm.ridge: the closed-form map from one representation space to another."""

from __future__ import annotations

import pytest
import torch

from rcdm.errors import RCDMError
from rcdm.ridge import fit_ridge


def test_ridge_recovers_a_linear_map_and_scores_held_out_images():
    torch.manual_seed(0)
    x = torch.randn(400, 5)
    w, b = torch.randn(3, 5), torch.randn(3)
    exact = fit_ridge(x, x @ w.T + b)
    assert exact.r2_heldout > 0.9999
    torch.testing.assert_close(exact.weight, w, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(exact.bias, b, atol=1e-3, rtol=1e-3)
    noisy = fit_ridge(x, x @ w.T + b + 3 * torch.randn(400, 3))
    assert 0.1 < noisy.r2_heldout < 0.9
    with pytest.raises(RCDMError, match="too few"):
        fit_ridge(x[:2], x[:2])
