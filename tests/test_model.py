"""rcdm.model: the RCDM network, its self-describing config and weights, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rcdm.errors import RCDMError
from rcdm.model import PRESETS, RCDM, check_encoder


def tiny(**kw) -> RCDM:
    torch.manual_seed(0)
    return RCDM.from_preset("tiny", representation_dim=10, sample_size=16, **kw)


def test_forward_shapes_and_conditioning():
    m = tiny()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 10, 999])
    a = m(x, t, torch.randn(3, 10))
    assert a.shape == (3, 6, 16, 16)
    assert m(x, 5, torch.randn(3, 10)).shape == (3, 6, 16, 16)  # scalar timestep
    assert (
        RCDM.from_preset("tiny", 10, learned_variance=False)(
            torch.randn(1, 3, 32, 32), 1, torch.randn(1, 10)
        ).shape[1]
        == 3
    )
    # The representation reaches the output (it is added to the time embedding).
    with torch.no_grad():
        m.rep_proj.weight.normal_()
    r = torch.randn(3, 10)
    assert not torch.allclose(m(x, t, r), m(x, t, r + 1))


def test_save_load_round_trip(tmp_path):
    m = tiny(encoder="pixels:1", encoder_identity="pixels:1", feature="backbone")
    x, t, r = torch.randn(2, 3, 16, 16), torch.tensor([3, 500]), torch.randn(2, 10)
    m.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.rcdm.safetensors").is_file()
    back = RCDM.from_pretrained(tmp_path / "m")
    assert back.config.encoder == "pixels:1" and back.config.attention_num_heads == 2
    saved, loaded = m.state_dict(), back.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    with torch.no_grad():
        assert torch.allclose(m(x, t, r), back(x, t, r), atol=1e-5)


def _same_weights(a: RCDM, b: RCDM) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_plain_diffusers_refuses_an_rcdm_folder(tmp_path):
    # An rcdm folder's config.json holds UNet2DModel's architecture keys: under the plain weights name,
    # UNet2DModel.from_pretrained built a random (meta-tensor) UNet from it with only a warning.
    from diffusers import UNet2DModel

    m = tiny()
    m.save_pretrained(tmp_path / "m")
    with pytest.raises(OSError, match="no file named diffusion_pytorch_model"):
        UNet2DModel.from_pretrained(tmp_path / "m")
    assert _same_weights(m, RCDM.from_pretrained(tmp_path / "m"))


def test_a_folder_under_the_plain_diffusers_weights_name_is_refused_in_one_line(tmp_path):
    from diffusers import ModelMixin

    from rcdm.loading import load_model

    ModelMixin.save_pretrained(tiny(), tmp_path / "plain")  # the plain name, not rcdm's
    assert (tmp_path / "plain" / "diffusion_pytorch_model.safetensors").is_file()
    with pytest.raises(RCDMError, match="a plain diffusers UNet's name"):
        load_model(tmp_path / "plain")


def test_published_network_size_and_heads():
    m = RCDM.from_preset("adm128", representation_dim=2048)
    assert sum(p.numel() for p in m.parameters()) == 422_603_782
    from diffusers.models.attention_processor import Attention

    attns = [a for a in m.modules() if isinstance(a, Attention)]
    assert attns and all(a.heads == 4 and a.scale == (a.inner_dim // 4) ** -0.5 for a in attns)
    assert {a.inner_dim // a.heads for a in attns} == {128, 192, 256}


def test_cifar32_fits_the_demo_bundle():
    n = sum(p.numel() for p in RCDM.from_preset("cifar32", representation_dim=512).parameters())
    assert 5e6 <= n <= 10e6
    assert set(PRESETS) >= {"tiny", "cifar32", "adm128"}


def test_wrong_representation_dim_is_refused():
    m = tiny()
    with pytest.raises(RCDMError, match=r"expects \(batch, 10\)"):
        m(torch.randn(1, 3, 16, 16), 1, torch.randn(1, 11))


def test_null_representation_and_drop():
    m = tiny(null_representation=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        m.null_rep.normal_()
        m.rep_proj.weight.normal_()
        r = torch.randn(2, 10)
        dropped = m(x, 7, r, drop=torch.tensor([True, False]))
        assert torch.allclose(dropped[0], m(x[:1], 7, None)[0], atol=1e-5)
        assert torch.allclose(dropped[1], m(x[1:], 7, r[1:])[0], atol=1e-5)
    with pytest.raises(RCDMError, match="condition dropout"):
        tiny()(x, 7, None)


def test_check_encoder_refuses_another_encoder():
    m = tiny(encoder="a", encoder_identity="a@sha256:1", feature="backbone")
    ok = {"encoder": "a", "encoder_identity": "a@sha256:1", "feature": "backbone", "representation_dim": 10}
    check_encoder(m, ok)
    with pytest.raises(RCDMError, match="trained on encoder"):
        check_encoder(m, {**ok, "encoder_identity": "b@sha256:2", "encoder": "b"})
    with pytest.raises(RCDMError, match="expects 10-d"):
        check_encoder(m, {**ok, "representation_dim": 11})
    with pytest.raises(RCDMError, match="--feature backbone"):
        check_encoder(m, {**ok, "feature": "projector"})


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("dropout", 5.0, "dropout = 5.0 is out of range"),
        ("dropout", -0.5, "dropout = -0.5 is out of range"),
        ("dropout", float("nan"), "dropout = NaN is out of range"),
        ("sample_size", 33, "sample_size = 33 must be at most 1024 and divisible by 2"),
        ("sample_size", 100_000, "sample_size = 100000 must be at most 1024"),
        ("down_block_types", ["EvilBlock2D", "AttnDownBlock2D"], "unknown block type 'EvilBlock2D'"),
        ("block_out_channels", [32, 64, 128], "have 3, 2 and 2 entries"),
        ("block_out_channels", [32, 1 << 20], "block_out_channels = [32, 1048576] must be at most 4096"),
        ("representation_dim", 10**12, "representation_dim = 1000000000000 is too large"),
    ],
)
def test_configs_that_cannot_build_are_refused_in_one_line_before_anything_is_built(
    tmp_path, key, value, says
):
    """Each passed the key and type checks and then crashed the loader or asked for gigabytes (reliability.md)."""
    import json

    from rcdm.loading import load_model

    folder = tmp_path / "m"
    tiny().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(RCDMError, match=r"config\.json") as e:
        load_model(folder)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_saved_configs_carry_no_path_of_the_machine(guided, tmp_path):
    model = RCDM.from_pretrained(guided)  # diffusers sets _name_or_path to the folder it read
    model.save_pretrained(tmp_path / "again")
    assert "_name_or_path" not in json.loads((tmp_path / "again" / "config.json").read_text())


def test_standardized_model_uses_and_saves_its_statistics(tmp_path: Path):
    torch.manual_seed(0)
    m = RCDM.from_preset("tiny", representation_dim=6, standardize_representation=True)
    reps = torch.randn(500, 6) * torch.tensor([5.0, 1, 1, 1, 1, 0]) + 3
    m.set_representation_stats(reps)
    assert (
        torch.allclose(m.rep_mean, reps.mean(0)) and (m.rep_std > 0).all()
    )  # the constant dimension is floored
    x = reps[:2]
    want = m.rep_proj((x - reps.mean(0)) / m.rep_std)
    assert torch.allclose(m.condition(x, 2), want, atol=1e-5)
    m.save_pretrained(tmp_path / "m")
    back = RCDM.from_pretrained(tmp_path / "m")
    assert torch.equal(back.rep_mean, m.rep_mean) and torch.equal(back.rep_std, m.rep_std)
    assert torch.allclose(back.condition(x, 2), want, atol=1e-5)
    raw = RCDM.from_preset("tiny", representation_dim=6)
    assert raw.rep_mean is None and "rep_mean" not in raw.state_dict()
