"""`rcdm export`: any rcdm model as a plain diffusers folder that reproduces `rcdm sample` without rcdm.

OUT/unet/ (UNet2DModel), OUT/rep_proj.safetensors (the representation projection, standardisation and a linear
adapter folded in, the null embedding of guidance), OUT/scheduler/ (the model's default sampler, configured as
`rcdm sample` configures it), OUT/rcdm.json (the encoder, its preprocessing, the default sampling and the seeding
rule) and OUT/README.md (a runnable loop; tests/test_export.py runs it against `rcdm.diffusion.sample`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .diffusion import DEFAULT_STEPS, SamplingConfig, make_scheduler, resolve_sampling
from .errors import RCDMError
from .model import RCDM

# The seed of sample i of a call (`rcdm.diffusion.sample_generators`): batching never changes a sample.
SEEDING = (
    "sample i draws its starting noise torch.randn((1, 3, S, S), generator=torch.Generator().manual_seed(seed * "
    "1_000_003 + i)); `rcdm sample --num-samples N` numbers sample j of input image m as i = m * N + j"
)

README = """# {name}: an rcdm model as plain diffusers

Exported by `rcdm export` from `{source}`. Representation-Conditional Diffusion Model (Bordes, Balestriero,
Vincent, TMLR 2022): samples drawn from one image's representation show what the representation keeps.

