"""RCDM: a diffusers UNet2DModel conditioned on a frozen representation (Bordes et al. 2022, Sec. 3).

The published conditioning is one line: emb = time_embed(t) + Linear(representation). We wrap (not subclass)
UNet2DModel so `save_pretrained` / `from_pretrained` round-trip, and pass the projected representation as the
UNet's `class_labels` with `class_embed_type="identity"`, which adds it to the time embedding.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention
from safetensors.torch import load_file
from torch import nn

from .errors import RCDMError

# An rcdm folder's weights file is diffusion_pytorch_model.rcdm.safetensors (a diffusers weights "variant"): its
# keys are unet.* and rep_proj.*, and its config.json carries UNet2DModel's own architecture keys, so under the
# plain name `UNet2DModel.from_pretrained(folder)` would build a random UNet from it with only a warning. With
# the variant name diffusers finds no weights there and raises. Folders saved without it still load here.
WEIGHTS_VARIANT = "rcdm"
WEIGHTS_FILE = f"diffusion_pytorch_model.{WEIGHTS_VARIANT}.safetensors"
# An adapter folder (`rcdm adapt`'s RUN/adapter) holds, instead of that file, only the tensors in which an adapted
# model differs from the base its config names (rcdm.loading reads it over the base).
ADAPTER_WEIGHTS = "adapter.safetensors"
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")
ADAPTERS: tuple[str, ...] = ("linear", "mlp")

# name -> architecture (edm2 style). Channels/levels follow guided-diffusion ADM; see DESIGN.md.
PRESETS: dict[str, dict[str, Any]] = {
    # Tests only: ~0.5M parameters, 32 px, two levels.
    "tiny": dict(
        sample_size=32,
        block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_num_heads=2,
    ),
    # CIFAR-10 at 32 px: ADM layout at 3 levels, attention at 16 and 8 px (~8M parameters).
    "cifar32": dict(
        sample_size=32,
        block_out_channels=(64, 128, 128),
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
        attention_num_heads=4,
    ),
    # CIFAR-10 at 32 px, narrower and one block per level: three of these plus two recipe encoders fit the demo
    # bundle (`rcdm recipe pack`); three cifar32 do not (the sizes: docs/recipes.md).
    "cifar32-small": dict(
        sample_size=32,
        block_out_channels=(64, 96, 96),
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        layers_per_block=1,
        norm_num_groups=32,
        attention_num_heads=4,
    ),
    # The published ImageNet 128 px network (422,603,782 parameters with a 2048-d representation).
    "adm128": dict(
        sample_size=128,
        block_out_channels=(256, 256, 512, 768, 1024),
        down_block_types=(
            "ResnetDownsampleBlock2D",
            "ResnetDownsampleBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
        ),
        up_block_types=(
            "AttnUpBlock2D",
            "AttnUpBlock2D",
            "AttnUpBlock2D",
            "ResnetUpsampleBlock2D",
            "ResnetUpsampleBlock2D",
        ),
        layers_per_block=2,
        norm_num_groups=32,
        attention_num_heads=4,
    ),
}


class RCDM(ModelMixin, ConfigMixin):
    """Representation-conditional diffusion model.

    forward(x, t, representation) -> (B, out_channels, H, W): x (B, 3, H, W) noisy image in the model's
    [-1, 1] space, t (B,) or scalar integer timesteps in [0, 1000), representation (B, representation_dim)
    float (or None for the learned null representation when trained with condition dropout). With
    `learned_variance` the output is [epsilon (3 channels), variance interpolation v in [-1, 1] (3)]; with
    prediction_type 'v_prediction' the first 3 channels are v instead of epsilon.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        representation_dim: int,
        sample_size: int = 32,
        block_out_channels: tuple[int, ...] = (32, 64),
        down_block_types: tuple[str, ...] = ("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        attention_num_heads: int | None = 4,  # heads of C/heads channels at every level (published); None: 1
        learned_variance: bool = True,  # 6 output channels: epsilon + variance fraction (hybrid loss)
        # What the first 3 output channels are (diffusers' words): "epsilon" (published) or "v_prediction"
        # (v = sqrt(abar) eps - sqrt(1 - abar) x0; Salimans & Ho 2022, Sec. 4).
        prediction_type: str = "epsilon",
        null_representation: bool = False,  # a learned 'no condition' vector (condition dropout, CFG)
        dropout: float = 0.0,
        # What the model was trained on; checked when it is used with an encoder.
        encoder: str | None = None,
        encoder_identity: str | None = None,
        # sha256 of the encoder's weights (Encoder.weights_digest); None: not recorded (older or published models)
        encoder_weights: str | None = None,
        feature: str = "backbone",
        preprocessing: dict | None = None,
        # Standardise each representation dimension with the training set's mean and std (stored as buffers)
        # before the projection. The published models take raw features (False).
        standardize_representation: bool = False,
        # An adapted model (rcdm.adapt): `adapter` ("linear" or "mlp") maps this model's representation into the
        # adapter_dim-d space of the base RCDM it was adapted from, whose projection and null representation it
        # keeps. None: an ordinary model. adapter_hidden: the mlp's width; adapter_layers: its hidden layers (None: 1).
        adapter: str | None = None,
        adapter_dim: int | None = None,
        adapter_hidden: int | None = None,
        adapter_layers: int | None = None,
        # Where an adapted model comes from (base model and weights digest, encoder, adapter, map R^2, cost).
        adapted_from: dict | None = None,
        # Where a run's initial weights came from (`rcdm train --init-from`): the model, its weights digest, and
        # which tensors started from it. None: trained from random weights.
        initialised_from: dict | None = None,
        # The sampling every command uses when the user gives none (rcdm.diffusion.resolve_sampling): sampler,
        # steps, guidance, and what they were chosen on. None: the library's defaults.
        sampling: dict | None = None,
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise RCDMError(
                f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}: fix the config"
            )
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=3,
            out_channels=6 if learned_variance else 3,
            block_out_channels=tuple(block_out_channels),
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            layers_per_block=layers_per_block,
            resnet_time_scale_shift="scale_shift",
            downsample_type="resnet",
            upsample_type="resnet",
            norm_num_groups=norm_num_groups,
            attn_norm_num_groups=norm_num_groups,
            norm_eps=1e-5,
            attention_head_dim=None,
            class_embed_type="identity",
            flip_sin_to_cos=True,
            freq_shift=0,
            dropout=dropout,
        )
        if attention_num_heads is not None:
            set_attention_heads(self.unet, attention_num_heads)
        time_embed_dim = block_out_channels[0] * 4
        if (adapter is None) != (adapter_dim is None):
            raise RCDMError("adapter and adapter_dim go together: set both (an adapted model) or neither")
        self.rep_adapter = (
            RepresentationAdapter(
                adapter, representation_dim, adapter_dim, adapter_hidden, adapter_layers or 1
            )
            if adapter is not None
            else None
        )
        proj_dim = adapter_dim or representation_dim  # the space the projection and the null vector live in
        self.rep_proj = nn.Linear(proj_dim, time_embed_dim)
        self.null_rep = nn.Parameter(torch.zeros(proj_dim)) if null_representation else None
        if standardize_representation:
            self.register_buffer("rep_mean", torch.zeros(representation_dim))
            self.register_buffer("rep_std", torch.ones(representation_dim))
        else:
            self.rep_mean = self.rep_std = None

    def save_pretrained(
        self,
        save_directory: str | Path,
        is_main_process: bool = True,
        save_function: Any = None,
        safe_serialization: bool = True,
        variant: str | None = None,
        **kwargs: Any,
    ) -> None:
        """ModelMixin.save_pretrained, weights as diffusion_pytorch_model.rcdm.safetensors (see WEIGHTS_VARIANT).

        The config leaves out diffusers' `_name_or_path` (the folder the model was loaded from): a model folder
        that is shared must not carry a path of the machine that wrote it.
        """
        super().save_pretrained(
            save_directory,
            is_main_process=is_main_process,
            save_function=save_function,
            safe_serialization=safe_serialization,
            variant=variant or WEIGHTS_VARIANT,
            **kwargs,
        )
        config_file = Path(save_directory) / self.config_name
        if is_main_process and config_file.is_file():
            config = json.loads(config_file.read_text())
            if config.pop("_name_or_path", None) is not None:
                config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> RCDM:
        """ModelMixin.from_pretrained reading the rcdm weights file (`WEIGHTS_VARIANT`)."""
        return super().from_pretrained(
            pretrained_model_name_or_path, **{**kwargs, "variant": kwargs.get("variant") or WEIGHTS_VARIANT}
        )

    @torch.no_grad()
    def set_representation_stats(self, representations: torch.Tensor) -> None:
        """(N, dim) training representations -> the per-dimension mean and std used to standardise them.

        A dimension that barely varies gets a std floor of 1% of the mean std (a dead unit must not blow up).
        """
        if self.rep_mean is None or self.rep_std is None:
            raise RCDMError("this model was built without standardize_representation=True")
        r = representations.float()
        std = r.std(0)
        self.rep_mean.copy_(r.mean(0))
        self.rep_std.copy_(std.clamp_min(max(1e-6, 0.01 * float(std.mean()))))

    @classmethod
    def from_preset(cls, name: str, representation_dim: int, **overrides: Any) -> RCDM:
        if name not in PRESETS:
            raise RCDMError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        return cls(representation_dim=representation_dim, **{**PRESETS[name], **overrides})

    @property
    def learned_variance(self) -> bool:
        return bool(self.config.learned_variance)

    @property
    def prediction_type(self) -> str:
        """'epsilon' or 'v_prediction' (older configs, without the key, predict epsilon)."""
        return getattr(self.config, "prediction_type", "epsilon")

    def condition(
        self, representation: torch.Tensor | None, batch: int, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, dim) representation -> (B, time_embed_dim) added to the time embedding.

        With `standardize_representation` the representation is first standardised with the stored training
        statistics; the learned null representation lives in that standardised space.
        """
        dim = self.config.representation_dim
        dtype = self.rep_proj.weight.dtype
        if representation is not None:
            if representation.ndim != 2 or representation.shape[1] != dim:
                raise RCDMError(
                    f"representation has shape {tuple(representation.shape)} but this model expects "
                    f"(batch, {dim}): use the encoder it was trained on ({self.config.encoder})"
                )
            if self.rep_mean is not None and self.rep_std is not None:
                representation = (representation.float() - self.rep_mean) / self.rep_std
            if self.rep_adapter is not None:  # into the base model's (standardised) space
                representation = self.rep_adapter(representation.to(dtype))
        if representation is None or drop is not None:
            if self.null_rep is None:
                raise RCDMError("this model was trained without condition dropout: it needs a representation")
            null = self.null_rep.to(dtype).expand(batch, self.null_rep.shape[0])
            if representation is None:
                representation = null
            else:
                representation = torch.where(drop.view(-1, 1), null, representation.to(dtype))
        return self.rep_proj(representation.to(dtype))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | int,
        representation: torch.Tensor | None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b = x.shape[0]
        if not torch.is_tensor(t) or t.ndim == 0:
            t = torch.full((b,), int(t), device=x.device, dtype=torch.long)
        cond = self.condition(representation, b, drop)
        return self.unet(x, t, class_labels=cond).sample


class RepresentationAdapter(nn.Module):
    """An adapted model's map from its encoder's (standardised) representation into its base model's space.

    linear: z -> A z + a. mlp: the same linear map plus a residual MLP, `layers` hidden layers of width `hidden`
    (Linear(in, hidden) - SiLU [- Linear(hidden, hidden) - SiLU ...] - Linear(hidden, out)), whose last layer
    starts at zero, so a fresh mlp adapter equals its linear part.
    """

    def __init__(
        self, kind: str, in_dim: int, out_dim: int, hidden: int | None = None, layers: int = 1
    ) -> None:
        super().__init__()
        if kind not in ADAPTERS:
            raise RCDMError(f"unknown adapter {kind!r}: choose one of {', '.join(ADAPTERS)}")
        self.linear = nn.Linear(in_dim, out_dim)
        self.mlp = None
        if kind == "mlp":
            width = hidden or 4 * out_dim
            body: list[nn.Module] = [nn.Linear(in_dim, width), nn.SiLU()]
            for _ in range(layers - 1):
                body += [nn.Linear(width, width), nn.SiLU()]
            self.mlp = nn.Sequential(*body, nn.Linear(width, out_dim))
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.linear(z)
        return out if self.mlp is None else out + self.mlp(z)


def record_in_config(model: RCDM, **entries: Any) -> None:
    """Set config entries of a built model, so that they also survive `RCDM.from_config(model.config)`: diffusers
    lists the arguments a model was built without in `_use_default_values` and from_config gives those their
    defaults again, which would drop an entry set afterwards (with plain register_to_config)."""
    defaults = [k for k in model.config.get("_use_default_values", []) if k not in entries]
    model.register_to_config(**entries, _use_default_values=defaults)


def folder_holds(folder: Path, model: nn.Module) -> bool:
    """Whether FOLDER is a model folder whose weights file holds exactly `model`'s tensors (a resume with nothing
    left to do keeps such a folder, and what was recorded into its config since)."""
    path = folder / WEIGHTS_FILE
    if not (folder / "config.json").is_file() or not path.is_file():
        return False
    saved, state = load_file(str(path)), model.state_dict()
    return saved.keys() == state.keys() and all(torch.equal(saved[k], state[k].cpu()) for k in state)


def set_attention_heads(unet: nn.Module, heads: int) -> None:
    """Published layout: every attention layer has `heads` heads of C/heads channels (not a fixed head dim)."""
    for m in unet.modules():
        if isinstance(m, Attention):
            if m.inner_dim % heads:
                raise RCDMError(f"attention width {m.inner_dim} is not divisible by {heads} heads")
            m.heads = heads
            m.scale = (m.inner_dim // heads) ** -0.5


def check_encoder(model: RCDM, encoder_desc: dict) -> None:
    """Refuse an encoder that is not the one the model was trained on (identity, feature or dimension)."""
    cfg = model.config
    if encoder_desc["representation_dim"] != cfg.representation_dim:
        raise RCDMError(
            f"encoder {encoder_desc['encoder']!r} gives {encoder_desc['representation_dim']}-d representations "
            f"but the model expects {cfg.representation_dim}-d (trained on {cfg.encoder!r}, {cfg.feature})"
        )
    if cfg.encoder_identity and encoder_desc["encoder_identity"] != cfg.encoder_identity:
        raise RCDMError(
            f"model was trained on encoder {cfg.encoder!r} ({cfg.encoder_identity}) but got "
            f"{encoder_desc['encoder']!r} ({encoder_desc['encoder_identity']}): pass the same encoder"
        )
    trained_on, given = getattr(cfg, "encoder_weights", None), encoder_desc.get("encoder_weights")
    if trained_on and given and trained_on != given:
        raise RCDMError(
            f"model was trained on encoder {cfg.encoder!r} with weights sha256:{trained_on} but "
            f"{encoder_desc['encoder']!r} has weights sha256:{given}: the same spec now gives other weights (a "
            "random init, or a changed file or repo); pass the encoder the model was trained with"
        )
    if encoder_desc["feature"] != cfg.feature:
        raise RCDMError(
            f"model was trained on the {cfg.feature} feature but the encoder gives the "
            f"{encoder_desc['feature']}: pass --feature {cfg.feature}"
        )


def _fits(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a parameter annotation written as a string (`int | None`, `tuple[str, ...]`)."""
    for part in (p.strip() for p in annotation.split("|")):
        if part == "None" and value is None:
            return True
        if part == "bool" and isinstance(value, bool):
            return True
        if part == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if part == "float" and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if part == "str" and isinstance(value, str):
            return True
        if part == "dict" and isinstance(value, dict):
            return True
        if part.startswith("tuple[") and isinstance(value, list | tuple):
            inner = part.removeprefix("tuple[").split(",")[0].strip()
            if value and all(_fits(v, inner) for v in value):
                return True
    return False


