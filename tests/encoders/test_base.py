"""rcdm.encoders.base: the Encoder wrapper (frozen, identity by content, features, any module)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcdm.encoders import Encoder, Preprocessing, create_encoder
from rcdm.errors import RCDMError


def test_encoder_is_frozen(resnet20_spec):
    enc = create_encoder(resnet20_spec)
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.backbone.training
    # Gradients still flow to the input (adversarial analyses need them).
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    enc(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_identity_follows_file_content_not_path(resnet20_path, tmp_path):
    copy = tmp_path / "moved.th"
    copy.write_bytes(resnet20_path.read_bytes())
    a = create_encoder(f"cifar-resnet20:{resnet20_path}")
    b = create_encoder(f"cifar-resnet20:{copy}")
    assert a.identity == b.identity and a.spec != b.spec


def test_projector_requested_without_one(resnet20_spec):
    with pytest.raises(RCDMError, match="no projector"):
        create_encoder(resnet20_spec, "projector")


def test_python_api_wraps_any_module():
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1))
    enc = Encoder(net, Preprocessing(24), projector=nn.Linear(5, 7))
    assert enc.dim == 5 and enc.with_feature("projector").dim == 7
    assert enc.describe()["preprocessing"]["input_size"] == 24