- `unet/`: a `UNet2DModel` ({size} px; its output's first 3 channels are the {prediction}{variance}).
- `rep_proj.safetensors`: `class_labels = features @ weight.T + bias` for raw encoder features{null}.
- `scheduler/`: the `{scheduler}` that `rcdm sample` uses by default ({sampler}, {steps} steps).
- `rcdm.json`: the encoder (`{encoder}`, {feature}, {dim}-d; input {preprocessing}), the default sampling
  (guidance {guidance}) and the seeding rule: {seeding}.

The loop below draws what `rcdm sample --seed SEED --num-samples N` draws (in float32, up to rounding):

```python
import json

import torch
from diffusers import {scheduler}, UNet2DModel
from diffusers.models.attention_processor import Attention
from safetensors.torch import load_file

folder = "{folder_hint}"
info = json.load(open(f"{{folder}}/rcdm.json"))
unet = UNet2DModel.from_pretrained(f"{{folder}}/unet").eval()
for m in unet.modules():  # rcdm's attention layers have several heads, which UNet2DModel's config cannot say
    if isinstance(m, Attention):
        m.heads = info["attention_num_heads"]
proj = load_file(f"{{folder}}/rep_proj.safetensors")
scheduler = {scheduler}.from_pretrained(f"{{folder}}/scheduler")


@torch.no_grad()
def rcdm_sample(features, num_samples=8, steps=info["sampling"]["steps"], guidance=info["sampling"]["guidance"], seed=0):
    \"\"\"features: (M, dim), the encoder's raw output -> (M, num_samples, 3, S, S) in [0, 1].\"\"\"
    size = unet.config.sample_size
    emb = (features.float() @ proj["weight"].T + proj["bias"]).repeat_interleave(num_samples, 0)
    n = emb.shape[0]
    gens = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(n)]
    x = torch.cat([torch.randn((1, 3, size, size), generator=g) for g in gens])
    guided = guidance != 1
    if guided:  # classifier-free guidance: the null embedding is the unconditional branch
        emb = torch.cat([emb, proj["null_embedding"].expand_as(emb)])
    scheduler.set_timesteps(steps)
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        xin = scheduler.scale_model_input(x, t)
        xin = torch.cat([xin, xin]) if guided else xin
        out = unet(xin, t.expand(xin.shape[0]), class_labels=emb).sample[:, :3]
        if guided:
            cond, uncond = out.chunk(2)
            out = uncond + guidance * (cond - uncond)
        x = scheduler.step(out, t, x{step_kwargs}).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2).view(features.shape[0], num_samples, 3, size, size)
```

`features` come from the encoder in `rcdm.json`, fed images resized to its input size and normalised with its mean
and std; `rcdm encode --encoder {encoder} --feature {feature} --images ... --out F.safetensors` writes them, and rcdm's `RCDMPipeline` wraps this loop.
"""

STEP_KWARGS = {"ddim": ", eta=0.0, use_clipped_model_output=True"}


def write_recipe(model: RCDM, folder: Path, source: str = "an rcdm model", name: str | None = None) -> None:
    """OUT/scheduler, OUT/rcdm.json and OUT/README.md: everything a plain diffusers user needs beside the weights."""
    cfg = resolve_sampling(model, SamplingConfig())
    if (
        cfg.sampler == "ddpm"
    ):  # rcdm steps ddpm with its own noise stream: the loop below gives dpm++'s pictures
        cfg = cfg.replace(sampler="dpm++", steps=None)
    sched = make_scheduler(cfg.sampler, model.learned_variance)
    sched.register_to_config(prediction_type=model.prediction_type)
    sched.save_pretrained(folder / "scheduler")
    mc = model.config
    steps = cfg.steps or DEFAULT_STEPS[cfg.sampler]
    info = {
        "encoder": mc.encoder,
        "encoder_identity": mc.encoder_identity,
        "feature": mc.feature,
        "representation_dim": mc.representation_dim,
        "preprocessing": mc.preprocessing,
        "sample_size": mc.sample_size,
        "prediction_type": model.prediction_type,
        "attention_num_heads": mc.attention_num_heads or 1,
        "sampling": {"sampler": cfg.sampler, "steps": steps, "guidance": cfg.guidance, "seed": cfg.seed},
        "seeding": SEEDING,
        "source": source,
    }
    (folder / "rcdm.json").write_text(json.dumps(info, indent=2))
    prep = mc.preprocessing or {}
    (folder / "README.md").write_text(
        README.format(
            name=name or Path(source).name or "model",
            source=source,
            size=mc.sample_size,
            prediction="predicted noise (epsilon)" if model.prediction_type == "epsilon" else "predicted v",
            variance=", the last 3 the learned variance" if model.learned_variance else "",
            null=", and `null_embedding`, the unconditional branch of guidance"
            if model.null_rep is not None
            else "",
            scheduler=type(sched).__name__,
            sampler=cfg.sampler,
            steps=steps,
            encoder=mc.encoder,
            feature=mc.feature,
            dim=mc.representation_dim,
            preprocessing=f"{prep.get('input_size', '?')} px, mean {prep.get('mean')}, std {prep.get('std')}",
            guidance=f"{cfg.guidance:g}",
            seeding=SEEDING,
            folder_hint=name or folder.name,
            step_kwargs=STEP_KWARGS.get(cfg.sampler, ""),
        )
    )


@torch.no_grad()
def export_diffusers(
    model: RCDM, folder: str | Path, *, source: str = "an rcdm model", name: str | None = None
) -> Path:
    """Save the UNet for plain `UNet2DModel.from_pretrained(folder / 'unet')` and the projection.

    source: what the model was loaded from, and name: the folder's final name, for the README (default: its own).
    Writes folder/unet/ (config.json + safetensors), folder/scheduler, rcdm.json, README.md (`write_recipe`) and
    folder/rep_proj.safetensors (weight (E, dim), bias (E,);
    metadata: attention_num_heads). Plain diffusers builds one head per attention layer: set
    `heads = attention_num_heads` on every Attention after loading (docs/official.md shows the 5 lines).
    A model that standardises its representations has that folded into weight and bias (raw features in); a
    model with a learned null representation (guidance) adds `null_embedding` (E,), the class_labels row of the
    unconditional branch.
    """
    folder = Path(folder)
    adapter = model.rep_adapter
    if adapter is not None and adapter.mlp is not None:
        raise RCDMError(
            "this adapted model's mlp adapter is not one linear map, so rep_proj.safetensors cannot hold it: "
            "adapt with --adapter linear to export, or sample it with rcdm"
        )
    model.unet.save_pretrained(folder / "unet")
    write_recipe(model, folder, source, name)
    weight, bias = model.rep_proj.weight.float(), model.rep_proj.bias.float()
    null_embedding = weight @ model.null_rep.float() + bias if model.null_rep is not None else None
    if (
        adapter is not None
    ):  # W (A z + a) + b = (W A) z + (W a + b): the linear adapter folds into the projection
        weight, bias = weight @ adapter.linear.weight.float(), weight @ adapter.linear.bias.float() + bias
    tensors = {"weight": weight, "bias": bias}
    if (
        model.rep_mean is not None and model.rep_std is not None
    ):  # W (r - m) / s + b = (W / s) r + (b - W m / s)
        folded = weight / model.rep_std.float()
        tensors = {"weight": folded, "bias": bias - folded @ model.rep_mean.float()}
    if null_embedding is not None:  # the null representation lives in the standardised (base) space
        tensors["null_embedding"] = null_embedding
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(folder / "rep_proj.safetensors"),
        metadata={
            "attention_num_heads": str(model.config.attention_num_heads or 1),
            "representation_dim": str(model.config.representation_dim),
            # what the UNet's first 3 output channels are: epsilon, or v (eps = sqrt(abar) v + sqrt(1-abar) x_t)
            "prediction_type": model.prediction_type,
            "usage": "emb = features @ weight.T + bias; unet(x, t, class_labels=emb)",
        },
    )
    return folder