def check_config(config: dict[str, Any], where: str) -> None:
    """Refuse an RCDM config.json with an unknown key, a value of the wrong type or a non-positive size.

    where: the file, named in the one-line RCDMError. Keys starting with '_' are diffusers' own.
    """
    if config.get("_class_name", "RCDM") != "RCDM":
        raise RCDMError(
            f"{where} describes a {config['_class_name']}, not an RCDM: pass an rcdm model folder"
        )
    params = inspect.signature(RCDM.__init__).parameters
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key not in params or key == "self":
            raise RCDMError(
                f"{where}: unknown setting {key!r} (not an RCDM config key): remove it, or load the model "
                "with the rcdm version that wrote it"
            )
        annotation = str(params[key].annotation)
        if not _fits(value, annotation):
            raise RCDMError(
                f"{where}: {key} = {json.dumps(value)} is not a valid {annotation}: fix or remove it"
            )
        sizes = value if isinstance(value, list) else [value]
        if "int" in annotation and any(
            isinstance(v, int) and not isinstance(v, bool) and v < 1 for v in sizes
        ):
            raise RCDMError(f"{where}: {key} = {json.dumps(value)} must be at least 1")
    if "representation_dim" not in config:
        raise RCDMError(f"{where}: missing representation_dim: not an RCDM model config")
    check_architecture(config, where)


