"""`rcdm train --init-from MODEL`: a new run starts from a trained RCDM's weights instead of random ones.

What a trained RCDM has learned splits in two: the image prior (the UNet) and the way a representation steers it
(the projection into the time embedding, the null representation). A run for another encoder, or for the same
encoder on other data, can keep the first and learn only what differs, which costs far fewer steps than learning
both from scratch. So every UNet tensor is copied (the UNets must have the same layout), and the conditioning
tensors too when the run's encoder is the one the model was trained on (its identity and level); otherwise they
start from random weights (and the representation statistics are measured on the run's data, as in any run).
"""

from __future__ import annotations

import json
import logging

import torch

from .errors import RCDMError
from .loading import load_model, model_reference, resolve_model_dir
from .model import PRESETS, RCDM, WEIGHTS_FILE, record_in_config
from .weights import sha256_file

log = logging.getLogger(__name__)

# measured on the run's own data when it standardises (set_representation_stats), never copied
STATISTICS = ("rep_mean", "rep_std")


def settings_of(spec: str) -> dict:
    """The training settings of the trained RCDM named by `spec` that a run started from it needs for its UNet to
    fit or to go on as it learned: the preset whose layout it has (none when it has no preset's layout), its image
    size, loss (a learned variance: hybrid) and prediction target. `rcdm train --init-from` takes them as its
    defaults, under the flags given."""
    config = json.loads((resolve_model_dir(spec) / "config.json").read_text())
    out = {
        "image_size": config["sample_size"],
        "loss": "hybrid" if config.get("learned_variance") else "simple",
        "prediction": config.get("prediction_type", "epsilon"),
    }
    for name, layout in PRESETS.items():
        if all(_same(config.get(key), value) for key, value in layout.items() if key != "sample_size"):
            out["preset"] = name
            break
    return out


def _same(a: object, b: object) -> bool:
    """Config values equal, a JSON list and a tuple of the same items included."""
    return list(a) == list(b) if isinstance(a, list | tuple) and isinstance(b, list | tuple) else a == b


def initialise_from(model: RCDM, spec: str) -> dict:
    """Copy the trained RCDM named by `spec` (any --model source) into the freshly built `model`, in place, and
    record where it came from in its config (`initialised_from`); returns that record.

    One line naming the first difference when the UNets differ in layout (preset, learned variance).
    """
    folder = resolve_model_dir(spec)
    source = load_model(folder, device="cpu")
    if source.rep_adapter is not None:
        raise RCDMError(
            f"--init-from {spec}: an adapted model (rcdm adapt) steers its base through an adapter; start from "
            f"its base instead ({(source.config.adapted_from or {}).get('base_model')})"
        )
    theirs, ours = source.state_dict(), model.state_dict()
    for name, tensor in ours.items():
        if name.startswith("unet.") and (name not in theirs or theirs[name].shape != tensor.shape):
            got = "missing" if name not in theirs else tuple(theirs[name].shape)
            raise RCDMError(
                f"--init-from {spec}: its UNet differs from this run's ({name}: {got} against "
                f"{tuple(tensor.shape)}): leave --preset and --loss out (they follow the model), or start from scratch"
            )
    same_space = (source.config.encoder_identity, source.config.feature) == (
        model.config.encoder_identity,
        model.config.feature,
    ) and source.config.encoder_identity is not None
    copied, fresh = [], []
    with torch.no_grad():
        for name, tensor in ours.items():
            if name in STATISTICS:
                continue
            if name.startswith("unet.") or (
                same_space and name in theirs and theirs[name].shape == tensor.shape
            ):
                tensor.copy_(theirs[name])
                copied.append(name)
            else:
                fresh.append(name)
    if source.prediction_type != model.prediction_type:
        log.warning(
            "--init-from %s predicts %s and this run trains %s: its output layer starts from the other target",
            spec,
            source.prediction_type,
            model.prediction_type,
        )
    weights = folder / WEIGHTS_FILE
    record = {
        "model": model_reference(spec),
        "weights": sha256_file(weights) if weights.is_file() else None,
        "encoder": source.config.encoder,
        "feature": source.config.feature,
        "copied": len(copied),
        "fresh": fresh,
    }
    record_in_config(model, initialised_from=record)
    log.info(
        "initial weights from %s: %d tensors copied (the UNet%s); from random weights: %s",
        spec,
        len(copied),
        " and the conditioning: same encoder" if same_space else "",
        ", ".join(fresh) or "none",
    )
    return record
