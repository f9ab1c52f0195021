"""rcdm.pack.write: bundling runs (refusals, smoke labels, size limit, a checkpoint of an interrupted run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rcdm.bundle import read_bundle
from rcdm.cli import main
from rcdm.encoders import create_encoder
from rcdm.errors import RCDMError
from rcdm.loading import load_model
from rcdm.pack.rcdms import RCDMRecipe, train_rcdms
from rcdm.pack.write import add_to_bundle, pack
from rcdm.prior import find_prior, load_prior
from test_prior import prior_run  # noqa: F401  (a fixture)

from .conftest import TARGET


def test_pack_refuses_smoke_runs_and_oversized_bundles(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    args = ["recipe", "pack", "--runs", str(runs), "--out", str(out), "--only", TARGET]
    assert main(args) == 2
    assert main([*args, "--allow-smoke", "--max-mb", "0.5"]) == 2
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(RCDMError, match="not packed"):
        pack(runs, out, only=[TARGET], metrics={"rcdm-cifar10-supervised": {}}, allow_smoke=True)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--max-mb", "nan"], "--max-mb nan must be a positive number of MB"),
        (["--demo-images", "NOTE"], "is not an image"),
        (["--demo-images", "nope.jpg"], "--demo-images 'nope.jpg': no such image file"),
        (["--out", "NOTE"], "is a file, not a folder"),
    ],
)
def test_pack_options_are_checked_in_one_line_before_any_work(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], says: str
) -> None:
    note = tmp_path / "note.txt"
    note.write_text("not an image")
    extra = [str(note) if a == "NOTE" else a for a in extra]
    args = ["recipe", "pack", "--runs", str(runs), "--only", TARGET, "--allow-smoke"]
    out = ["--out", str(tmp_path / "bundle")] if "--out" not in extra else []
    assert main([*args, *out, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and says in err, err
    assert not (tmp_path / "bundle").exists()


def test_pack_labels_an_allowed_smoke_bundle(
    runs: Path, few_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rcdm.loading import encoder_for, load_model

    out = tmp_path / "bundle"
    demo = sorted(few_images.glob("*.jpg"))[:2]
    result = pack(
        runs,
        out,
        only=[TARGET],
        allow_smoke=True,
        demo_images=demo,
        metrics={TARGET: {"x": 1.0, "y": 0.1 + 0.2}},
    )
    assert result.smoke and result.total_bytes <= 30e6
    assert result.total_bytes == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    index = json.loads((out / "bundle.json").read_text())
    assert index["smoke"] is True and index["smoke_reasons"]
    enc_name = index["rcdms"][TARGET]["encoder"]
    for name in (enc_name, TARGET):
        assert json.loads((out / name / "card.json").read_text())["smoke"] is True
        assert "SMOKE TEST" in (out / name / "README.md").read_text()
    card = json.loads((out / TARGET / "card.json").read_text())
    assert card["steps"] == 2 and card["images_seen"] == 8 and card["metrics"] == {"x": 1.0, "y": 0.1 + 0.2}
    assert "| y | 0.3 |" in (out / TARGET / "README.md").read_text()  # the table rounds; card.json does not
    assert card["cpu_time_s"] > 0 and "| CPU time |" in (out / TARGET / "README.md").read_text()
    with safe_open(str(out / TARGET / "diffusion_pytorch_model.rcdm.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118  (safe_open is not a dict) == {"F16"}  # noqa: SIM118
    assert len(list((out / "demo-inputs").iterdir())) == 2
    # The bundled model finds its bundled encoder by name, and the identity check passes.
    monkeypatch.setenv("RCDM_MODELS", str(out))
    model = load_model(out / TARGET)
    assert model.config.encoder == f"rcdm-cifar:{enc_name}"
    enc = encoder_for(model)
    ref = create_encoder(f"rcdm-cifar:{runs / 'ssl' / 'encoder'}", feature="projector")
    x = torch.rand(4, 3, 32, 32)
    assert torch.nn.functional.cosine_similarity(enc(x), ref(x)).min() > 0.999
    # Packing again into the same folder needs --overwrite.
    with pytest.raises(RCDMError, match="--overwrite"):
        pack(runs, out, only=[TARGET], allow_smoke=True)


def test_pack_at_a_checkpoint_of_an_interrupted_run(runs: Path, few_images: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(runs / "ssl", root / "ssl")
    recipe = RCDMRecipe(
        data=str(few_images),
        preset="tiny",
        steps=3,
        batch_size=4,
        save_every=1,
        num_workers=0,
        keep_checkpoints=5,
    )
    train_rcdms(recipe, root, only=[TARGET], progress=False)
    run = root / TARGET
    # A session killed after its step-2 checkpoint and resumed from it (no recipe.json): the resume dropped the
    # rows after step 2 and restarted the clock (rcdm.monitor), so metrics.jsonl holds two sessions.
    finished = json.loads((run / "recipe.json").read_text())
    (run / "recipe.json").unlink()
    rows = [(1, 10.0, 5.0), (2, 20.0, 10.0), (3, 12.0, 6.0)]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 0.1, "elapsed_s": e, "cpu_s": c}) + "\n" for s, e, c in rows)
        + '{"step": 4, "lo'  # the line a kill cut mid-write
    )
    out = tmp_path / "bundle"
    pack(root, out, only=[TARGET], allow_smoke=True, step=2)
    card = json.loads((out / TARGET / "card.json").read_text())
    assert card["steps"] == 2 and card["planned_steps"] == 3 and card["images_seen"] == 8
    assert card["wall_time_s"] == 20.0 and card["cpu_time_s"] == 10.0 and card["stopped_early"] is True
    assert "2 (of 3 planned)" in (out / TARGET / "README.md").read_text()
    packed = load_file(str(out / TARGET / "diffusion_pytorch_model.rcdm.safetensors"))
    for step, same in ((2, True), (3, False)):
        ema = load_file(
            str(run / "checkpoints" / f"step-{step:08d}" / "ema" / "diffusion_pytorch_model.rcdm.safetensors")
        )
        assert all(torch.equal(packed[k].float(), ema[k].half().float()) for k in ema) is same, step
    # The newest checkpoint, by default: both sessions' time.
    pack(root, out, only=[TARGET], allow_smoke=True, overwrite=True)
    card = json.loads((out / TARGET / "card.json").read_text())
    assert card["steps"] == 3 and card["wall_time_s"] == 32.0 and card["cpu_time_s"] == 16.0
    # The resumed session finished the run and wrote recipe.json with its own time only (since step 2): the card
    # still sums both sessions, and keeps the record's other fields.
    last = {"wall_time_s": 12.0, "cpu_time_s": 6.0, "cpu_time_from_step": 2, "device": "cpu (the test's)"}
    (run / "recipe.json").write_text(json.dumps({**finished, **last}))
    pack(root, out, only=[TARGET], allow_smoke=True, overwrite=True)
    card = json.loads((out / TARGET / "card.json").read_text())
    assert (card["steps"], card["wall_time_s"], card["cpu_time_s"]) == (3, 32.0, 16.0)
    assert not card["cpu_time_from_step"] and card["device"] == "cpu (the test's)"
    args = ["recipe", "pack", "--runs", str(root), "--out", str(out), "--only", TARGET, "--allow-smoke"]
    assert main([*args, "--overwrite", "--step", "7"]) == 2  # no such checkpoint: the message lists 1, 2, 3
    assert main([*args, "--overwrite", "--step", "0"]) == 2
    # One target at its own step, over the plain one (a model past its gates stays while the others train on).
    assert main([*args, "--overwrite", "--step", "3", "--step", f"{TARGET}=2"]) == 0
    assert json.loads((out / TARGET / "card.json").read_text())["steps"] == 2
    assert (
        main([*args, "--overwrite", "--step", f"{TARGET}=x"]) == 2
    )  # not a step: the message gives the form
    with pytest.raises(RCDMError, match="not packed"):
        pack(root, out, only=[TARGET], allow_smoke=True, overwrite=True, steps={"rcdm-cifar10-supervised": 2})
    # A finished run with neither recipe.json nor run.json: a message naming the missing file, not a traceback.
    (run / "run.json").unlink()
    with pytest.raises(RCDMError, match=r"holds no run\.json, so it is not a training run"):
        pack(root, out, only=[TARGET], allow_smoke=True, overwrite=True)


def test_a_measured_sampling_travels_into_the_bundle_and_no_card_names_a_machine_path(
    runs: Path, tmp_path: Path
) -> None:
    import shutil

    from rcdm.pack.evaluation import record_model_sampling

    root = tmp_path / "runs"
    shutil.copytree(runs, root)
    measured = [
        {
            "guidance": g,
            "class_agreement": a,
            "rank1": r,
            "mean_rank": 3.0,
            "frechet": 2.0,
            "diversity": d,
            "pixel_spread": 0.1,
        }
        for g, a, r, d in ((1.0, 0.3, 0.02, 0.4), (3.0, 0.6, 0.06, 0.3))
    ]
    record = {
        "sampler": "dpm++",
        "steps": 20,
        "guidance": 3.0,
        "chosen_by": "the lowest ...",
        "measured": measured,
    }
    record_model_sampling(root / TARGET / "model", record)  # what `rcdm recipe guidance --record` writes
    pack(root, tmp_path / "kept", only=[TARGET], allow_smoke=True)
    config = json.loads((tmp_path / "kept" / TARGET / "config.json").read_text())
    assert config["sampling"] == record  # no --guidance: the model keeps what was measured for it
    readme = (tmp_path / "kept" / TARGET / "README.md").read_text()
    assert "dpm++ 20, guidance 3 (the lowest ...)" in readme and "## Sampling against guidance" in readme
    assert "| 3.000 | 0.600 | 0.060 |" in readme
    pack(root, tmp_path / "given", only=[TARGET], allow_smoke=True, guidance=1.0)
    given = json.loads((tmp_path / "given" / TARGET / "config.json").read_text())["sampling"]
    assert given["guidance"] == 1.0 and given["chosen_by"] == "rcdm recipe pack --guidance"  # explicit wins
    # the demo's one weight for all: the measured default of the first RCDM in ROLES order, else --guidance
    kept = json.loads((tmp_path / "kept" / "bundle.json").read_text())
    assert (
        kept["guidance"] == 3.0 and "VICReg projector RCDM's measured default" in kept["guidance_chosen_by"]
    )
    given_index = json.loads((tmp_path / "given" / "bundle.json").read_text())
    assert (
        given_index["guidance"] == 1.0 and given_index["guidance_chosen_by"] == "rcdm recipe pack --guidance"
    )
    for card in (tmp_path / "kept").rglob("card.json"):
        assert "/tmp" not in card.read_text(), card  # paths relative to the runs, or their last parts


def test_a_prior_ships_in_float16_beside_its_encoder_and_is_checked(
    extended_bundle: Path,
    bundle: Path,
    prior_run: Path,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    entry = extended_bundle / "prior-cifar10-vicreg-r8w1-backbone"
    index = json.loads((extended_bundle / "bundle.json").read_text())
    assert index["priors"] == {
        entry.name: {
            "encoder": "cifar10-vicreg-r8w1",
            "feature": "backbone",
            "bytes": index["priors"][entry.name]["bytes"],
        }
    }
    assert index["priors"][entry.name]["bytes"] == sum(p.stat().st_size for p in entry.iterdir())
    with safe_open(entry / "diffusion_pytorch_model.safetensors", "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118  (safe_open is not a dict)
    assert dtypes["rep_std"] == "F32" and dtypes["proj_in.weight"] == "F16"  # weights halved, statistics kept
    net, record = load_prior(entry)
    assert next(net.parameters()).dtype == torch.float32
    assert record["encoder"] == "rcdm-cifar:cifar10-vicreg-r8w1" and record["dtype"] == "float16"
    assert record["metrics"] == {"Fréchet (a test number)": 1.5}
    assert (
        "/tmp" not in (entry / "prior.json").read_text() and "/tmp" not in (entry / "README.md").read_text()
    )
    assert "Fréchet (a test number): 1.5" in (entry / "README.md").read_text()
    # What the bundle's readers see: the prior of the backbone's encoder, none for the projector's feature.
    b = read_bundle(extended_bundle)
    assert (
        b.prior("rcdm-cifar10-vicreg-backbone") == entry and b.prior("rcdm-cifar10-vicreg-projector") is None
    )
    assert find_prior(entry) == entry
    # Refusals, each in one line, the bundle unchanged: another encoder's prior, an existing entry, the size limit.
    copy = tmp_path / "copy"
    shutil.copytree(extended_bundle, copy)
    with pytest.raises(RCDMError, match="none of the bundle's encoders"):
        add_to_bundle(copy, prior=prior_run)  # a prior of the tiny pixels model
    with pytest.raises(RCDMError, match="exists: pass --overwrite"):
        add_to_bundle(copy, prior=entry)
    index["max_bytes"] = sum(
        p.stat().st_size for p in copy.rglob("*") if p.is_file() and p.name != "bundle.json"
    )
    (copy / "bundle.json").write_text(json.dumps(index))
    with pytest.raises(RCDMError, match=r"over its .* MB limit"):
        add_to_bundle(copy, prior=entry, overwrite=True)
    assert json.loads((copy / "bundle.json").read_text()) == index and not list(copy.glob(".tmp-*"))
    # `rcdm recipe pack --prior` ships it in the same way from the runs, with metrics keyed by its name.
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({entry.name: {"a number": 2.0}}))
    args = [
        "recipe",
        "pack",
        "--runs",
        str(bundle.parent),
        "--out",
        str(tmp_path / "packed"),
        "--allow-smoke",
    ]
    assert main([*args, "--prior", str(entry), "--metrics", str(metrics)]) == 0
    packed = tmp_path / "packed" / entry.name
    assert load_prior(packed)[1]["metrics"] == {"a number": 2.0}
    assert (
        json.loads((tmp_path / "packed" / "bundle.json").read_text())["priors"][entry.name]["feature"]
        == "backbone"
    )
    assert main([*args, "--overwrite", "--prior", str(prior_run)]) == 2  # a prior of no bundled encoder


def test_an_adapter_ships_as_a_small_entry_that_loads_over_the_bundled_base(
    extended_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """rcdm recipe add --adapter: the entry names its base as the folder beside it and its encoder by the
    bundled name, holds a few KB, loads (from any folder the bundle is copied to) into the base's network with
    the adapter in front; an adapter of another base or encoder is refused in one line."""
    entry = extended_bundle / "rcdm-cifar10-supervised-r8w1-via-cifar10-vicreg-backbone"
    index = json.loads((extended_bundle / "bundle.json").read_text())
    assert index["adapters"][entry.name] == {
        "base": "rcdm-cifar10-vicreg-backbone",
        "encoder": "cifar10-supervised-r8w1",
        "feature": "backbone",
        "bytes": sum(p.stat().st_size for p in entry.iterdir()),
    }
    config = json.loads((entry / "config.json").read_text())
    assert config["encoder"] == "rcdm-cifar:cifar10-supervised-r8w1"
    assert config["adapted_from"]["base_model"] == "../rcdm-cifar10-vicreg-backbone"
    assert (
        "/tmp" not in (entry / "config.json").read_text() and "/tmp" not in (entry / "README.md").read_text()
    )
    assert (entry / "adapter.safetensors").stat().st_size < 20_000
    assert json.loads((entry / "card.json").read_text())["metrics"] == {
        "class agreement (a test number)": 0.5
    }
    moved = tmp_path / "moved"
    shutil.copytree(extended_bundle, moved)
    model = load_model(moved / entry.name)
    base = load_model(moved / "rcdm-cifar10-vicreg-backbone")
    assert model.config.adapter == "linear" and model.config.representation_dim == 64
    for k, v in base.state_dict().items():
        if k.startswith(("unet.", "rep_proj.", "null_rep")):
            assert torch.equal(model.state_dict()[k], v.float()), k
    assert read_bundle(moved).adapter("rcdm-cifar10-vicreg-backbone", "cifar10-supervised-r8w1") == entry.name
    # Refusals: another base, another encoder, both kinds at once.
    src = tmp_path / "adapter"
    shutil.copytree(entry, src)
    bad = {**config, "adapted_from": {**config["adapted_from"], "base_weights": "0" * 64}}
    (src / "config.json").write_text(json.dumps(bad))
    with pytest.raises(RCDMError, match="none of the bundle's RCDMs"):
        add_to_bundle(moved, adapter=src, overwrite=True)
    (src / "config.json").write_text(json.dumps({**config, "encoder_identity": "rcdm-cifar@sha256:0"}))
    with pytest.raises(RCDMError, match="none of the bundle's encoders"):
        add_to_bundle(moved, adapter=src, overwrite=True)
    args = ["recipe", "add", "--bundle", str(moved), "--adapter", str(src), "--prior", str(src)]
    with pytest.raises(SystemExit):
        main(args)
    assert "not allowed with argument" in capsys.readouterr().err


def test_an_mlp_adapter_ships_and_loads_as_the_adapted_model_it_came_from(
    bundle: Path, few_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rcdm adapt`'s default adapter (ridge map + residual MLP) ships by `rcdm recipe add --adapter` like the
    linear one: the bundled entry records the kind and width, loads every tensor of the adapter file, and maps a
    representation through the ridge map plus the residual MLP."""
    from rcdm.adaptation import AdaptConfig, adapt

    monkeypatch.setenv("RCDM_MODELS", str(bundle))  # where the model's rcdm-cifar:NAME encoder is found
    run = tmp_path / "adapt"
    adapt(
        AdaptConfig(
            model=str(bundle / "rcdm-cifar10-vicreg-backbone"),
            encoder=f"rcdm-cifar:{bundle / 'cifar10-supervised-r8w1'}",
            data=str(few_images),
            steps=0,
            adapter="mlp",
            hidden=16,
            map_steps=50,
        ),
        run,
        progress=False,
    )
    # 8 images leave the residual nothing to fit (it stays zero): one set by hand, so the MLP path is tested
    weights = load_file(run / "adapter" / "adapter.safetensors")
    weights["rep_adapter.mlp.2.weight"] = torch.randn_like(weights["rep_adapter.mlp.2.weight"])
    save_file(weights, run / "adapter" / "adapter.safetensors")
    shipped = tmp_path / "bundle"
    shutil.copytree(bundle, shipped)
    assert main(["recipe", "add", "--bundle", str(shipped), "--adapter", str(run)]) == 0
    entry = shipped / "rcdm-cifar10-supervised-r8w1-via-cifar10-vicreg-backbone"
    model = load_model(entry)
    assert model.config.adapter == "mlp" and model.config.adapter_hidden == 16
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k].float(), v.float()), k
    z = torch.randn(3, model.config.representation_dim)
    a = model.rep_adapter
    with torch.no_grad():
        expected = (
            a.linear(z)
            + torch.nn.functional.silu(
                z @ weights["rep_adapter.mlp.0.weight"].T.float() + weights["rep_adapter.mlp.0.bias"].float()
            )
            @ weights["rep_adapter.mlp.2.weight"].T.float()
            + weights["rep_adapter.mlp.2.bias"].float()
        )
        assert not torch.allclose(a(z), a.linear(z))  # the residual counts
        assert torch.allclose(a(z), expected, atol=1e-5)
    assert (
        read_bundle(shipped).adapter("rcdm-cifar10-vicreg-backbone", "cifar10-supervised-r8w1") == entry.name
    )


