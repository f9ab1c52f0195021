"""CIFAR ResNet-20/56 (He et al. 2016, CIFAR variant, option-A shortcuts) as in ../shared/data/README.md.

Written by hand because no maintained library ships this exact layout (parameter-free zero-padded shortcut)
with these key names; the weights load strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RCDMError


class _ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad planes//4 channels on each side."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """forward(x): x (B, 3, 32, 32) ImageNet-normalised -> (B, 64) pooled feature. `linear` gives logits."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


DEPTHS = {"resnet20": 3, "resnet56": 9}


def load_cifar_resnet(depth: str, path: str | Path) -> CifarResNet:
    """Build a CIFAR ResNet and load `path` ({'state_dict': {'module.*': ...}}) strictly."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RCDMError(
            f"CIFAR ResNet weights not found: {str(path)!r}; pass cifar-{depth}:PATH to a .th file"
        )
    net = CifarResNet(DEPTHS[depth])
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RCDMError(f"cannot read CIFAR ResNet weights {str(path)!r}: {e}") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise RCDMError(f"{str(path)!r} holds no state dict: expected {{'state_dict': {{...}}}}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RCDMError(
            f"{str(path)!r} is not a CIFAR {depth}: missing keys {result.missing_keys[:5]}, "
            f"unexpected keys {result.unexpected_keys[:5]}"
        )
    return net
