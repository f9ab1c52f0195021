"""The nine published RCDM checkpoints (guided-diffusion "ADM" layout) -> `rcdm.RCDM`, converted exactly.

`convert(path)` reads a published state dict, infers the architecture from it (channels, levels, attention
levels, representation dim, learned variance), remaps every key with an explicit table and loads strictly:
a missing, extra or misshapen key is refused by name. The legacy attention packs qkv per head as rows
(heads, 3, C/heads); it is unpacked into diffusers' to_q/to_k/to_v and the head count is kept in the config
(`attention_num_heads`). Named models `official:{dino,simclr,barlowtwins,vicreg}-{backbone,projector}` and
`official:supervised` (rcdm.loading) download their file and convert it with this module once.
Facts: ../shared/official-rcdm/README.md. Weights are CC-BY-NC 4.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import RCDMError
from .model import RCDM
from .weights import check_keys, read_checkpoint

NORM_GROUPS = 32  # GroupNorm32 everywhere in guided-diffusion (not recorded in a state dict)


# --- architecture inference -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedLayout:
    """The guided-diffusion flags a state dict determines (image size and head count it does not)."""

    num_channels: int  # C: width of level 0 (input_blocks.0.0 conv)
    channel_mult: tuple[int, ...]  # width of each level / C
    num_res_blocks: int
    attention: tuple[bool, ...]  # attention blocks at each level
    ssl_dim: int  # representation dimension (ssl_emb: Linear(ssl_dim, 4C))
    learned_variance: bool  # 6 output channels


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise RCDMError(f"not a published RCDM checkpoint: missing key {key!r}")
    return tuple(state[key].shape)


def infer_layout(state: Mapping[str, torch.Tensor]) -> PublishedLayout:
    """Read the architecture from the keys and shapes of a published state dict."""
    c = _shape(state, "input_blocks.0.0.weight")[0]
    ssl_dim = _shape(state, "ssl_emb.weight")[1]
    out_ch = _shape(state, "out.2.weight")[0]
    if out_ch not in (3, 6):
        raise RCDMError(f"out.2.weight has {out_ch} output channels: expected 6 (learned variance) or 3")
    n_out = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("output_blocks."))
    # Each level but the innermost ends its output blocks with an upsampling ResBlock at sub-index 1 or 2.
    ups = {
        int(k.split(".")[1])
        for k in state
        if k.startswith("output_blocks.") and k.split(".")[2] in ("1", "2") and ".in_layers." in k
    }
    levels = len(ups) + 1
    if n_out % levels:
        raise RCDMError(f"{n_out} output blocks cannot split into {levels} levels: not a published layout")
    nrb = n_out // levels - 1
    mult, attention = [], []
    for level in range(levels):
        first = 1 + level * (nrb + 1)
        width = _shape(state, f"input_blocks.{first}.0.out_layers.3.weight")[0]
        if width % c:
            raise RCDMError(f"input_blocks.{first} has {width} channels, not a multiple of {c}")
        mult.append(width // c)
        attention.append(any(k.startswith(f"input_blocks.{first}.1.") for k in state))
    emb = _shape(state, "input_blocks.1.0.emb_layers.1.weight")[0]
    if emb != 2 * c:
        raise RCDMError(
            f"input_blocks.1.0.emb_layers.1.weight gives {emb} channels, not {2 * c}: the checkpoint was "
            f"trained without use_scale_shift_norm, which the published models use"
        )
    return PublishedLayout(c, tuple(mult), nrb, tuple(attention), ssl_dim, out_ch == 6)


def rcdm_config(layout: PublishedLayout, image_size: int = 128, num_heads: int = 4) -> dict:
    """RCDM constructor arguments reproducing `layout` (DESIGN.md: the diffusers equivalent of ADM)."""
    return dict(
        representation_dim=layout.ssl_dim,
        sample_size=image_size,
        block_out_channels=tuple(layout.num_channels * m for m in layout.channel_mult),
        down_block_types=tuple(
            "AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in layout.attention
        ),
        up_block_types=tuple(
            "AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(layout.attention)
        ),
        layers_per_block=layout.num_res_blocks,
        norm_num_groups=NORM_GROUPS,
        attention_num_heads=num_heads,
        learned_variance=layout.learned_variance,
    )


# --- key map --------------------------------------------------------------------------------------------

_RESBLOCK = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_ATTENTION = {"norm": "group_norm", "proj_out": "to_out.0"}  # qkv -> to_q, to_k, to_v (split per head)


def module_map(layout: PublishedLayout) -> dict[str, tuple[str, str]]:
    """Published module prefix -> (RCDM module prefix, kind 'res' | 'attn' | 'plain')."""
    nrb, levels = layout.num_res_blocks, len(layout.channel_mult)
    m: dict[str, tuple[str, str]] = {
        "time_embed.0": ("unet.time_embedding.linear_1", "plain"),
        "time_embed.2": ("unet.time_embedding.linear_2", "plain"),
        "ssl_emb": ("rep_proj", "plain"),
        "input_blocks.0.0": ("unet.conv_in", "plain"),
        "middle_block.0": ("unet.mid_block.resnets.0", "res"),
        "middle_block.1": ("unet.mid_block.attentions.0", "attn"),
        "middle_block.2": ("unet.mid_block.resnets.1", "res"),
        "out.0": ("unet.conv_norm_out", "plain"),
        "out.2": ("unet.conv_out", "plain"),
    }
    i = 1
    for level in range(levels):
        for j in range(nrb):
            m[f"input_blocks.{i}.0"] = (f"unet.down_blocks.{level}.resnets.{j}", "res")
            if layout.attention[level]:
                m[f"input_blocks.{i}.1"] = (f"unet.down_blocks.{level}.attentions.{j}", "attn")
            i += 1
        if level < levels - 1:
            m[f"input_blocks.{i}.0"] = (f"unet.down_blocks.{level}.downsamplers.0", "res")
            i += 1
    o = 0
    for up, level in enumerate(reversed(range(levels))):
        for j in range(nrb + 1):
            m[f"output_blocks.{o}.0"] = (f"unet.up_blocks.{up}.resnets.{j}", "res")
            sub = 1
            if layout.attention[level]:
                m[f"output_blocks.{o}.1"] = (f"unet.up_blocks.{up}.attentions.{j}", "attn")
                sub = 2
            if j == nrb and level > 0:
                m[f"output_blocks.{o}.{sub}"] = (f"unet.up_blocks.{up}.upsamplers.0", "res")
            o += 1
    return m


def key_map(layout: PublishedLayout, model_keys: Mapping[str, object]) -> dict[str, list[str]]:
    """Every published key -> the RCDM key(s) it becomes (qkv -> [to_q, to_k, to_v]); only keys in model_keys.

    `model_keys`: the RCDM's state-dict keys; a published key is expected exactly when its target exists
    (e.g. skip_connection only where the channel count changes).
    """
    out: dict[str, list[str]] = {}
    for src, (dst, kind) in module_map(layout).items():
        subs: dict[str, list[str]]
        if kind == "res":
            subs = {k: [v] for k, v in _RESBLOCK.items()}
        elif kind == "attn":
            subs = {k: [v] for k, v in _ATTENTION.items()} | {"qkv": ["to_q", "to_k", "to_v"]}
        else:
            subs = {"": [""]}
        for s, targets in subs.items():
            for param in ("weight", "bias"):
                names = [".".join(p for p in (dst, t, param) if p) for t in targets]
                if all(n in model_keys for n in names):
                    out[".".join(p for p in (src, s, param) if p)] = names
    return out


def _split_qkv(t: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """Legacy packed qkv (3C, C, 1) or (3C,), rows ordered (heads, 3, C/heads) -> [q, k, v] each (C, C) / (C,)."""
    c3 = t.shape[0]
    c = c3 // 3
    if c % heads:
        raise RCDMError(f"attention width {c} is not divisible by --num-heads {heads}")
    rows = t.reshape(heads, 3, c // heads, *t.shape[1:])
    return [
        rows[:, i].reshape(c, *t.shape[1:]).flatten(1) if t.ndim > 1 else rows[:, i].reshape(c)
        for i in range(3)
    ]


def convert_state_dict(
    state: Mapping[str, torch.Tensor],
    layout: PublishedLayout,
    num_heads: int,
    expected: Mapping[str, torch.Size],
) -> dict[str, torch.Tensor]:
    """Published state dict -> RCDM state dict, refusing any missing, extra or misshapen key by name.

    expected: the RCDM's key -> shape (e.g. from a model built on the meta device).
    """
    kmap = key_map(layout, expected)
    out: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for src, dsts in kmap.items():
        if len(dsts) == 3:  # packed qkv
            c = expected[dsts[0]][0]
            shapes[src] = (3 * c, c, 1) if src.endswith("weight") else (3 * c,)
        elif src.endswith("proj_out.weight"):
            shapes[src] = (*expected[dsts[0]], 1)
        else:
            shapes[src] = tuple(expected[dsts[0]])
    check_keys(state, shapes, "checkpoint")
    for src, dsts in kmap.items():
        t = state[src]
        if t.is_floating_point():
            t = t.float()
        if len(dsts) == 3:
            parts = _split_qkv(t, num_heads)
        elif src.endswith("proj_out.weight"):
            parts = [t.squeeze(-1)]
        else:
            parts = [t]
        for d, p in zip(dsts, parts, strict=True):
            out[d] = p.contiguous()
    missing = [k for k in expected if k not in out]
    if missing:  # the table does not cover the model: a bug in rcdm, not in the user's file
        raise RuntimeError(f"rcdm's key map leaves RCDM keys unset: {missing[:5]}")
    return out


def convert(
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    *,
    image_size: int = 128,
    num_heads: int = 4,
    encoder: dict | None = None,
) -> RCDM:
    """A published checkpoint (path or state dict) -> RCDM in eval mode, weights exactly the published ones.

    image_size: the resolution it was trained at (not in the state dict; the published models: 128).
    num_heads: attention heads of C/heads channels at every level (published: 4).
    encoder: `Encoder.describe()`-style dict recorded in the config (spec, identity, feature, preprocessing).
    """
    if image_size < 8 or image_size % 8:
        raise RCDMError(f"--image-size {image_size} is not valid: use the training resolution, e.g. 128")
    if num_heads < 1:
        raise RCDMError(f"--num-heads {num_heads} must be at least 1 (published: 4)")
    state = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    state = {k.removeprefix("module."): v for k, v in state.items()}
    layout = infer_layout(state)
    cfg = rcdm_config(layout, image_size, num_heads)
    if encoder is not None:
        if encoder["representation_dim"] != layout.ssl_dim:
            raise RCDMError(
                f"encoder {encoder['encoder']!r} gives {encoder['representation_dim']}-d representations but "
                f"the checkpoint expects {layout.ssl_dim}-d (ssl_emb.weight): pass the encoder it was trained on"
            )
        cfg |= {k: encoder[k] for k in ("encoder", "encoder_identity", "feature", "preprocessing")}
    with torch.device("meta"):  # shapes only; every tensor then comes from the checkpoint
        model = RCDM(**cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(convert_state_dict(state, layout, num_heads, expected), strict=True, assign=True)
    return model.eval().requires_grad_(False)


# `rcdm.convert.export_diffusers` is where README and earlier releases named it
from .export import export_diffusers  # noqa: E402, F401