def test_a_run_started_from_another_rcdm_says_so_without_a_machine_path(runs: Path, tmp_path: Path) -> None:
    """A run of `rcdm train --init-from` (the record it writes into its model's config): the packed config keeps
    where its initial weights came from, another run of the same folder by its name (the bundled model it becomes),
    and the card says it."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(runs, root)
    config_file = root / TARGET / "model" / "config.json"
    config = json.loads(config_file.read_text())
    start = str(root / "rcdm-cifar10-vicreg-backbone" / "model")
    config["initialised_from"] = {
        "model": start,
        "weights": "ab" * 32,
        "copied": 10,
        "fresh": ["rep_proj.weight"],
    }
    config_file.write_text(json.dumps(config))
    pack(root, tmp_path / "out", only=[TARGET], allow_smoke=True)
    packed = (tmp_path / "out" / TARGET / "config.json").read_text()
    # a run of the same runs folder: named as the bundled model it becomes, its digest said to be the run's fp32 one
    record = json.loads(packed)["initialised_from"]
    assert record["model"] == "rcdm-cifar10-vicreg-backbone" and "float32" in record["weights_of"]
    assert str(tmp_path) not in packed
    readme = (tmp_path / "out" / TARGET / "README.md").read_text()
    assert (
        "| initial weights | from `rcdm-cifar10-vicreg-backbone` (its UNet; from random weights: rep_proj.weight; "
        f"sha256 of its training run's final model (float32), before the bundle's fp16 rounding: {'ab' * 32})"
        in readme
    )


def test_a_start_outside_the_runs_folder_keeps_its_name_without_the_fp16_note(tmp_path: Path) -> None:
    from rcdm.pack.write import _packed_start

    named = {"model": "cifar10-vicreg-backbone", "weights": "cd" * 32, "fresh": []}
    assert _packed_start(named, tmp_path / "runs") == named  # a bundled name (or hub repo): as recorded
    elsewhere = _packed_start({**named, "model": str(tmp_path / "mine" / "model")}, tmp_path / "runs")
    assert "weights_of" not in elsewhere and not elsewhere["model"].startswith(str(tmp_path))


def test_packing_again_with_metrics_rewrites_cards_but_not_weights(
    runs: Path, few_images: Path, tmp_path: Path
) -> None:
    """scripts/cpu_pack.sh packs once before the evaluation (so the weights can land early) and again after it:
    the second pack must leave every weight file byte for byte as it was, or git would keep two copies."""
    out = tmp_path / "bundle"
    pack(runs, out, only=[TARGET], allow_smoke=True)
    weights = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.safetensors")}
    card = json.loads((out / TARGET / "card.json").read_text())
    pack(runs, out, only=[TARGET], allow_smoke=True, metrics={TARGET: {"x": 1.0}}, overwrite=True)
    assert weights and {p.relative_to(out): p.read_bytes() for p in out.rglob("*.safetensors")} == weights
    assert card["metrics"] == {} and json.loads((out / TARGET / "card.json").read_text())["metrics"] == {
        "x": 1.0
    }
