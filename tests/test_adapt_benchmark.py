"""benchmarks/adapt.py's bookkeeping: a cell store two processes share, the table's row order, and the markdown
file whose hand-written sections survive a regenerated table."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str = "adapt"):
    """benchmarks/NAME.py as a module."""
    spec = importlib.util.spec_from_file_location(f"rcdm_{name}_bench", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCORE = dict(class_agreement=0.5, rank1=0.01, own_rank1=0.2, mean_rank=30.0, frechet=3.0)


def test_two_processes_share_one_store_without_losing_cells(tmp_path):
    bench = _bench()
    store = tmp_path / "cells.json"
    bench.save_cell(store, "a map", {**SCORE, "how": "ridge map"})
    bench.save_cell(store, "b map", {**SCORE, "how": "ridge map"})  # a process that read the store before "a"
    assert set(json.loads(store.read_text())) == {"a map", "b map"}


def test_rows_run_reference_then_map_then_budgets_and_name_their_machine(tmp_path):
    bench = _bench()
    cell = dict(SCORE, encoder="pixels:8", base=bench.BASE, r2=0.2, train_s=5.0, machine="AMD EPYC, AVX2")
    cells = {
        "15": {**cell, "how": "map + linear adapter (adapter+embedding), 15 min", "cpu_s_train": 900.0},
        "map": {**cell, "how": "ridge map"},
        "mlp map": {**cell, "how": "ridge + mlp map (regression)", "r2_mlp": 0.45},
        "5": {**cell, "how": "map + linear adapter (adapter+embedding, min-snr), 5 min"},
        "other base": {
            **cell,
            "encoder": bench.REFERENCE_FOR,
            "base": "cifar10-supervised",
            "how": "ridge map",
        },
        "ref": {**SCORE, "how": "its own RCDM", "train_s": None},
    }
    args = argparse.Namespace(eval_images=1000, guidance=5.0, shared=str(tmp_path))
    rows = [
        line for line in bench.render(cells, args).splitlines() if line.startswith("| ") and "---" not in line
    ]
    hows = [row.split(" | ")[2] for row in rows[1:]]
    assert hows == [
        "its own RCDM",
        "ridge map",  # the reference encoder through another base, after its own RCDM
        "ridge map",
        "ridge + mlp map (regression)",
        "map + linear adapter (adapter+embedding, min-snr), 5 min",
        "map + linear adapter (adapter+embedding), 15 min",
    ]
    assert "| 900 | AMD EPYC " in rows[-1] and rows[-1].endswith(", ? thr |")
    assert "| 0.200, mlp 0.450 |" in rows[4]  # both maps' held-out R²


def test_a_regenerated_table_keeps_the_hand_written_sections(tmp_path):
    bench = _bench()
    out = tmp_path / "adapt.md"
    out.write_text("# old table\n\n| x |\n\n## What we tried\n\nprose\n\n## More\n\nmore prose\n")
    bench.write_markdown(out, "# new table\n\n| y |\n")
    assert out.read_text() == "# new table\n\n| y |\n\n## What we tried\n\nprose\n\n## More\n\nmore prose\n"
    fresh = tmp_path / "fresh.md"
    bench.write_markdown(fresh, "# new table\n")
    assert fresh.read_text() == "# new table\n"


def test_a_run_that_kept_its_map_reuses_the_map_cells_score_only_for_identical_weights(tmp_path):
    import torch

    from rcdm.encoders.base import state_digest

    bench = _bench()
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(4, 3))
    b = torch.nn.Sequential(torch.nn.Linear(4, 3))
    b.load_state_dict(a.state_dict())
    assert state_digest(a.state_dict()) == state_digest(b.state_dict())
    with torch.no_grad():
        b[0].bias[1] += 1e-6  # one number off: another model, scored on its own
    assert state_digest(a.state_dict()) != state_digest(b.state_dict())
    c = torch.nn.Sequential(torch.nn.Linear(4, 3))
    c.load_state_dict(a.state_dict())
    c.register_buffer("extra", torch.zeros(1))  # the same numbers plus one more tensor: not the same model
    assert state_digest(a.state_dict()) != state_digest(c.state_dict())
    cell = dict(SCORE, encoder="pixels:8", base=bench.BASE, r2=0.2, train_s=60.0)
    cells = {
        "map": {**cell, "how": "ridge + mlp map (regression)"},
        "1": {**cell, "how": "map + mlp adapter (adapter+embedding; kept its map), 1 min", "score_of": "map"},
    }
    args = argparse.Namespace(eval_images=1000, guidance=5.0, shared=str(tmp_path))
    last = bench.render(cells, args).splitlines()[-1]
    assert (
        "kept its map), 1 min (the same weights as the row 'ridge + mlp map (regression)': its score) |"
        in last
    )
    sampling = argparse.Namespace(sampler="dpm++", steps=20, guidance=5.0)
    scored = dict(SCORE, num_images=3, sampler="dpm++", steps=20, guidance=5.0)
    assert bench.scored_as(scored, sampling, ["a", "b", "c"])
    assert not bench.scored_as({**scored, "guidance": 3.0}, sampling, ["a", "b", "c"])
    assert not bench.scored_as(scored, sampling, ["a", "b"])  # another evaluation set


def _self_adapted_tiny_run(cifar_root: Path, tmp_path: Path) -> Path:
    """A tiny pixels:2 RCDM (tests only) at TMP/base, adapted onto its own encoder into TMP/run (the map alone) on
    200 labelled CIFAR-10 training images copied to TMP/train, which it returns."""
    from rcdm import AdaptConfig, adapt
    from rcdm.encoders import create_encoder
    from rcdm.model import RCDM
    from rcdm.pack.cifar10 import labelled_files

    data = tmp_path / "train"
    for f in labelled_files(cifar_root / "train", 200)[0]:
        (data / f.parent.name).mkdir(parents=True, exist_ok=True)
        (data / f.parent.name / f.name).write_bytes(f.read_bytes())
    enc = create_encoder("pixels:2")
    model = RCDM.from_preset("tiny", sample_size=16, standardize_representation=True, **enc.describe())
    model.set_representation_stats(enc.encode_files(sorted(data.rglob("*.jpg"))))
    model.save_pretrained(tmp_path / "base")
    cfg = AdaptConfig(
        model=str(tmp_path / "base"),
        encoder="pixels:2",
        data=str(data),
        steps=0,
        adapter="linear",
        val_images=0,
    )
    adapt(cfg, tmp_path / "run", progress=False)
    return data


def test_the_class_probe_reads_a_map_onto_the_base_encoder_itself_as_the_base(
    cifar_root, tmp_path, monkeypatch, capsys
):
    """benchmarks/adapt_probe.py on a tiny RCDM (tests only) adapted to its own encoder: the map is the identity,
    so the base probe reads the mapped representations exactly as the true ones (the probe itself:
    tests/metrics/test_probe.py)."""
    bench = _bench("adapt_probe")
    _self_adapted_tiny_run(cifar_root, tmp_path)
    monkeypatch.setattr(
        "sys.argv",
        ["adapt_probe.py", "--run", str(tmp_path / "run"), "--cifar", str(cifar_root), "--images", "40"],
    )
    bench.main()
    out = json.loads(capsys.readouterr().out)
    assert out["test images"] == 40
    true = out["base probe on the base encoder's test representations"]
    assert out["base probe on the mapped new representations"] == pytest.approx(true, abs=0.026)
    assert 0.1 < true <= 1 and out["new encoder's own probe on its representations"] == pytest.approx(
        true, abs=0.026
    )


def test_the_residual_experiment_finds_no_residual_for_a_map_onto_the_base_encoder_itself(
    cifar_root, tmp_path
):
    """benchmarks/adapt_posterior.py on a tiny RCDM (tests only) adapted to its own encoder: the held-out residual
    (as rcdm adapt held it out) is nothing and R^2 is 1; a given noise factor adds one fixed draw per image to what
    the base is conditioned on, and none to the samples' encodings."""
    import torch

    from rcdm import load_model
    from rcdm.encoders import create_encoder

    bench = _bench("adapt_posterior")
    data = _self_adapted_tiny_run(cifar_root, tmp_path)
    enc = create_encoder("pixels:2")
    adapted, base = load_model(tmp_path / "run" / "model"), load_model(tmp_path / "base")
    factor, r2 = bench.residual_factor(tmp_path / "run", adapted, base)
    assert r2 > 0.999 and float(factor.abs().max()) < 0.05 * float(base.rep_std.min())

    paths = sorted(data.rglob("*.jpg"))[:60]
    plain = enc.encode_files(paths)
    noisy = bench.MappedWithResidual(adapted, base, 0.5 * torch.eye(plain.shape[1]), seed=0)
    got = noisy.encode_files(paths, 16)
    assert torch.equal(got, noisy.encode_files(paths, 16))  # one fixed draw per image
    spread = ((got - plain) / base.rep_std).std()
    assert 0.4 < float(spread) < 0.6
    images = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(
        bench.MappedWithResidual(adapted, base, torch.zeros_like(factor), 0).encode(images),
        noisy.encode(images),
    )
    torch.testing.assert_close(noisy.encode(images), enc.encode(images), atol=1e-3, rtol=1e-3)
    # --stretch S: the conditioning's deviation from the base mean times S; the samples' encodings as the map gives
    mapped = bench.MappedWithResidual(adapted, base, torch.zeros_like(factor), 0).encode_files(paths, 16)
    stretched = bench.MappedWithResidual(adapted, base, torch.zeros_like(factor), 0, stretch=2.0)
    torch.testing.assert_close(
        stretched.encode_files(paths, 16) - base.rep_mean, 2 * (mapped - base.rep_mean), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(stretched.encode(images), enc.encode(images), atol=1e-3, rtol=1e-3)


def _scored_without_sampling(bench, monkeypatch, tmp_path: Path) -> tuple[Path, list[str]]:
    """The benchmark with no encoder, image or sampling behind it (every score is SCORE on 2 images): its cells
    file under TMP and the start of its command line."""
    import types

    monkeypatch.setattr(bench, "encoder_for", lambda model: None)
    monkeypatch.setattr(bench, "create_encoder", lambda spec: None)
    monkeypatch.setattr(bench, "evaluation_images", lambda root, n: [f"i{k}" for k in range(n)])
    score = types.SimpleNamespace(record=lambda: {**SCORE, "num_images": 2, "sampler": "dpm++", "steps": 20})
    monkeypatch.setattr(bench, "score_model", lambda *a, **k: score)
    argv = ["adapt.py", "--cifar", str(tmp_path), "--shared", str(tmp_path), "--work", str(tmp_path / "w")]
    return tmp_path / "cells.json", argv


def test_base_and_reference_models_load_from_folders_under_their_pack_names(tmp_path, monkeypatch, capsys):
    """--base-model / --reference-model: a retrained pack's runs measured before they are packed; the cells keep
    the pack's names."""
    import types

    import torch

    bench = _bench()
    loaded, adapted = [], []

    def fake_adapt(cfg, folder, resume=False, progress=False):
        adapted.append(cfg.model)
        return types.SimpleNamespace(
            model_dir=f"adapted-from-{cfg.model}", r2_heldout=0.5, mlp_r2_heldout=0.6, wall_s=1.0, cpu_s=1.0
        )

    def fake_load(folder):
        loaded.append(str(folder))
        return torch.nn.Linear(2, 2)

    monkeypatch.setattr(bench, "adapt", fake_adapt)
    monkeypatch.setattr(bench, "load_model", fake_load)
    cells, argv = _scored_without_sampling(bench, monkeypatch, tmp_path)
    argv += ["--cells", str(cells), "--only", "pack supervised ResNet-20", "--budgets", "--bases-for", "none"]
    ref = tmp_path / "runs" / "supervised"  # a finished recipe run: its record holds its CPU time
    (ref / "model").mkdir(parents=True)
    (ref / "model" / "config.json").write_text("{}")
    (ref / "recipe.json").write_text(json.dumps({"steps": 6, "cpu_time_s": 7200.0}))
    argv += ["--base-model", "runs/backbone/model", "--reference-model", str(ref / "model")]
    argv += ["--eval-images", "2"]
    monkeypatch.setattr("sys.argv", argv)
    bench.main()
    assert adapted == ["runs/backbone/model"]  # the base from its folder
    assert loaded == [str(ref / "model"), "adapted-from-runs/backbone/model"]
    saved = json.loads(cells.read_text())
    assert saved["pack-supervised-ResNet-20@cifar10-vicreg-backbone mlp map"]["base"] == bench.BASE
    reference = "| pack supervised ResNet-20 | cifar10-supervised | its own RCDM |"
    assert reference in capsys.readouterr().out
    assert "| 2.0 CPU h (pack) |" in bench.render(
        saved, argparse.Namespace(eval_images=2, guidance=5.0, shared=".")
    )
    packed = tmp_path / "packed"  # an installed pack's model: its card's CPU time
    packed.mkdir()
    (packed / "config.json").write_text("{}")
    (packed / "card.json").write_text(json.dumps({"cpu_time_s": 3600.0}))
    assert bench.training_cost(str(packed)) == "1.0 CPU h (pack)"


def test_the_encoder_loss_reaches_the_adapter_and_names_its_cells(tmp_path, monkeypatch):
    """--encoder-loss W: the adapter runs train with it (the map's run records 0 whatever the default: it has no
    adapter steps, and its folder stays resumable), and its cells and run folder say so, apart from the plain
    adapter's."""
    import types

    import torch

    bench = _bench()
    runs = []

    def fake_adapt(cfg, folder, resume=False, progress=False):
        runs.append((cfg.steps, cfg.encoder_loss, Path(folder).name))
        return types.SimpleNamespace(
            model_dir=str(folder),
            r2_heldout=0.5,
            mlp_r2_heldout=0.6,
            wall_s=1.0,
            cpu_s=1.0,
            kept_step=3,
            steps=3,
            faithfulness=0.7,
            faithfulness_map=0.6,
        )

    monkeypatch.setattr(bench, "adapt", fake_adapt)
    monkeypatch.setattr(
        bench, "load_model", lambda folder: torch.nn.Linear(2, 2, bias=str(folder).endswith("map"))
    )
    cells, argv = _scored_without_sampling(bench, monkeypatch, tmp_path)
    argv += ["--cells", str(cells), "--only", "pixels:8", "--bases-for", "none", "--budgets", "10"]
    argv += ["--skip-map-cells", "--encoder-loss", "0.5", "--eval-images", "2"]
    monkeypatch.setattr("sys.argv", argv)
    bench.main()
    assert [(steps, w) for steps, w, _ in runs] == [(0, 0.0), (None, 0.5)]
    assert runs[1][2] == "pixels:8@cifar10-vicreg-backbone-mlp-adapter+embedding-encoder-loss-0.5"
    saved = json.loads(cells.read_text())
    assert list(saved) == ["pixels:8@cifar10-vicreg-backbone mlp adapter+embedding encoder-loss 0.5 10 min"]
    how = next(iter(saved.values()))["how"]
    assert how == "map + mlp adapter (adapter+embedding, encoder-loss 0.5; kept step 3 of 3), 10 min"
