"""The course's two networks. Both end in log-softmax, so one NLL loss trains either."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class DigitCNN(nn.Module):
    """32c5-pool-64c5-pool-fc1024-dropout-fc10: the classic small MNIST CNN (two 5x5 convolution +
    max-pool stages, a 1,024-unit hidden layer with dropout, ten outputs)."""

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        self.config = {"dropout": dropout}  # saved in checkpoints to rebuild the model
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=5, padding=2),  # 32 x 28 x 28
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 32 x 14 x 14
            nn.Conv2d(32, 64, kernel_size=5, padding=2),  # 64 x 14 x 14
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 64 x 7 x 7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # 3136
            nn.Linear(64 * 7 * 7, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(1024, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.classifier(self.features(x)), dim=1)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with a skip connection (He et al., 2016).

    Where the block changes the shape (stride 2 or more channels), the skip path is a 1x1
    conv + BatchNorm projection so the two paths can be added.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class DigitResNet(nn.Module):
    """A small residual network for 28x28 digits: three stages of two basic blocks (ResNet-18 has four).

    Stem 32 (3x3 conv, BN, ReLU, max-pool) → stages of two blocks at 32, 64 and 128 channels
    (stride 2 into the last two) → global average pooling → dropout → linear 128→10.
    ``block`` builds each block from (in_channels, out_channels, stride): pass your own class to
    experiment (notebook 04's exercises); checkpoints record only the default block's models.
    """

    def __init__(
        self,
        widths: tuple[int, int, int] = (32, 64, 128),
        dropout: float = 0.5,
        block: Callable[..., nn.Module] = BasicBlock,
    ):
        super().__init__()
        self.config = {"widths": list(widths), "dropout": dropout}  # saved in checkpoints
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, padding=1, bias=False),  # 32 x 28 x 28
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 32 x 14 x 14
        )
        stages, in_channels = [], widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2  # 14 → 7 → 4
            stages.append(nn.Sequential(block(in_channels, width, stride), block(width, width)))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(widths[-1], 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(self.stages(self.stem(x))), dim=1)


#: Architecture names used by checkpoints and the CLI.
ARCHITECTURES: dict[str, type[nn.Module]] = {"cnn": DigitCNN, "resnet": DigitResNet}


def build_model(arch: str, **kwargs) -> nn.Module:
    """A fresh model by name: ``"cnn"`` or ``"resnet"``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)


def architecture_of(model: nn.Module) -> str:
    """The name under which ``model``'s class is registered in :data:`ARCHITECTURES`."""
    for name, cls in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not one of digitlib's architectures")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

