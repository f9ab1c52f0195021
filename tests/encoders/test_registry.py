"""rcdm.encoders.registry: encoder specs (unknown ones, module:, torchvision:, timm:, pixels:, local weights, seeded random)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from rcdm.data import list_images, load_views
from rcdm.encoders import create_encoder, list_encoders
from rcdm.errors import RCDMError


def test_unknown_spec_lists_prefixes():
    with pytest.raises(RCDMError) as e:
        create_encoder("nope:thing")
    msg = str(e.value)
    for prefix in ("torchvision:", "timm:", "hub:", "module:", "cifar-resnet20:", "cifar-resnet56:"):
        assert prefix in msg
    assert set(list_encoders()) >= {
        "torchvision",
        "timm",
        "hub",
        "module",
        "cifar-resnet20",
        "cifar-resnet56",
    }


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(RCDMError, match="not found"):
        create_encoder(f"cifar-resnet20:{tmp_path / 'absent.th'}")


def test_module_spec_with_projector():
    back = create_encoder("module:encoders_for_tests:mean_colour", "backbone")
    proj = create_encoder("module:encoders_for_tests:mean_colour", "projector")
    x = torch.rand(3, 3, 40, 40)
    assert back.dim == 3 and proj.dim == 2
    # backbone = mean colour of the [-1, 1]-normalised 16 px view
    expected = (
        torch.nn.functional.interpolate(x, 16, mode="bicubic", antialias=True).clamp(0, 1) * 2 - 1
    ).mean((2, 3))
    assert torch.allclose(back(x), expected, atol=1e-5)
    assert torch.allclose(proj(x), proj.projector(back(x)), atol=1e-6)


def test_torchvision_and_timm_local_weights(tmp_path):
    import timm

    tv = torchvision.models.resnet18()
    save_file(tv.state_dict(), tmp_path / "tv.safetensors")
    enc = create_encoder(f"torchvision:resnet18:{tmp_path / 'tv.safetensors'}")
    x = torch.rand(2, 3, 64, 64)
    tv.eval()
    tv.fc = nn.Identity()
    with torch.no_grad():
        assert torch.allclose(enc(x), tv(enc.preprocessing(x)), atol=1e-5)
    assert enc.dim == 512 and enc.classifier is not None

    tm = timm.create_model("resnet18", num_classes=0)
    save_file(tm.state_dict(), tmp_path / "timm.safetensors")
    enc2 = create_encoder(f"timm:resnet18:{tmp_path / 'timm.safetensors'}")
    assert enc2.dim == 512 and enc2.identity.startswith("timm:resnet18@sha256:")


@pytest.mark.parametrize("kind", ["timm", "torchvision"])
def test_a_seeded_random_init_is_a_baseline_that_rebuilds_the_same(kind):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = create_encoder(f"{kind}:resnet18:random"), create_encoder(f"{kind}:resnet18:random-7")
    assert torch.rand(1) == before  # the caller's random stream is untouched
    assert a.identity == f"{kind}:resnet18:random-0" and b.identity == f"{kind}:resnet18:random-7"
    assert (
        a.weights_digest() == create_encoder(f"{kind}:resnet18:random").weights_digest()
    )  # no download, offline
    assert a.weights_digest() != b.weights_digest()


def test_wrong_local_weights_name_the_keys(tmp_path):
    save_file({"bogus.weight": torch.zeros(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(RCDMError, match=r"bogus\.weight"):
        create_encoder(f"torchvision:resnet18:{tmp_path / 'bad.safetensors'}")


def test_pixels_encoder_needs_no_weights(few_images):
    enc = create_encoder("pixels:4")
    _, views = load_views(list_images(few_images)[:2], 32, enc.preprocessing.input_size)
    assert enc.dim == 48 and enc.encode(views).shape == (2, 48)
    with pytest.raises(RCDMError, match="pixels:N"):
        create_encoder("pixels:abc")
