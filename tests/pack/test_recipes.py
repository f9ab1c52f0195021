"""The demo-pack recipes at tiny scale on CPU: SSL loss, k-NN, encoder round trip, RCDM runs, pack refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from rcdm.cli import main
from rcdm.encoders import create_encoder
from rcdm.encoders.cifar import CifarEncoderArch, CifarEncoderNet, default_preprocessing
from rcdm.errors import RCDMError
from rcdm.metrics.knn import encoder_features, knn_accuracy, knn_predict
from rcdm.pack.cifar10 import labelled_files, load_uint8
from rcdm.pack.rcdms import RCDMRecipe, train_rcdms
from rcdm.pack.ssl import SSLConfig, train_encoder, vicreg_loss
from rcdm.pack.write import pack

TARGET = "rcdm-cifar10-vicreg-projector"
TINY = dict(
    epochs=1, batch_size=10, limit=20, depth=8, width=1, projector=(32, 32), num_workers=0, warmup_epochs=0
)


@pytest.fixture(scope="module")
def runs(cifar_root: Path, few_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT with a tiny VICReg encoder (ssl/), a tiny supervised one (supervised/) and one tiny RCDM run."""
    root = tmp_path_factory.mktemp("recipe-runs")
    train_encoder(SSLConfig(data=str(cifar_root), **TINY), root / "ssl", progress=False)
    train_encoder(
        SSLConfig(data=str(cifar_root), objective="supervised", **TINY), root / "supervised", progress=False
    )
    recipe = RCDMRecipe(
        data=str(few_images), preset="tiny", steps=2, batch_size=4, save_every=2, num_workers=0
    )
    train_rcdms(recipe, root, only=[TARGET], progress=False)
    return root


def test_vicreg_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    net = CifarEncoderNet(CifarEncoderArch(depth=8, width=1, projector=(32, 32)))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(12, 3, 32, 32)
    a, b = x + 0.05 * torch.randn_like(x), x.flip(-1)
    losses = []
    for _ in range(6):
        z1, z2 = net.projector(net(a)), net.projector(net(b))
        loss = vicreg_loss(z1, z2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses
    # Invariance term only: identical, whitened embeddings with unit std cost nothing.
    z = torch.linalg.qr(torch.randn(64, 8))[0] * 8  # orthogonal columns: zero covariance off the diagonal
    z = z - z.mean(0)
    z = z / z.std(0)
    assert float(vicreg_loss(z, z)) < 0.05


def test_knn_is_exact_on_a_constructed_example() -> None:
    e = torch.eye(3)
    bank = torch.cat([e[0] + 0.01 * torch.arange(5).view(-1, 1), e[1] + 0.01 * torch.arange(5).view(-1, 1)])
    labels = torch.tensor([0] * 5 + [1] * 5)
    queries = torch.stack([e[0], e[0] * 2, e[0] + 0.1 * e[2], e[1], e[1] * 3, e[1] + 0.1 * e[2], e[0], e[0]])
    truth = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])  # the last two are mislabelled on purpose
    assert knn_accuracy(bank, labels, queries, truth, k=5) == 0.75
    # Weighted vote (Wu et al. 2018): one very close neighbour outweighs two farther ones.
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, 0.6]])
    pred = knn_predict(bank, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]]), k=3, temperature=0.07)
    assert pred.tolist() == [0]
    pred = knn_predict(bank, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]]), k=3, temperature=100.0)
    assert pred.tolist() == [1]  # near-uniform weights: the majority wins


