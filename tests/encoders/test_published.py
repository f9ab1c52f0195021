"""The five published ResNet-50 encoders: strict loading of every checkpoint layout, heads, preprocessing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rcdm.encoders import create_encoder, published_preprocessing
from rcdm.encoders.published import PUBLISHED, build_projector, resnet50_trunk
from rcdm.errors import RCDMError

# --- published encoders ---------------------------------------------------------------------------------


def _fill(shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """A distinct constant per key, proving each key lands where it should.

    Each tensor is one value expanded to its shape (stride 0), so even the 8192 x 8192 heads cost bytes on disk.
    """
    out = {}
    for i, (k, shape) in enumerate(shapes.items()):
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        else:
            out[k] = torch.tensor(1.0 + i / 1000).expand(tuple(shape))
    return out


def _published_encoder_file(name: str, path: Path) -> tuple[dict, dict]:
    """A synthetic checkpoint with the published nesting and key names of encoder `name`."""
    method = PUBLISHED[name].method
    with torch.device("meta"):
        trunk_shapes = {k: v.shape for k, v in resnet50_trunk().state_dict().items()}
        proj = build_projector(method)
        head_shapes = {k: v.shape for k, v in proj.state_dict().items()} if proj is not None else {}
    trunk, head = _fill(trunk_shapes), _fill(head_shapes)
    if method == "supervised":
        ckpt = {**trunk, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    elif method == "dino":
        inner = {f"module.backbone.{k}": v for k, v in trunk.items()}
        inner |= {f"module.head.mlp.{k}": v for k, v in head.items()}
        inner |= {"module.head.last_layer.weight_g": torch.ones(60000, 1)}
        ckpt = {"teacher": inner, "student": {}, "epoch": 100}
    elif method == "vicreg":
        inner = {f"module.backbone.{k}": v for k, v in trunk.items()}
        inner |= {f"module.projector.{k}": v for k, v in head.items()}
        ckpt = {"model": inner, "epoch": 1000}
    else:  # VISSL
        heads = {}
        for k, v in head.items():
            stage, rest = k.split(".", 1)
            heads[f"{stage}.clf.{rest}"] = v
        model = {"trunk": {f"_feature_blocks.{k}": v for k, v in trunk.items()}, "heads": heads}
        ckpt = {"classy_state_dict": {"base_model": {"model": model}}, "phase_idx": 999}
    torch.save(ckpt, path)
    return trunk, head


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_encoder_maps_every_key(tmp_path, name):
    path = tmp_path / "enc.pt"
    trunk, head = _published_encoder_file(name, path)
    pub = PUBLISHED[name]
    enc = create_encoder(f"official:{name}:{path}", "backbone")
    assert enc.dim == 2048 and enc.spec == f"official:{name}" and enc.identity == f"official:{name}"
    got = enc.backbone.state_dict()
    assert all(torch.equal(got[k], trunk[k]) for k in trunk)
    assert enc.preprocessing == published_preprocessing()
    assert not any(p.requires_grad for p in enc.parameters())
    if pub.projector_dim is None:
        with pytest.raises(RCDMError, match="no projector"):
            create_encoder(f"{name}:{path}", "projector")  # the bare name works too
        assert enc.classifier is not None
        return
    proj = create_encoder(f"{name}:{path}", "projector")
    assert proj.dim == pub.projector_dim
    got = proj.projector.state_dict()
    assert all(torch.equal(got[k], head[k]) for k in head)
    if name == "resnet50.dino_in1k":  # small enough to run: the head's output has the published width
        with torch.no_grad():
            assert proj(torch.rand(1, 3, 64, 64)).shape == (1, 256)


def test_published_encoder_refuses_extra_key(tmp_path):
    path = tmp_path / "vicreg.pt"
    _published_encoder_file("resnet50.dino_in1k", path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["teacher"]["module.backbone.extra.weight"] = torch.zeros(1)
    torch.save(ckpt, path)
    with pytest.raises(RCDMError, match=r"unexpected keys extra\.weight"):
        create_encoder(f"official:resnet50.dino_in1k:{path}")


def test_published_preprocessing_is_minus1_to_1():
    prep = published_preprocessing()
    x = torch.zeros(1, 3, 224, 224)
    assert prep.input_size == 224 and prep(x).min().item() == -1.0 and prep(x + 1).max().item() == 1.0


def test_published_views_are_cut_as_guided_diffusion_did(tmp_path):
    """BOX halving then BICUBIC then centre crop: a 2x-upsampled image (constant 2x2 blocks, wider than tall)
    comes back exactly, pixel for pixel; our antialiased tensor resize does not (so the mode matters)."""
    from PIL import Image

    from rcdm.data import load_views

    small = torch.randint(0, 256, (3, 32, 48), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    big = small.repeat_interleave(2, 1).repeat_interleave(2, 2)  # (3, 64, 96)
    path = tmp_path / "wide.png"
    Image.fromarray(big.permute(1, 2, 0).numpy()).save(path)
    expected = small[:, :, 8:40].float() / 255  # the centre 32 x 32 of the 32 x 48 halving
    prep = published_preprocessing()
    assert prep.resample == "published"
    views, enc_views = load_views([path], 32, 32, prep.resample)
    assert torch.equal(enc_views[0], expected) and torch.equal(views[0], expected)
    _, ours = load_views([path], 32, 32)
    assert (ours[0] - expected).abs().max().item() > 1 / 255
