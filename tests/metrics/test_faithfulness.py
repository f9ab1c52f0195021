"""Faithfulness: retrieval ranks on pure tensors, and `rcdm evaluate faithfulness` on the tiny run."""

from __future__ import annotations

import pytest
import torch

from rcdm.metrics import (
    faithfulness_scores,
    retrieval_ranks,
)

# --- faithfulness: pure tensors -------------------------------------------------------------------------


def test_rank_is_one_for_a_perfect_generator():
    refs = torch.randn(50, 16)
    samples = refs[:, None, :].repeat(1, 3, 1) * 2.0  # same direction, other norm: cosine distance 0
    ranks = retrieval_ranks(refs, samples)
    assert ranks.shape == (50, 3)
    assert torch.all(ranks == 1)
    s = faithfulness_scores(refs, samples)
    assert s.mean_rank == 1 and s.top1 == 1 and s.top5 == 1 and s.cosine == pytest.approx(1, abs=1e-5)
    assert retrieval_ranks(refs, refs[:, None, :], distance="l2").eq(1).all()


def test_class_agreement_counts_samples_in_their_source_class():
    refs = torch.eye(4)  # class k = dimension k
    classifier = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        classifier.weight.copy_(torch.eye(4))
    same = refs[:, None, :].repeat(1, 2, 1) + 0.1 * torch.randn(4, 2, 4)
    assert faithfulness_scores(refs, same, classifier=classifier).class_agreement == 1.0
    wrong = refs.roll(1, 0)[:, None, :].repeat(1, 2, 1)  # every sample lands in the next class
    half = torch.cat([same[:, :1], wrong[:, :1]], 1)
    assert faithfulness_scores(refs, wrong, classifier=classifier).class_agreement == 0.0
    assert faithfulness_scores(refs, half, classifier=classifier).class_agreement == 0.5
    assert faithfulness_scores(refs, same).class_agreement is None


def test_rank_is_about_half_n_for_a_shuffled_generator():
    n = 400
    refs = torch.randn(n, 32)
    perm = (torch.arange(n) + torch.randint(1, n, (n,), generator=torch.Generator().manual_seed(0))) % n
    shuffled = refs[perm][:, None, :]  # every sample is the representation of another, random image
    s = faithfulness_scores(refs, shuffled)
    assert s.top1 == 0
    assert abs(s.mean_rank - n / 2) < 0.1 * n, s.mean_rank
    unrelated = faithfulness_scores(refs, torch.randn(n, 4, 32))
    assert abs(unrelated.mean_rank - (n + 1) / 2) < 0.06 * n
    assert unrelated.chance_rank == (n + 1) / 2


def test_rank_ties_count_half():
    refs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # references 0 and 1 coincide
    ranks = retrieval_ranks(refs, refs[:, None, :])
    assert ranks[:, 0].tolist() == [1.5, 1.5, 1.0]
