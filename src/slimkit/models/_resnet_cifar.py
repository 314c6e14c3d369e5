"""CIFAR-style ResNets (He et al. 2016, §4.2): 6n+2 layers in three stages of 16, 32, 64 channels."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from slimkit.analysis import register_counter
from slimkit.models._registry import register_model


class ChannelPadShortcut(nn.Module):
    """He et al.'s option A shortcut: subsample spatially by ``stride`` and zero-pad the new channels (no params)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        extra = out_channels - in_channels
        # F.pad's argument as one attribute: structured pruning removes some of the zero channels and updates it
        self.pad = (0, 0, 0, 0, extra // 2, extra - extra // 2)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x[:, :, :: self.stride, :: self.stride], self.pad)

    def extra_repr(self) -> str:
        return f"zero channels before/after={self.pad[4]}/{self.pad[5]}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.shortcut = ChannelPadShortcut(in_channels, out_channels, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
                )

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images. ``shortcut="A"`` (zero-padding, the paper's CIFAR choice) or ``"B"``
    (1×1 projection). ``width`` scales every stage's channel count (16, 32, 64)."""

    def __init__(
        self, depth: int, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A", width: float = 1.0
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in {"A", "B"}:
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        blocks = (depth - 2) // 6
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages, channels = [], widths[0]
        for i, out_channels in enumerate(widths):
            layers = []
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                layers.append(BasicBlock(channels, out_channels, stride, shortcut))
                channels = out_channels
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet20", input_shape=(1, 28, 28), paper="He et al. 2016")
def resnet20(num_classes: int = 10, in_channels: int = 1, shortcut: Literal["A", "B"] = "A",
             width: float = 1.0) -> CifarResNet:
    """ResNet-20 (0.27M params with option-A shortcuts). Defaults to 1 input channel for MNIST; 3 for CIFAR."""
    return CifarResNet(20, num_classes, in_channels, shortcut, width)


@register_model("resnet56", input_shape=(1, 28, 28), paper="He et al. 2016")
def resnet56(num_classes: int = 10, in_channels: int = 1, shortcut: Literal["A", "B"] = "A",
             width: float = 1.0) -> CifarResNet:
    """ResNet-56 (0.85M params with option-A shortcuts)."""
    return CifarResNet(56, num_classes, in_channels, shortcut, width)


def _count_pad_shortcut(module: ChannelPadShortcut, inputs: tuple, output: object) -> tuple[int, int]:
    return 0, 0  # strided slicing and zero padding: data movement, no arithmetic


register_counter(ChannelPadShortcut)(_count_pad_shortcut)
