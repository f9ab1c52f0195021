"""rcdm.metrics.knn: k-NN classification of features."""

from __future__ import annotations

import torch

from rcdm.metrics.knn import knn_accuracy, knn_predict


def test_knn_is_exact_on_a_constructed_example() -> None:
    e = torch.eye(3)
    bank = torch.cat([e[0] + 0.01 * torch.arange(5).view(-1, 1), e[1] + 0.01 * torch.arange(5).view(-1, 1)])
    labels = torch.tensor([0] * 5 + [1] * 5)
    queries = torch.stack([e[0], e[0] * 2, e[0] + 0.1 * e[2], e[1], e[1] * 3, e[1] + 0.1 * e[2], e[0], e[0]])
    truth = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])  # the last two are mislabelled on purpose
    assert knn_accuracy(bank, labels, queries, truth, k=5) == 0.75
    # Weighted vote (Wu et al. 2018): one very close neighbour outweighs two farther ones.
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, 0.6]])
    pred = knn_predict(bank, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]]), k=3, temperature=0.07)
    assert pred.tolist() == [0]
    pred = knn_predict(bank, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]]), k=3, temperature=100.0)
    assert pred.tolist() == [1]  # near-uniform weights: the majority wins
