"""Ridge regression from one representation space to another, the regulariser chosen on held-out rows: the
closed-form map `rcdm adapt` starts from."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import RCDMError

# Ridge regularisers searched on the held-out images, in units of the number of training pairs.
RIDGE_ALPHAS = tuple(10.0**k for k in range(-7, 3))


@dataclass(frozen=True)
class RidgeMap:
    """z_base ~ weight @ z_new + bias, z_new standardised (weight (d_base, d_new), bias (d_base,))."""

    weight: torch.Tensor
    bias: torch.Tensor
    alpha: float  # the chosen regulariser, x n
    r2_heldout: float  # 1 - SSE / SST over every base dimension, on the held-out images


@torch.no_grad()
def fit_ridge(
    x: torch.Tensor, y: torch.Tensor, holdout: float = 0.1, alphas: tuple[float, ...] = RIDGE_ALPHAS
) -> RidgeMap:
    """Ridge regression y ~ W x + b, x (N, d_in) standardised, y (N, d_out); the regulariser (alpha x n) with the
    best held-out R^2 (the last `holdout` share of the rows), then refitted on every row.

    Written out (a few lines of linear algebra in float64) rather than through scikit-learn, which rcdm does not
    otherwise need.
    """
    n = x.shape[0]
    k = max(1, round(n * holdout))
    if n - k < 2:
        raise RCDMError(f"{n} images are too few to fit and check a map: use at least {k + 2}")
    x, y = x.double(), y.double()

    def solve(xs: torch.Tensor, ys: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        mx, my = xs.mean(0), ys.mean(0)
        xc, yc = xs - mx, ys - my
        gram = xc.T @ xc + alpha * xs.shape[0] * torch.eye(xs.shape[1], dtype=xs.dtype)
        w = torch.linalg.solve(gram, xc.T @ yc).T  # (d_out, d_in)
        return w, my - w @ mx

    def r2(w: torch.Tensor, b: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> float:
        sse = ((xs @ w.T + b - ys) ** 2).sum()
        return float(1 - sse / ((ys - ys.mean(0)) ** 2).sum().clamp_min(1e-12))

    scores = {a: r2(*solve(x[: n - k], y[: n - k], a), x[n - k :], y[n - k :]) for a in alphas}
    best = max(scores, key=scores.__getitem__)
    w, b = solve(x, y, best)
    return RidgeMap(w.float(), b.float(), best, scores[best])
