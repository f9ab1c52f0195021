"""`pack` writes a demo bundle from the recipe runs (fp16 safetensors + card.json + README.md per model,
bundle.json); `rcdm.bundle.read_bundle` checks one and `rcdm.loading.load_bundled` opens its models, so that
readers never import this training-side module. `rcdm-cifar:NAME` and `rcdm sample --model FOLDER` read its
models; `rcdm demo` shows them.

Layout: BUNDLE/<encoder name>/{encoder.safetensors, card.json, README.md}, BUNDLE/<target>/{config.json,
diffusion_pytorch_model.rcdm.safetensors, card.json, README.md}, BUNDLE/demo-inputs/*, BUNDLE/bundle.json.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..adaptation import CARD_NOTE
from ..bundle import BUNDLE_INDEX, ROLES, read_card
from ..checks import check_guidance
from ..data import IMAGE_SUFFIXES, load_image
from ..encoders import create_encoder
from ..encoders.cifar import CifarEncoderNet, default_preprocessing, load_encoder_net, save_encoder
from ..errors import RCDMError
from ..figures import model_card
from ..files import write_text_atomic
from ..model import ADAPTER_WEIGHTS, RCDM, WEIGHTS_FILE
from ..prior import PRIOR_RECORD, find_prior, load_prior, training_settings, write_prior
from ..weights import sha256_file
from .cards import encoder_card, rcdm_card
from .rcdms import MIN_KNN_ACCURACY, Target, encoder_dir, run_record, run_settings, select_targets
from .ssl import CIFAR_LICENSE

MAX_BUNDLE_MB = 30.0  # MB = 10**6 bytes
# The sampler the pack's gates are measured with; each packed RCDM records it with the pack's guidance as its
# default sampling (RCDM config `sampling`), so a plain `rcdm sample` uses what was measured.
PACK_SAMPLING = {"sampler": "dpm++", "steps": 20}
# --- pack ------------------------------------------------------------------------------------------


def _public(path: Path, root: Path | None) -> str:
    """A path as a bundle may show it: relative to the runs folder, else its last two parts (no machine paths)."""
    if root is not None and path.is_relative_to(root):
        return str(path.relative_to(root))
    return str(Path(*path.parts[-2:]))


def _public_value(value: Any, root: Path | None) -> Any:
    """A run setting as a bundle may show it: an absolute path in it (also after a `prefix:`, also inside a dict
    or list) made `_public`."""
    if isinstance(value, dict):
        return {k: _public_value(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_public_value(v, root) for v in value]
    if not isinstance(value, str):
        return value
    prefix, sep, rest = value.partition(":")
    if sep and os.path.isabs(rest):
        return f"{prefix}:{_public(Path(rest), root)}"
    return _public(Path(value), root) if os.path.isabs(value) else value


def _packed_start(start: dict, root: Path) -> dict:
    """A packed RCDM's `initialised_from` record: without machine paths, and a start from another run under ROOT
    (the projector RCDM from the VICReg backbone RCDM) named by that run, which is the bundled model of the same name;
    its `weights` digest is of the run's float32 model, which the bundle then rounds to fp16: said so."""
    record = _public_value(start, root)
    source = Path(str(start.get("model", "")))
    if source.name == "model" and source.parent.parent.resolve() == Path(root).resolve():
        record["model"] = source.parent.name
        record["weights_of"] = "its training run's final model (float32), before the bundle's fp16 rounding"
    return record


def _packed_sampling(model: RCDM, guidance: float | None) -> dict:
    """The default sampling a packed RCDM records: the pack's `guidance` when given, else the sampling measured
    for this model by `rcdm recipe guidance --record` (kept with its measurements), else guidance 1."""
    own = dict(getattr(model.config, "sampling", None) or {})
    if guidance is None and own.get("measured"):
        return own
    return {**PACK_SAMPLING, "guidance": guidance or 1.0, "chosen_by": "rcdm recipe pack --guidance"}


def _demo_guidance(guidance: float | None, sampling: Mapping[str, dict]) -> tuple[float, str]:
    """The weight `rcdm demo` and `rcdm recipe findings` sample every bundled RCDM with (bundle.json `guidance`):
    one weight for all, so that their rows and findings compare like with like (guidance makes samples more alike,
    which reads as invariance), and why: --guidance; else the measured default of the first RCDM in ROLES order
    (the VICReg backbone RCDM) that records one; else 1. `sampling`: each packed RCDM's recorded sampling."""
    if guidance is not None:
        return guidance, "rcdm recipe pack --guidance"
    for target, label in ROLES.values():
        own = sampling.get(target) or {}
        if own.get("measured"):
            return float(
                own["guidance"]
            ), f"the {label} RCDM's measured default (rcdm recipe guidance --record)"
    return 1.0, "the default: no packed RCDM records a measured one"