# diffusers' 2-D UNet blocks an RCDM may name (UNet2DModel builds them by name).
DOWN_BLOCKS = ("DownBlock2D", "ResnetDownsampleBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "ResnetUpsampleBlock2D", "AttnUpBlock2D")
# Sane bounds on what a config may ask to be built: far past any published or trained RCDM (the largest, 256 px,
# 256..1024 channels), small enough that building the network never asks for more memory than its weights.
MAX_SIZE, MAX_CHANNELS, MAX_DIM, MAX_LAYERS = 1024, 4096, 1 << 20, 16


def check_architecture(config: dict[str, Any], where: str) -> None:
    """Refuse a config whose network cannot be built or would be absurdly large, before anything is built."""
    defaults = {k: p.default for k, p in inspect.signature(RCDM.__init__).parameters.items()}

    def get(key: str) -> Any:
        return config.get(key, defaults.get(key))

    def bad(key: str, why: str) -> RCDMError:
        return RCDMError(f"{where}: {key} = {json.dumps(get(key))} {why}: fix the config")

    dropout = get("dropout")
    if not (math.isfinite(dropout) and 0 <= dropout < 1):
        raise bad("dropout", "is out of range (0 <= dropout < 1)")
    for key, limit in (
        ("representation_dim", MAX_DIM),
        ("adapter_dim", MAX_DIM),
        ("adapter_hidden", MAX_DIM),
        ("adapter_layers", MAX_LAYERS),
    ):
        if get(key) is not None and get(key) > limit:
            raise bad(key, f"is too large (at most {limit})")
    if get("adapter_layers") is not None and get("adapter_layers") < 1:
        raise bad("adapter_layers", "is below 1 (the mlp adapter's hidden layers)")
    if get("layers_per_block") > MAX_LAYERS:
        raise bad("layers_per_block", f"is too large (at most {MAX_LAYERS})")
    channels, down, up = (
        list(get("block_out_channels")),
        list(get("down_block_types")),
        list(get("up_block_types")),
    )
    if not len(channels) == len(down) == len(up):
        raise RCDMError(
            f"{where}: block_out_channels, down_block_types and up_block_types have {len(channels)}, {len(down)} "
            f"and {len(up)} entries: give one per level: fix the config"
        )
    unknown = [b for b in down if b not in DOWN_BLOCKS] + [b for b in up if b not in UP_BLOCKS]
    if unknown:
        raise RCDMError(
            f"{where}: unknown block type {unknown[0]!r}: use {', '.join(DOWN_BLOCKS)} (down) or "
            f"{', '.join(UP_BLOCKS)} (up): fix the config"
        )
    groups = get("norm_num_groups")
    if any(c > MAX_CHANNELS or c % groups for c in channels):
        raise bad(
            "block_out_channels", f"must be at most {MAX_CHANNELS} and multiples of norm_num_groups {groups}"
        )
    size, halvings = get("sample_size"), len(channels) - 1
    if size > MAX_SIZE or size % (1 << halvings):
        raise bad(
            "sample_size",
            f"must be at most {MAX_SIZE} and divisible by {1 << halvings} ({halvings} halvings)",
        )
