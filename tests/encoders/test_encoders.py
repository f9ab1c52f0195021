from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from rcdm.data import list_images, load_views
from rcdm.encoders import Encoder, Preprocessing, create_encoder, list_encoders
from rcdm.errors import RCDMError


def test_cifar_resnet20_classifies_cifar(cifar_root, resnet20_spec):
    """The layout, key remap and preprocessing are right only if the published accuracy is reproduced."""
    enc = create_encoder(resnet20_spec)
    files, labels = [], []
    classes = sorted(p.name for p in (cifar_root / "test").iterdir())
    for label, c in enumerate(classes):
        for p in sorted((cifar_root / "test" / c).glob("*.jpg"))[:20]:
            files.append(p)
            labels.append(label)
    _, views = load_views(files, 32, 32)
    with torch.no_grad():
        acc = (enc.logits(views).argmax(1) == torch.tensor(labels)).float().mean().item()
    print(f"ResNet-20 accuracy on 200 CIFAR-10 test JPEGs: {acc:.3f}")
    assert acc > 0.7
    assert enc.dim == 64 and enc.encode(views[:4]).shape == (4, 64)


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


def test_projector_requested_without_one(resnet20_spec):
    with pytest.raises(RCDMError, match="no projector"):
        create_encoder(resnet20_spec, "projector")


def test_python_api_wraps_any_module():
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1))
    enc = Encoder(net, Preprocessing(24), projector=nn.Linear(5, 7))
    assert enc.dim == 5 and enc.with_feature("projector").dim == 7
    assert enc.describe()["preprocessing"]["input_size"] == 24


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


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"width": 300}, "arch width = 300 is out of range"),
        ({"width": 100000}, "arch width = 100000 is out of range"),
        ({"projector": [-5]}, "arch projector = -5 is out of range"),
        ({"depth": 21}, "arch depth = 21 is not 6n + 2"),
        (
            {"width": 2},
            "its card's architecture",
        ),  # in bounds, but the weights are width 1: read from the header
    ],
)
def test_a_crafted_encoder_card_is_refused_before_anything_is_built(tmp_path, change, says):
    """A card asking for width 300 built a network of tens of GB before any check (reliability.md, finding 1)."""
    import json
    import shutil

    from rcdm.bundle import bundled_models_dir

    folder = tmp_path / "enc"
    shutil.copytree(bundled_models_dir() / "cifar10-vicreg-r20w1", folder)
    card = json.loads((folder / "card.json").read_text())
    card["arch"] = {**card["arch"], **change}
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(RCDMError) as e:
        create_encoder(f"rcdm-cifar:{folder}")
    assert says in str(e.value) and "\n" not in str(e.value)
