"""benchmarks/class_ceiling.py: the probes' ceilings follow what a representation holds of the class."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "rcdm_class_ceiling", ROOT / "benchmarks" / "class_ceiling.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data(signal: float, n: int = 3000, dim: int = 16, classes: int = 10):
    """Representations whose first dimensions hold the class with strength `signal` (0: none), plus noise."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, dim, generator=g)
    x[:, :classes] += signal * torch.nn.functional.one_hot(y, classes).float()
    return x[:2000], y[:2000], x[2000:], y[2000:]


def test_a_representation_that_holds_the_class_has_a_high_ceiling_and_one_that_holds_none_sits_at_chance():
    bench = _bench()
    held = bench.ceilings(*_data(signal=6.0))
    none = bench.ceilings(*_data(signal=0.0))
    for probe in ("linear", "mlp"):
        assert held[probe]["mode"] > 0.95 and held[probe]["posterior"] > 0.9
        # no class in it: about chance (0.1), and a calibrated posterior says so rather than guessing confidently
        assert none[probe]["mode"] < 0.2 and abs(none[probe]["posterior"] - 0.1) < 0.03


def test_a_partial_signal_gives_a_posterior_ceiling_below_the_mode_ceiling():
    """Drawing the class with the posterior's odds agrees less often than always drawing the likeliest class."""
    bench = _bench()
    r = bench.ceilings(*_data(signal=1.5))["linear"]
    assert 0.2 < r["posterior"] < r["mode"] < 0.95


def test_encoders_may_name_their_feature_and_default_to_the_packs_three():
    bench = _bench()
    assert bench.encoder_list(None) == list(bench.PACK_ENCODERS)
    assert bench.encoder_list(["pixels:8", "rcdm-cifar:x:projector", "timm:resnet18:backbone"]) == [
        ("pixels:8", "backbone", ""),
        ("rcdm-cifar:x", "projector", ""),
        ("timm:resnet18", "backbone", ""),
    ]
