"""rcdm.pack.cards: the model cards of the bundled encoders and RCDMs."""

from __future__ import annotations

from rcdm.figures import SMOKE_BANNER
from rcdm.pack.cards import encoder_card, rcdm_card

RCDM_CARD = {
    "name": "rcdm-cifar10-vicreg-backbone",
    "smoke": False,
    "preset": "cifar32-small",
    "feature": "backbone",
    "encoder": "cifar10-vicreg-r20w1",
    "steps": 7000,
    "planned_steps": 8000,
    "batch_size": 64,
    "images_seen": 448000,
    "wall_time_s": 17503.2,
    "device": "cpu",
    "cpu_time_s": 13301.0,
    "cpu_time_from_step": 4000,
    "stopped_early": True,
    "dtype": "float16",
    "fp16_relative_error": 1.5e-4,
    "data_license": "MIT",
    "git_commit": None,
    "metrics": {"class agreement": 0.637000012, "curve": "128000: 0.018 / 0.447"},
}


def test_an_rcdm_card_names_its_training_and_rounds_its_metrics() -> None:
    text = rcdm_card(RCDM_CARD)
    assert text.startswith("# rcdm-cifar10-vicreg-backbone\n") and SMOKE_BANNER not in text
    assert "| steps / batch / images seen | 7000 (of 8000 planned) / 64 / 448000 |" in text
    assert "| CPU time | 13301 s (process + data workers, all threads; steps after 4000 only) |" in text
    assert "| rcdm commit | not recorded |" in text
    assert "## Metrics" in text and "| class agreement | 0.637 |" in text and "128000: 0.018 / 0.447" in text
    bare = rcdm_card({**RCDM_CARD, "metrics": None, "smoke": True, "cpu_time_s": None})
    assert SMOKE_BANNER in bare and "No metrics were given" in bare and "CPU time" not in bare


def test_an_encoder_card_names_its_data_knn_and_input() -> None:
    card = {
        "name": "cifar10-vicreg-r20w1",
        "arch": {"depth": 20, "width": 1},
        "objective": "vicreg",
        "data": {"name": "CIFAR-10", "train_images": 50000, "test_images": 10000, "license": "MIT"},
        "epochs": 60,
        "steps": 5820,
        "images_seen": 2979840,
        "wall_time_s": 12000.0,
        "device": "cpu",
        "cpu_time_s": 11000.0,
        "cpu_time_from_epoch": 30,
        "recipe": {"knn_k": 20},
        "knn_accuracy": {"backbone": 0.6981, "projector": 0.68},
        "preprocessing": {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]},
        "git_commit": "abc123",
    }
    text = encoder_card(card)
    assert "A 20-layer CIFAR ResNet (width x1) trained with the `vicreg` objective" in text
    assert "| k-NN accuracy (backbone, k=20, test split) | 0.6981 |" in text
    assert "epochs 31-60 only: earlier ones predate CPU-time records" in text
    assert "| weights dtype | float32 |" in text and "| rcdm commit | abc123 |" in text
