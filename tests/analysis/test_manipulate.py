"""Manipulation: chunked top-k, the common-dimensions rule, and the analysis on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rcdm.analysis import common_dimensions, manipulate, topk_cosine
from rcdm.errors import RCDMError


def test_chunked_topk_equals_brute_force(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(5000, 32, generator=g), torch.randn(7, 32, generator=g)
    cos = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(bank, dim=-1).T
    ref = cos.topk(20, dim=1)
    scores, idx = topk_cosine(queries, bank, 20, chunk=700, use_faiss=False)
    assert torch.equal(idx, ref.indices) and torch.allclose(scores, ref.values, atol=1e-6)
    path = tmp_path / "bank.safetensors"
    save_file({"representations": bank}, str(path))
    _, idx_f = topk_cosine(queries, path, 20, chunk=999)
    assert torch.equal(idx_f, ref.indices)
    with pytest.raises(RCDMError, match="k=5001"):
        topk_cosine(queries, bank, 5001)


def test_common_dimensions_rule():
    reps = torch.zeros(20, 5)
    reps[:15, 0] = 1.0  # non-zero in 15 > 14 neighbours: common
    reps[:14, 1] = 1.0  # in exactly 14: not common
    reps[:, 2] = 0.5  # in all: common
    reps[:, 3] = -1.0  # negative (never above the threshold 0): not common
    assert common_dimensions(reps, 14).tolist() == [True, False, True, False, False]
    assert common_dimensions(reps, 14, threshold=0.6).tolist() == [True, False, False, False, False]


def test_manipulate_on_tiny_model(tiny, two_images, few_images, tmp_path, fast):
    model, enc = tiny
    res = manipulate(
        model, enc, two_images[0], two_images[1], few_images, k=4, n_common=2, cache=tmp_path, **fast
    )
    assert res.samples.shape == (3, 2, 3, 32, 32) and len(res.neighbours) == 4
    src = res.representations[0]
    assert (res.representations[1][res.common] == 0).all()
    assert torch.equal(res.representations[1][~res.common], src[~res.common])
    assert torch.equal(res.representations[2][~res.common], src[~res.common])
    assert list(tmp_path.glob("reps-*.safetensors"))  # the folder's representations were cached
    again = manipulate(
        model, enc, two_images[0], two_images[1], few_images, k=4, n_common=2, cache=tmp_path, **fast
    )
    assert torch.equal(again.common, res.common) and torch.equal(again.samples, res.samples)
    # ResNet-20 features are all positive after their ReLU and pooling: every dimension counts as common, and
    # the result says so instead of passing off 'zeroed' as what is specific to the image.
    assert res.common.float().mean() >= 0.9 and "dimensions count as common" in res.summary()["warnings"][0]
    sparse = manipulate(
        model,
        enc,
        two_images[0],
        two_images[1],
        few_images,
        k=4,
        n_common=2,
        threshold=1e9,
        cache=tmp_path,
        **fast,
    )
    assert not sparse.common.any() and sparse.summary()["warnings"] == []
    with pytest.raises(RCDMError, match="has 8 images but k=20"):
        manipulate(model, enc, two_images[0], two_images[1], few_images, **fast)


def test_a_cache_holding_nan_is_refused_naming_the_row(tmp_path: Path):
    bank = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    bank[211, 3] = float("nan")
    path = tmp_path / "bank.safetensors"
    save_file({"representations": bank}, str(path))
    with pytest.raises(
        RCDMError, match=r"bank\.safetensors' holds non-finite values \(representations, row 211"
    ):
        topk_cosine(torch.randn(2, 8), path, 5, chunk=100)


def test_bad_manipulation_and_attack_numbers_are_one_line_before_any_work(tmp_path: Path, capsys):
    from rcdm.cli import main

    base = ["--model", str(tmp_path / "none"), "--images", str(tmp_path), "--out", str(tmp_path / "o")]
    manip = ["analyze", "manipulate", *base, "--neighbours", str(tmp_path), "--target", str(tmp_path)]
    assert main([*manip, "--threshold", "nan"]) == 2
    assert "--threshold nan must be a finite number" in capsys.readouterr().err
    assert main(["analyze", "adversarial", *base, "--eps", "2"]) == 2
    assert (
        "--eps 2 is out of range: it is an L-infinity radius on pixels in [0, 1]" in capsys.readouterr().err
    )