def prior_entry(encoder_name: str, feature: str) -> str:
    """A bundled prior's folder name: prior-<encoder name>-<feature>."""
    return f"prior-{encoder_name}-{feature}"


def _shipped_prior(source: str | Path, identities: Mapping[str, str]) -> tuple[str, Path, dict]:
    """(entry name, prior folder, record) of the prior at SOURCE, matched to the bundle encoder (name ->
    identity) whose representations it models."""
    folder = find_prior(source)
    record = json.loads((folder / PRIOR_RECORD).read_text())
    name = next((n for n, ident in identities.items() if ident == record.get("encoder_identity")), None)
    if name is None:
        raise RCDMError(
            f"--prior {str(source)!r} models {record.get('encoder')!r} ({record.get('encoder_identity')}), none of "
            f"the bundle's encoders ({', '.join(f'{n} {i}' for n, i in identities.items())}): train it with "
            "`rcdm prior --model` on one of the bundle's RCDMs"
        )
    run_settings = folder.parent / "prior-run.json"  # a prior recorded before its record held its training
    if "training" not in record and run_settings.is_file():
        record["training"] = training_settings(json.loads(run_settings.read_text()))
    return prior_entry(name, record["feature"]), folder, {**record, "encoder": f"rcdm-cifar:{name}"}


def _write_prior(folder: Path, record: dict, dest: Path, metrics: dict | None) -> None:
    """The prior at FOLDER into DEST in float16, its record without machine paths, with `metrics` when given."""
    net, _ = load_prior(folder)
    model = str(record.get("model", ""))
    shipped = {
        **record,
        "model": _public(Path(model), None) if os.path.isabs(model) else model,
        "dtype": "float16",
        "metrics": metrics if metrics is not None else record.get("metrics", {}),
    }
    dest.mkdir(parents=True)
    write_prior(net, shipped, dest, half=True)


