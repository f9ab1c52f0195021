"""Linear probe: a softmax regression on frozen representations, the other standard read of what they separate.

Fitted in full batch by L-BFGS with a small L2 penalty: a few lines spare the project a scikit-learn dependency,
and on the tens of thousands of 64- to 2048-d vectors it is used on (the benchmarks' probes) it converges in
seconds on one CPU thread.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def fit_linear_probe(
    x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float = 1e-4, max_iter: int = 300
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A softmax regression fitted on (x (N, dim), y (N,) class indices); returns z (M, dim) -> logits (M, classes)."""
    x = x.float()
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda z: z.float() @ w + b
