"""rcdm.encoders.cifar: the CIFAR ResNets (the shared supervised ones, and rcdm-cifar encoders and their cards)."""

from __future__ import annotations

import pytest
import torch

from rcdm.data import load_views
from rcdm.encoders import create_encoder
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
