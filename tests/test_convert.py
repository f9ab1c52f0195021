"""The published RCDM checkpoints and encoders: exact conversion, strict key maps, downloads, CLI, sampling."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rcdm.convert import convert, convert_state_dict, infer_layout, key_map, rcdm_config
from rcdm.diffusion import SamplingConfig, sample
from rcdm.errors import RCDMError
from rcdm.model import PRESETS, RCDM
from rcdm.weights import check_keys, read_checkpoint

# --- an independent reference: the published forward pass, transcribed from facebookresearch/RCDM --------
# (guided_diffusion_rcdm/unet.py: UNetModel.forward, ResBlock._forward, AttentionBlock + QKVAttentionLegacy)


def _published_forward(
    s: dict, x: torch.Tensor, t: torch.Tensor, feat: torch.Tensor, heads: int = 4, downs: tuple = (3, 6)
) -> torch.Tensor:
    """The golden config (channel_mult 1,2,2; 2 res blocks): downsampling ResBlocks at input_blocks 3 and 6."""

    def gn(h, p):
        return F.group_norm(h, 32, s[p + ".weight"], s[p + ".bias"], 1e-5)

    def conv(h, p):
        return F.conv2d(h, s[p + ".weight"], s[p + ".bias"], padding=1)

    def lin(h, p):
        return F.linear(h, s[p + ".weight"], s[p + ".bias"])

    def res(h, emb, p, up=False, down=False):
        r = F.silu(gn(h, p + ".in_layers.0"))
        if up:
            r, h = F.interpolate(r, scale_factor=2.0), F.interpolate(h, scale_factor=2.0)
        if down:
            r, h = F.avg_pool2d(r, 2), F.avg_pool2d(h, 2)
        r = conv(r, p + ".in_layers.2")
        scale, shift = lin(F.silu(emb), p + ".emb_layers.1")[:, :, None, None].chunk(2, 1)
        r = conv(F.silu(gn(r, p + ".out_layers.0") * (1 + scale) + shift), p + ".out_layers.3")
        if p + ".skip_connection.weight" in s:
            h = F.conv2d(h, s[p + ".skip_connection.weight"], s[p + ".skip_connection.bias"])
        return h + r

    def attn(h, p):
        b, c, hh, ww = h.shape
        flat = h.reshape(b, c, -1)
        qkv = F.conv1d(gn(flat, p + ".norm"), s[p + ".qkv.weight"], s[p + ".qkv.bias"])
        ch = c // heads
        q, k, v = qkv.reshape(b * heads, ch * 3, -1).split(ch, dim=1)  # legacy: heads first, then q/k/v
        sc = 1 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * sc, k * sc).softmax(-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
        return (flat + F.conv1d(a, s[p + ".proj_out.weight"], s[p + ".proj_out.bias"])).reshape(b, c, hh, ww)

    def block(h, emb, p, first_index_is_down=False):
        i = 0
        while any(k.startswith(f"{p}.{i}.") for k in s):
            q = f"{p}.{i}"
            if q + ".qkv.weight" in s:
                h = attn(h, q)
            else:
                up = p.startswith("output_blocks") and i > 0
                h = res(h, emb, q, up=up, down=first_index_is_down and i == 0)
            i += 1
        return h

    c = s["input_blocks.0.0.weight"].shape[0]
    half = c // 2  # [cos, sin], max period 10000 (computed in float32, as both implementations do)
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], -1).to(x.dtype)
    emb = lin(F.silu(lin(temb, "time_embed.0")), "time_embed.2") + lin(feat, "ssl_emb")
    n = 1 + max(int(k.split(".")[1]) for k in s if k.startswith("input_blocks."))
    hs = [F.conv2d(x, s["input_blocks.0.0.weight"], s["input_blocks.0.0.bias"], padding=1)]
    h = hs[0]
    for i in range(1, n):
        h = block(h, emb, f"input_blocks.{i}", first_index_is_down=i in downs)
        hs.append(h)
    h = block(h, emb, "middle_block")
    for i in range(n):
        h = block(torch.cat([h, hs.pop()], 1), emb, f"output_blocks.{i}")
    return conv(F.silu(gn(h, "out.0")), "out.2")


# --- the golden vector ---------------------------------------------------------------------------------


def test_golden_vector_reproduces_reference_output(golden_model, golden_state, golden_io):
    """The converted model reproduces the golden vector's `out` to 1e-5 max abs in float32.

    The golden vector is well conditioned (../shared/official-rcdm/README.md): the reference itself repeats `out`
    to about 1e-6 in fp32, so 1e-5 leaves rounding room and nothing else. A wrong head layout (a plain chunk(3)
    of qkv, or another head count) is off by about 0.05 on average, which the test checks too.
    """
    x, t, feat, ref_out = golden_io["x"], golden_io["t"], golden_io["feat"], golden_io["out"]
    with torch.no_grad():
        out = golden_model(x, t, feat)
    assert out.shape == ref_out.shape == (2, 6, 32, 32)
    err = (out - ref_out).abs().max().item()
    assert err < 1e-5, f"max abs error {err:.3g}"
    for heads in (1, 2):
        with torch.no_grad():
            wrong = _published_forward(golden_state, x, t, feat, heads=heads)
        assert (wrong - ref_out).abs().mean().item() > 1e-2


def test_converted_golden_equals_published_forward_in_float64(golden_state, golden_io):
    """Converter exactness on the golden weights, where the arithmetic is well conditioned (float64)."""
    state64 = {k: v.double() for k, v in golden_state.items()}
    # one row keeps the float64 run short
    x, t, feat = golden_io["x"][1:].double(), golden_io["t"][1:], golden_io["feat"][1:].double()
    ref = _published_forward(state64, x, t, feat)
    model = convert(golden_state, image_size=32, num_heads=4).double()
    with torch.no_grad():
        out = model(x, t, feat)
    assert out.shape == (1, 6, 32, 32)
    assert (out - ref).abs().max().item() < 1e-8
    # chunk(3) instead of the per-head (heads, 3, C/heads) order would be far off:
    assert (ref - _published_forward(state64, x, t, feat, heads=1)).abs().max().item() > 1e-2


def test_golden_config_is_inferred(golden_state, golden_model):
    layout = infer_layout(golden_state)
    assert layout.num_channels == 32 and layout.channel_mult == (1, 2, 2) and layout.num_res_blocks == 2
    assert layout.attention == (False, True, True) and layout.ssl_dim == 96 and layout.learned_variance
    cfg = golden_model.config
    assert cfg.attention_num_heads == 4 and cfg.block_out_channels == (32, 64, 64)
    assert cfg.down_block_types == ("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")


# --- the 128 px layout of the real checkpoints -------------------------------------------------------------


def test_published_128_layout_maps_every_key_into_adm128(layout_128):
    layout_file = json.loads(layout_128.read_text())
    for name, spec in layout_file["models"].items():
        state = {k: torch.empty(shape, device="meta") for k, shape in spec["keys"].items()}
        assert len(state) == 494
        layout = infer_layout(state)
        cfg = rcdm_config(layout, image_size=128, num_heads=4)
        for k, v in PRESETS["adm128"].items():
            assert tuple(cfg[k]) == tuple(v) if isinstance(v, tuple) else cfg[k] == v, (name, k)
        with torch.device("meta"):
            model = RCDM(**cfg)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        converted = convert_state_dict(state, layout, 4, expected)
        assert set(converted) == set(expected)
        assert all(converted[k].shape == expected[k] for k in expected)
        assert set(key_map(layout, expected)) == set(state)
        assert layout.ssl_dim == spec["ssl_dim"]
        if spec["ssl_dim"] == 2048:
            assert sum(v.numel() for v in model.state_dict().values()) == 422_603_782


# --- strict key checks ---------------------------------------------------------------------------------


def to_published(model: RCDM, num_heads: int) -> dict[str, torch.Tensor]:
    """Inverse of the converter (test helper): RCDM state dict -> the published key layout."""
    sd = model.state_dict()
    layout = infer_layout_from_model(model)
    out = {}
    for src, dsts in key_map(layout, sd).items():
        if len(dsts) == 3:
            q, k, v = (sd[d] for d in dsts)
            c = q.shape[0]
            packed = torch.stack([t.reshape(num_heads, c // num_heads, *t.shape[1:]) for t in (q, k, v)], 1)
            t = packed.reshape(3 * c, *q.shape[1:])
            out[src] = t[..., None] if t.ndim == 2 else t
        elif src.endswith("proj_out.weight"):
            out[src] = sd[dsts[0]][..., None]
        else:
            out[src] = sd[dsts[0]]
    return out


def infer_layout_from_model(model: RCDM):
    from rcdm.convert import PublishedLayout

    cfg = model.config
    c = cfg.block_out_channels[0]
    return PublishedLayout(
        c,
        tuple(w // c for w in cfg.block_out_channels),
        cfg.layers_per_block,
        tuple(t.startswith("Attn") for t in cfg.down_block_types),
        cfg.representation_dim,
        cfg.learned_variance,
    )


@pytest.fixture(scope="module")
def small_published() -> tuple[RCDM, dict[str, torch.Tensor]]:
    """A random 2-level RCDM (32 channels, 2048-d input) and the same weights in the published layout."""
    torch.manual_seed(0)
    model = RCDM(
        representation_dim=2048,
        sample_size=16,
        block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        layers_per_block=1,
        norm_num_groups=32,
        attention_num_heads=4,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model, to_published(model, 4)


def test_round_trip_through_published_layout(small_published):
    model, state = small_published
    converted = convert(state, image_size=16, num_heads=4)
    x, t, f = torch.randn(2, 3, 16, 16), torch.tensor([3, 700]), torch.randn(2, 2048)
    with torch.no_grad():
        assert (converted(x, t, f) - model(x, t, f)).abs().max().item() < 1e-5


@pytest.mark.parametrize("damage", ["missing", "unexpected", "misshapen"])
def test_refuses_damaged_checkpoint_naming_the_key(small_published, damage):
    _, state = small_published
    state = dict(state)
    key = "input_blocks.1.0.in_layers.2.weight"
    if damage == "missing":
        del state[key]
    elif damage == "unexpected":
        key = "input_blocks.1.0.spare.weight"
        state[key] = torch.zeros(3)
    else:
        state[key] = torch.zeros(32, 32, 1, 1)
    with pytest.raises(RCDMError, match=f"{damage} keys .*{re.escape(key)}"):
        convert(state, image_size=16)


def test_check_keys_lists_all_three_kinds():
    with pytest.raises(RCDMError) as e:
        check_keys({"a": torch.zeros(2), "c": torch.zeros(1)}, {"a": (3,), "b": (1,)}, "x")
    msg = str(e.value)
    assert (
        "missing keys b" in msg
        and "unexpected keys c" in msg
        and "misshapen keys a (2,) (expected (3,))" in msg
    )


# --- CLI and export ------------------------------------------------------------------------------------


def test_read_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "obj": Path("x")}, path)
    with pytest.raises(RCDMError, match=r"weights_only.*it pickles pathlib\.\w*Path"):
        read_checkpoint(path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(RCDMError, match="not a readable torch file"):
        read_checkpoint(garbage)


def test_read_checkpoint_accepts_numpy_scalars_of_training_loops(tmp_path):
    """Training checkpoints (VISSL's, DINO's) keep iteration counters and meters as numpy scalars."""
    import argparse

    import numpy as np

    path = tmp_path / "train.pt"
    state = {
        "w": torch.ones(2),
        "iteration": np.int64(7),
        "loss": np.float32(0.5),
        "args": argparse.Namespace(a=1),
    }
    torch.save(state, path)
    got = read_checkpoint(path)
    assert torch.equal(got["w"], state["w"]) and got["iteration"] == 7 and got["loss"] == np.float32(0.5)
    assert got["args"].a == 1


# --- sampling -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 20), ("ddim", 10), ("dpm++", 10)])
def test_samplers_on_converted_model(small_published, sampler, steps):
    """The published sampler (ddpm, learned-range variance; 100 steps in use, 20 here for CPU time) and the fast ones."""
    _, state = small_published
    model = convert(state, image_size=8)  # the same weights at 8 px: a quarter of the CPU time
    seen = []
    cfg = SamplingConfig(sampler=sampler, steps=steps)
    imgs = sample(model, torch.randn(1, 2048), cfg, callback=lambda d: seen.append(d["t"]))
    assert imgs.shape == (1, 3, 8, 8) and torch.isfinite(imgs).all()
    assert imgs.min().item() >= 0.0 and imgs.max().item() <= 1.0
    assert len(seen) == steps and seen[0] == 999
    if sampler != "dpm++":
        assert seen[-1] == 0