def add_to_bundle(
    bundle_dir: str | Path,
    *,
    prior: str | Path | None = None,
    adapter: str | Path | None = None,
    metrics: dict | None = None,
    overwrite: bool = False,
) -> tuple[str, int]:
    """Add one entry to the bundle at BUNDLE (`rcdm recipe add`), with its bundle.json record:

    - `prior`: a representation prior (rcdm prior's --out), in float16 beside the encoder whose representations
      it models: BUNDLE/prior-<encoder>-<feature>/;
    - `adapter`: rcdm adapt's adapter of a bundled encoder onto a bundled RCDM (RUN or RUN/adapter), as
      BUNDLE/rcdm-<encoder>-via-<base>/, which names its base as the folder beside it.

    `metrics` ({labelled number: value}) go on its card. Returns (entry name, bytes). Refused when the bundle
    would pass its size limit, or when the entry does not belong to the bundle's models."""
    if (prior is None) == (adapter is None):
        raise RCDMError("pass one of --prior or --adapter")
    bundle = Path(bundle_dir)
    index_path = bundle / BUNDLE_INDEX
    try:
        index = json.loads(index_path.read_text())
        identities = {n: read_card(bundle / n)["identity"] for n in index["encoders"]}
        rcdms = list(index["rcdms"])
    except (OSError, ValueError, KeyError, RCDMError) as e:
        raise RCDMError(f"--bundle {str(bundle)!r} is not a bundle of `rcdm recipe pack` ({e!r})") from None
    if prior is not None:
        entry, folder, record = _shipped_prior(prior, identities)
        key, listed = "priors", _prior_index(record)
        write = lambda dest: _write_prior(folder, record, dest, metrics)  # noqa: E731
    else:
        entry, folder, config, listed = _shipped_adapter(adapter, bundle, identities, rcdms)
        key = "adapters"
        write = lambda dest: _write_adapter(folder, config, dest, metrics)  # noqa: E731
    if (bundle / entry).exists() and not overwrite:
        raise RCDMError(f"{str(bundle / entry)!r} exists: pass --overwrite to replace it")
    tmp = bundle / f".tmp-add-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        size = _folder_bytes(tmp)
        others = sum(_folder_bytes(p) for p in bundle.iterdir() if p.name not in (entry, tmp.name))
        limit = int(index.get("max_bytes", MAX_BUNDLE_MB * 1e6))
        if others + size > limit:
            raise RCDMError(
                f"with {entry} ({size / 1e6:.2f} MB) the bundle would be {(others + size) / 1e6:.2f} MB, over its "
                f"{limit / 1e6:g} MB limit: make it smaller, or repack with a higher --max-mb"
            )
        if (bundle / entry).exists():
            shutil.rmtree(bundle / entry)
        os.rename(tmp, bundle / entry)  # then the index: it never lists an entry that is not there
        entries = {**index.get(key, {}), entry: {**listed, "bytes": size}}
        write_text_atomic(index_path, json.dumps({**index, key: entries}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry, size


def _shipped_adapter(
    source: str | Path, bundle: Path, identities: Mapping[str, str], rcdms: list[str]
) -> tuple[str, Path, dict, dict]:
    """(entry name, adapter folder, the config to ship, its bundle.json record) of rcdm adapt's adapter at SOURCE,
    matched to the bundled RCDM it was made on (by weights digest) and the bundled encoder it is conditioned on
    (by identity)."""
    folder = Path(source).expanduser()
    folder = folder / "adapter" if (folder / "adapter" / ADAPTER_WEIGHTS).is_file() else folder
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise RCDMError(
            f"--adapter {str(source)!r} holds no {ADAPTER_WEIGHTS}: pass an `rcdm adapt` run folder (or its adapter/)"
        )
    config = {
        k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "_name_or_path"
    }
    made_on = dict(config.get("adapted_from") or {})
    digests = {t: sha256_file(bundle / t / WEIGHTS_FILE) for t in rcdms}
    base = next((t for t, d in digests.items() if d == made_on.get("base_weights")), None)
    if base is None:
        raise RCDMError(
            f"--adapter {str(source)!r} was made on {made_on.get('base_model')!r}, none of the bundle's RCDMs "
            f"({', '.join(rcdms)}): adapt onto one of them (rcdm adapt --model BUNDLE/<rcdm>)"
        )
    encoder = next((n for n, i in identities.items() if i == config.get("encoder_identity")), None)
    if encoder is None:
        raise RCDMError(
            f"--adapter {str(source)!r} is conditioned on {config.get('encoder')!r}, none of the bundle's encoders "
            f"({', '.join(identities)}): adapt with --encoder rcdm-cifar:<a bundled encoder>"
        )
    made_on = {k: _public_value(v, None) for k, v in made_on.items()}
    config.update(encoder=f"rcdm-cifar:{encoder}", adapted_from={**made_on, "base_model": f"../{base}"})
    entry = f"rcdm-{encoder}-via-{base.removeprefix('rcdm-')}"
    return entry, folder, config, {"base": base, "encoder": encoder, "feature": config["feature"]}


def _write_adapter(folder: Path, config: dict, dest: Path, metrics: dict | None) -> None:
    """The adapter at FOLDER into DEST: its tensors as they are, its config naming the base beside it, a card."""
    dest.mkdir(parents=True)
    shutil.copyfile(folder / ADAPTER_WEIGHTS, dest / ADAPTER_WEIGHTS)
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    made_on = config["adapted_from"]
    card = {"note": CARD_NOTE, "base": made_on["base_model"].removeprefix("../"), "metrics": metrics or {}}
    (dest / "card.json").write_text(json.dumps(card, indent=2))
    fields = [
        (k, made_on[k])
        for k in ("adapter", "trainable", "map_r2_heldout", "num_images", "steps")
        if k in made_on
    ]
    base = made_on["base_model"].removeprefix("../")
    (dest / "README.md").write_text(
        model_card(
            f"Adapted RCDM: `{config['encoder']}` ({config['feature']}) through `{base}`",
            [
                CARD_NOTE,
                f"Made by `rcdm adapt` onto the bundled `{base}` (its UNet, projection and null representation, "
                "frozen; weights sha256 "
                + made_on["base_weights"][:16]
                + "); this folder holds only what differs "
                "from it, and loads over it (`rcdm sample --model` this folder).",
            ],
            fields,
            sections=[("Measured", "\n".join(f"- {k}: {v}" for k, v in metrics.items()))] if metrics else [],
        )
    )


def _prior_index(record: dict) -> dict:
    """A prior's bundle.json record, less its size."""
    return {"encoder": record["encoder"].removeprefix("rcdm-cifar:"), "feature": record["feature"]}


@dataclass
class PackResult:
    out_dir: Path
    total_bytes: int
    sizes: dict[str, int]  # bundle entry -> bytes
    smoke: bool
    notes: list[str] = field(default_factory=list)


def _folder_bytes(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def _problems(runs_root: Path, targets: tuple[Target, ...], records: dict[str, dict]) -> list[str]:
    """Why these runs would be undertrained (empty when all look like real runs)."""
    out = []
    for run in sorted({t.encoder_run for t in targets}):
        card = read_card(encoder_dir(runs_root, run))
        if card.get("smoke"):
            out.append(f"encoder {run} is a smoke run")
        knn = (card.get("knn_accuracy") or {}).get("backbone", 0.0)
        if knn < MIN_KNN_ACCURACY:
            out.append(f"encoder {run} has backbone k-NN accuracy {knn:.3f} < {MIN_KNN_ACCURACY}")
    out += [f"{t.name} is a smoke run" for t in targets if records[t.name].get("smoke")]
    return out


@torch.no_grad()
def _fp16_cosine(net: torch.nn.Module, probe: torch.Tensor) -> float:
    """Min cosine similarity between features of `net` in fp32 and with weights rounded to fp16 (both in fp32)."""
    assert isinstance(net, CifarEncoderNet)
    rounded = CifarEncoderNet(net.arch).eval()
    rounded.load_state_dict(
        {k: v.half().float() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    )
    x = default_preprocessing()(probe)
    h, hr = net.eval().backbone(x), rounded.backbone(x)
    sims = [F.cosine_similarity(h, hr).min()]
    if net.projector is not None and rounded.projector is not None:
        sims.append(F.cosine_similarity(net.projector(h), rounded.projector(hr)).min())
    return float(torch.stack(sims).min())


@torch.no_grad()
def _fp16_rcdm_error(model: RCDM) -> float:
    """Relative L2 error of the model output with fp16-rounded weights, on a fixed random input."""
    g = torch.Generator().manual_seed(0)
    size, dim = model.config.sample_size, model.config.representation_dim
    x = torch.randn(4, 3, size, size, generator=g)
    rep = torch.randn(4, dim, generator=g)
    t = torch.tensor([10, 250, 500, 900])
    ref = model(x, t, rep)
    rounded = RCDM.from_config(model.config)
    rounded.load_state_dict(
        {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    )
    out = rounded.eval()(x, t, rep)
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def pack(
    runs_root: str | Path,
    out_dir: str | Path,
    *,
    only: list[str] | tuple[str, ...] | None = None,
    metrics: dict[str, dict[str, Any]] | None = None,  # target name -> {metric name (labelled): value}
    allow_smoke: bool = False,
    max_mb: float = MAX_BUNDLE_MB,
    demo_images: list[Path] | tuple[Path, ...] = (),
    overwrite: bool = False,
    min_fp16_cosine: float = 0.999,  # encoders below this stay float32
    max_fp16_error: float = 1e-2,  # RCDMs above this relative output error stay float32
    # the weight the demo samples the bundle with (> 1 needs models with condition dropout); None: 1, and each RCDM
    # keeps the sampling `rcdm recipe guidance --record` measured for it, when it has one
    guidance: float | None = None,
    # pack every RCDM at this checkpoint (the same training for all), not its newest model
    step: int | None = None,
    steps: Mapping[str, int] | None = None,  # per target, over `step`: {target: checkpoint step}
    # representation priors (rcdm prior's --out, or a bundled prior) shipped beside the encoder each models
    priors: Sequence[str | Path] = (),
) -> PackResult:
    """Bundle the encoders and RCDMs of ROOT into OUT (written as a whole or not at all).

    OUT/<encoder name>/{encoder.safetensors, card.json, README.md}, OUT/<target>/{config.json,
    diffusion_pytorch_model.rcdm.safetensors, card.json, README.md}, OUT/prior-<encoder name>-<feature>/ (each of
    `priors`, float16; `metrics` may be keyed by its name), OUT/demo-inputs/*, OUT/bundle.json. The RCDMs'
    config names their encoder as `rcdm-cifar:<encoder name>` so that a bundle under rcdm/assets/models is
    found by name. `step` packs each run's EMA at that checkpoint, with its record rebuilt for that step
    (rcdms.run_record), so that models compared on the demo page have seen the same number of images;
    `steps` sets it per target (a model that met its gates earlier stays at its step while others train on).
    Raises RCDMError for smoke runs (unless allow_smoke: then every card says so) and when the
    bundle exceeds `max_mb` MB (10**6 bytes).
    """
    root, out = Path(runs_root), Path(out_dir)
    if guidance is not None:
        check_guidance(guidance)
    if not (isinstance(max_mb, int | float) and math.isfinite(max_mb) and max_mb > 0):
        raise RCDMError(f"--max-mb {max_mb} must be a positive number of MB (default {MAX_BUNDLE_MB:g})")
    if out.exists() and not out.is_dir():
        raise RCDMError(f"--out {str(out)!r} is a file, not a folder: choose a folder")
    for image in demo_images:  # each must be an image rcdm can read, before any work
        if not Path(image).is_file():
            raise RCDMError(f"--demo-images {str(image)!r}: no such image file")
        if Path(image).suffix.lower() not in IMAGE_SUFFIXES:
            raise RCDMError(
                f"--demo-images {str(image)!r} is not an image ({'/'.join(sorted(IMAGE_SUFFIXES))}): pass images"
            )
        load_image(image)  # a damaged file is one line naming it
    targets = select_targets(only)
    metrics, steps = dict(metrics or {}), dict(steps or {})
    packed = [t.name for t in targets]
    for what, given in (("metrics", metrics), ("a step", steps)):  # keyed by target: each key must be packed
        unknown = sorted(
            k for k in set(given) - set(packed) if not (what == "metrics" and k.startswith("prior-"))
        )
        if unknown:
            raise RCDMError(f"{what} given for {unknown}, which are not packed: use {packed}")
    # name -> (model folder, record)
    runs = {t.name: run_record(root / t.name, steps.get(t.name, step)) for t in targets}
    problems = _problems(root, targets, {name: rec for name, (_, rec) in runs.items()})
    if problems and not allow_smoke:
        raise RCDMError(
            f"refusing to bundle undertrained models ({'; '.join(problems)}): train with the full recipe, or pass "
            "--allow-smoke to pack them labelled as a smoke test"
        )
    smoke = bool(problems)
    encoders = {run: encoder_dir(root, run) for run in sorted({t.encoder_run for t in targets})}
    enc_names = {run: read_card(path)["name"] for run, path in encoders.items()}
    identities = {enc_names[run]: read_card(path)["identity"] for run, path in encoders.items()}
    shipped = {entry: (folder, rec) for entry, folder, rec in (_shipped_prior(p, identities) for p in priors)}
    unmatched = sorted(k for k in metrics if k.startswith("prior-") and k not in shipped)
    if unmatched:
        raise RCDMError(
            f"metrics given for {unmatched}, which are not packed: use {sorted(shipped) or 'none'}"
        )
    entries = [*enc_names.values(), *(t.name for t in targets), *shipped, BUNDLE_INDEX]
    if demo_images:
        entries.append("demo-inputs")
    clash = [e for e in entries if (out / e).exists()]
    if clash and not overwrite:
        raise RCDMError(f"{str(out)!r} already holds {clash}: pass --overwrite or another --out")

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-pack-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        probe = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        notes: list[str] = []
        for run, path in encoders.items():
            net, card = load_encoder_net(path)
            cos = _fp16_cosine(net, probe)
            dtype = torch.float16 if cos >= min_fp16_cosine else torch.float32
            if dtype == torch.float32:
                notes.append(f"encoder {enc_names[run]} kept in float32 (fp16 feature cosine {cos:.5f})")
            card = {
                **card,
                "smoke": smoke or bool(card.get("smoke")),
                "packed": {"from": _public(path, root), "fp16_min_cosine": cos},
            }
            folder = save_encoder(net, tmp / enc_names[run], card, dtype=dtype)
            full = read_card(folder)
            (folder / "README.md").write_text(encoder_card(full))
        for t in targets:
            model_dir, rec = runs[t.name]
            model = RCDM.from_pretrained(model_dir).eval()
            enc_identity = identities[enc_names[t.encoder_run]]
            if model.config.encoder_identity != enc_identity:
                raise RCDMError(
                    f"{t.name} was trained on encoder {model.config.encoder_identity} but {encoders[t.encoder_run]} "
                    f"is {enc_identity}: retrain it with `rcdm recipe rcdm`"
                )
            if (guidance or 1.0) != 1.0 and model.null_rep is None:
                raise RCDMError(
                    f"--guidance {guidance:g} needs RCDMs trained with condition dropout, and {t.name} was not: "
                    "pack with --guidance 1, or train with `rcdm recipe rcdm --profile cpu` (--cond-drop 0.1)"
                )
            err = _fp16_rcdm_error(model)
            half = err <= max_fp16_error
            if not half:
                notes.append(f"{t.name} kept in float32 (fp16 relative output error {err:.2e})")
            # the packed encoder's weights are fp16-rounded: record their digest, which sampling checks
            packed = create_encoder(f"rcdm-cifar:{tmp / enc_names[t.encoder_run]}", t.feature)
            model.register_to_config(
                encoder=f"rcdm-cifar:{enc_names[t.encoder_run]}",
                encoder_weights=packed.weights_digest(),
                sampling=_packed_sampling(model, guidance),
            )
            start = getattr(model.config, "initialised_from", None)
            if start:  # rcdm train --init-from: no machine path
                model.register_to_config(initialised_from=_packed_start(start, root))
            (model.half() if half else model).save_pretrained(tmp / t.name)
            run_cfg = run_settings(root / t.name)
            card = {
                "name": t.name,
                "kind": "rcdm",
                "encoder": enc_names[t.encoder_run],
                "feature": t.feature,
                "preset": run_cfg.get("preset"),
                "steps": rec["steps"],
                "planned_steps": rec.get("planned_steps", run_cfg.get("steps")),
                "packed_from": _public(model_dir, root),
                "batch_size": run_cfg["batch_size"],
                "images_seen": rec["images_seen"],
                "wall_time_s": rec["wall_time_s"],
                "cpu_time_s": rec.get("cpu_time_s"),  # None: a run recorded before CPU time was
                "cpu_time_from_step": rec.get("cpu_time_from_step", 0),
                "device": rec["device"],
                "stopped_early": rec.get("stopped_early", False),
                "smoke": smoke or bool(rec.get("smoke")),
                "dtype": "float16" if half else "float32",
                "fp16_relative_error": err,
                "metrics": metrics.get(t.name, {}),
                "train_config": {k: _public_value(v, root) for k, v in run_cfg.items()},
                "sampling": model.config.sampling,
                "initialised_from": getattr(model.config, "initialised_from", None),
                "data_license": CIFAR_LICENSE,
                "git_commit": rec.get("git_commit"),
            }
            (tmp / t.name / "card.json").write_text(json.dumps(card, indent=2, default=str))
            (tmp / t.name / "README.md").write_text(rcdm_card(card))
        for entry, (folder, rec) in shipped.items():
            _write_prior(folder, rec, tmp / entry, metrics.get(entry))
        if demo_images:
            (tmp / "demo-inputs").mkdir()
            for p in demo_images:
                name = f"{Path(p).parent.name}-{Path(p).name}" if Path(p).parent.name else Path(p).name
                shutil.copyfile(p, tmp / "demo-inputs" / name)
        sizes = {e: _folder_bytes(tmp / e) for e in entries if e != BUNDLE_INDEX}
        index = {
            "smoke": smoke,
            "smoke_reasons": problems,
            "encoders": {enc_names[r]: {"objective": r, "bytes": sizes[enc_names[r]]} for r in encoders},
            "rcdms": {
                t.name: {"encoder": enc_names[t.encoder_run], "feature": t.feature, "bytes": sizes[t.name]}
                for t in targets
            },
            **(
                {"priors": {e: {**_prior_index(rec), "bytes": sizes[e]} for e, (_, rec) in shipped.items()}}
                if shipped
                else {}
            ),
            "notes": notes,
            "max_bytes": int(max_mb * 1e6),
        }
        index["guidance"], index["guidance_chosen_by"] = _demo_guidance(
            guidance,
            {t.name: json.loads((tmp / t.name / "config.json").read_text()).get("sampling") for t in targets},
        )
        (tmp / BUNDLE_INDEX).write_text(json.dumps(index, indent=2))
        sizes[BUNDLE_INDEX] = _folder_bytes(tmp / BUNDLE_INDEX)
        total = sum(sizes.values())
        if total > max_mb * 1e6:
            listing = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items())
            raise RCDMError(
                f"the bundle is {total / 1e6:.2f} MB, over the {max_mb:g} MB limit ({listing}): train a smaller "
                "--preset (cifar32-small), pack fewer models (--only), or raise --max-mb"
            )
        for e in entries:
            if (out / e).exists():
                shutil.rmtree(out / e) if (out / e).is_dir() else (out / e).unlink()
            os.rename(tmp / e, out / e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PackResult(out, total, sizes, smoke, notes)