def test_saved_encoder_round_trips_through_the_registry(runs: Path, cifar_root: Path) -> None:
    folder = runs / "ssl" / "encoder"
    card = json.loads((folder / "card.json").read_text())
    assert card["smoke"] is True and card["epochs"] == 1 and card["steps"] == 2 and card["images_seen"] == 20
    assert card["cpu_time_s"] > 0 and card["cpu_time_from_epoch"] == 0  # CPU time beside the wall time
    assert "| CPU time |" in (folder / "README.md").read_text()
    assert set(card["knn_accuracy"]) == {"backbone", "projector"}
    assert card["identity"].startswith("rcdm-cifar@sha256:") and "license" in card["data"]
    net = CifarEncoderNet(CifarEncoderArch.from_dict(card["arch"])).eval()
    net.load_state_dict(load_file(str(folder / "encoder.safetensors")), strict=True)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        h = net(default_preprocessing()(x))
        z = net.projector(h)
    backbone = create_encoder(f"rcdm-cifar:{folder}", feature="backbone")
    projector = create_encoder(f"rcdm-cifar:{folder}", feature="projector")
    assert backbone.dim == 64 and projector.dim == 32
    assert torch.equal(backbone(x), h) and torch.equal(projector(x), z)
    assert backbone.identity == projector.identity == card["identity"]
    # The card's k-NN numbers are those of the saved weights.
    files, labels, _ = labelled_files(cifar_root / "train", 20)
    tfiles, tlabels, _ = labelled_files(cifar_root / "test", 20)
    f, tf = encoder_features(backbone, load_uint8(files)), encoder_features(backbone, load_uint8(tfiles))
    for name in ("backbone", "projector"):
        acc = knn_accuracy(f[name], torch.tensor(labels), tf[name], torch.tensor(tlabels))
        assert acc == pytest.approx(card["knn_accuracy"][name], abs=1e-6)


