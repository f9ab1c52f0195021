"""k-NN accuracy of an encoder's features: the label-free check of what a representation separates.

Weighted cosine k-NN (Wu et al. 2018, k = 20, T = 0.07), the standard evaluation of SSL encoders without training
a classifier; the recipes record it in every encoder card.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..devices import autocast_for
from ..encoders import Encoder
from ..errors import RCDMError


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted cosine k-NN (Wu et al. 2018): (N, D), (N,) int, (M, D) -> (M,) predicted labels.

    Each of the k most cosine-similar train features votes for its label with weight exp(similarity / T);
    ties go to the lower class index.
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise RCDMError(
            f"{train_features.shape[0]} train features but {train_labels.shape[0]} labels: pass one label each"
        )
    c = int(num_classes or int(train_labels.max()) + 1)
    k = min(k, train_features.shape[0])
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long().to(bank.device)
    out = []
    for s in range(0, test_features.shape[0], chunk):
        q = F.normalize(test_features[s : s + chunk].float().to(bank.device), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], c, device=bank.device)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
        out.append(votes.argmax(1))
    return torch.cat(out).cpu()


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Fraction in [0, 1] of test features whose weighted k-NN label (see `knn_predict`) is right."""
    c = int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    pred = knn_predict(train_features, train_labels, test_features, k, temperature, c)
    return float((pred == test_labels.long().cpu()).float().mean())


@torch.no_grad()
def encoder_features(
    encoder: Encoder, images: torch.Tensor, batch_size: int = 1024
) -> dict[str, torch.Tensor]:
    """uint8 (N, 3, H, W) -> {"backbone": (N, d), "projector": (N, p) when the encoder has one}, float32 CPU."""
    device = encoder.device
    feats: dict[str, list[torch.Tensor]] = {"backbone": [], "projector": []}
    for s in range(0, images.shape[0], batch_size):
        x = images[s : s + batch_size].to(device).float() / 255
        with autocast_for(device):
            h = encoder.backbone_features(x)
            feats["backbone"].append(h.float().cpu())
            if encoder.projector is not None:
                feats["projector"].append(encoder.projector(h).float().cpu())
    return {k: torch.cat(v) for k, v in feats.items() if v}