def test_supervised_encoder_keeps_its_classifier(runs: Path) -> None:
    enc = create_encoder(f"rcdm-cifar:{runs / 'supervised' / 'encoder'}")
    assert enc.logits(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(RCDMError, match="no projector"):
        create_encoder(f"rcdm-cifar:{runs / 'supervised' / 'encoder'}", feature="projector")
    with pytest.raises(RCDMError, match="neither a folder"):
        create_encoder("rcdm-cifar:no-such-encoder")


def test_ssl_run_refuses_to_overwrite(runs: Path, cifar_root: Path) -> None:
    with pytest.raises(RCDMError, match="--resume"):
        train_encoder(SSLConfig(data=str(cifar_root), **TINY), runs / "ssl", progress=False)


def test_rcdm_recipe_records_its_run(runs: Path) -> None:
    rec = json.loads((runs / TARGET / "recipe.json").read_text())
    assert rec["steps"] == 2 and rec["images_seen"] == 8 and rec["smoke"] is True
    assert rec["cpu_time_s"] > 0 and rec["cpu_time_from_step"] == 0
    assert rec["target"]["feature"] == "projector" and rec["device"].startswith("cpu")


def test_cpu_profile_trains_a_standardized_model_and_keeps_its_checkpoints(
    runs: Path, few_images: Path, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(runs / "supervised", root / "supervised")
    argv = ["recipe", "rcdm", "--profile", "cpu", "--runs", str(root), "--data", str(few_images)]
    argv += ["--only", "rcdm-cifar10-supervised", "--preset", "tiny", "--steps", "4", "--batch-size", "4"]
    assert main([*argv, "--save-every", "1", "--no-progress"]) == 0
    run = root / "rcdm-cifar10-supervised"
    rec = json.loads((run / "recipe.json").read_text())["recipe"]
    assert rec["standardize"] is True and rec["lr"] == 5e-4 and rec["batch_size"] == 4  # profile, then flags
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["standardize_representation"] is True
    assert rec["cond_drop"] == 0.1 and config["null_representation"] is True  # its samples can be guided
    assert len(list((run / "checkpoints").glob("step-*"))) == 4  # the CPU profile keeps the curve
    # Resumed after a session whose CPU time is unknown (here: recorded before CPU time was): the record says
    # which steps its CPU time covers.
    record = json.loads((run / "recipe.json").read_text())
    old = {k: v for k, v in record.items() if not k.startswith("cpu_")}
    (run / "recipe.json").write_text(json.dumps(old))
    longer = [("5" if i == argv.index("--steps") + 1 else x) for i, x in enumerate(argv)]
    assert main([*longer, "--save-every", "1", "--no-progress", "--resume"]) == 0
    rec = json.loads((run / "recipe.json").read_text())
    assert rec["steps"] == 5 and rec["cpu_time_from_step"] == 4 and rec["cpu_time_s"] > 0


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


def test_a_time_budget_that_is_not_positive_is_refused(runs: Path, cifar_root: Path, capsys) -> None:
    argv = ["recipe", "rcdm", "--runs", str(runs), "--data", str(cifar_root), "--time-budget-s", "-5"]
    assert main([*argv, "--only", TARGET]) == 2
    assert "--time-budget-s -5.0 must be a positive number of seconds" in capsys.readouterr().err


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
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118
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
    with pytest.raises(RCDMError, match=r"run\.json' is missing"):
        pack(root, out, only=[TARGET], allow_smoke=True, overwrite=True)


def test_ssl_run_resumes_exactly_after_an_interruption(cifar_root: Path, tmp_path: Path) -> None:
    cfg = SSLConfig(data=str(cifar_root), **{**TINY, "epochs": 2, "limit": 20})

    def stop_at_3(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_encoder(cfg, tmp_path / "cut", progress=False, on_step=stop_at_3)
    assert not (tmp_path / "cut" / "encoder").exists()
    resumed = train_encoder(cfg, tmp_path / "cut", resume=True, progress=False)
    whole = train_encoder(cfg, tmp_path / "whole", progress=False)
    assert resumed.steps == whole.steps == 4 and resumed.losses == whole.losses
    a = load_file(str(resumed.encoder_dir / "encoder.safetensors"))
    b = load_file(str(whole.encoder_dir / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_recipe_cli_trains_an_encoder_and_reports_bad_data(cifar_root: Path, tmp_path: Path) -> None:
    tiny = ["--epochs", "1", "--batch-size", "10", "--limit", "20", "--depth", "8", "--width", "1"]
    args = ["recipe", "ssl", "--data", str(cifar_root), "--out", str(tmp_path / "r"), *tiny]
    assert main([*args, "--projector", "16", "16", "--num-workers", "0", "--no-progress"]) == 0
    card = json.loads((tmp_path / "r" / "encoder" / "card.json").read_text())
    assert card["arch"]["projector"] == [16, 16] and card["smoke"] is True
    assert main(["recipe", "ssl", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert main(["recipe", "rcdm", "--runs", str(tmp_path), "--data", str(cifar_root)]) == 2  # no encoders
    (tmp_path / "file").write_text("x")
    assert main(["recipe", "ssl", "--data", str(cifar_root), "--out", str(tmp_path / "file"), *tiny]) == 2


def test_ssl_resume_names_a_damaged_checkpoint_and_a_second_run_is_refused(
    runs: Path, cifar_root: Path, tmp_path: Path
) -> None:
    import shutil

    from rcdm.locks import run_lock

    run = tmp_path / "ssl"
    shutil.copytree(runs / "ssl", run)
    shutil.rmtree(run / "encoder")
    cfg = SSLConfig(data=str(cifar_root), **TINY)
    with (
        run_lock(run, "rcdm recipe ssl"),
        pytest.raises(RCDMError, match=r"is in use by rcdm recipe ssl \(pid"),
    ):
        train_encoder(cfg, run, resume=True, progress=False)
    net = run / "checkpoints" / "epoch-0001" / "net.safetensors"
    net.write_bytes(net.read_bytes()[:1000])
    with pytest.raises(
        RCDMError, match=r"epoch-0001 .* is damaged \(net\.safetensors: .*no older checkpoint"
    ):
        train_encoder(cfg, run, resume=True, progress=False)


def test_ssl_cpu_time_of_a_run_resumed_from_an_older_checkpoint_says_what_it_covers(
    runs: Path, cifar_root: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "ssl"
    shutil.copytree(runs / "ssl", run)
    shutil.rmtree(run / "encoder")
    state = run / "checkpoints" / "epoch-0001" / "state.json"
    old = {k: v for k, v in json.loads(state.read_text()).items() if not k.startswith("cpu_")}
    state.write_text(json.dumps(old))  # as written before CPU time was recorded
    result = train_encoder(
        SSLConfig(data=str(cifar_root), **{**TINY, "epochs": 2}), run, resume=True, progress=False
    )
    card = json.loads((result.encoder_dir / "card.json").read_text())
    assert result.cpu_time_from_epoch == card["cpu_time_from_epoch"] == 1 and card["cpu_time_s"] > 0
    assert card["wall_time_s"] > old["wall_time_s"]
    assert "epochs 2-2 only" in (result.encoder_dir / "README.md").read_text()
