"""ResNet-18 (He et al. 2016, "Deep Residual Learning for Image Recognition", Table 1).

Basic blocks (two 3×3 convs) in four stages of 64, 128, 256 and 512 channels, the stride on the first conv of
stages 2-4 and a 1×1 projection shortcut (option B) when the shape changes. At 224×224 and 1000 classes:
ResNet-18 has 11.7M params and 1.8G mult-adds (Table 1); ``ResNet((3, 4, 6, 3))`` is ResNet-34.

Small inputs (``input_size`` < 112): the 7×7/2 stem becomes 3×3/1 and the stem max-pool is dropped (total stride 8),
as for the other zoo models.
"""

from __future__ import annotations

from torch import nn

from slimkit.models._mobilenet import SMALL_INPUT_LIMIT
from slimkit.models._registry import register_model


class ResidualBlock(nn.Module):
    """3×3 → 3×3 with BN and ReLU, plus an identity or 1×1 projection shortcut (He et al. Fig. 2, option B)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with basic blocks: ``layers`` blocks per stage, ``width`` multiplier on (64, 128, 256, 512)."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000, in_channels: int = 3,
                 width: float = 1.0, input_size: int = 224) -> None:
        super().__init__()
        small = input_size < SMALL_INPUT_LIMIT
        stem = max(8, round(64 * width))
        self.conv1 = (nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False) if small
                      else nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False))
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        stages, channels = [], stem
        for i, blocks in enumerate(layers):
            out = max(8, round(64 * 2**i * width))
            stage = []
            for b in range(blocks):
                stage.append(ResidualBlock(channels, out, 2 if i > 0 and b == 0 else 1))
                channels = out
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():
            if isinstance(module, ResidualBlock):
                nn.init.zeros_(module.bn2.weight)  # zero-init the last BN of each block (Goyal et al. 2017)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet18", input_shape=(1, 28, 28), paper="He et al. 2016")
def resnet18(num_classes: int = 10, in_channels: int = 1, width: float = 1.0, input_size: int = 28) -> ResNet:
    """ResNet-18; at ``num_classes=1000, in_channels=3, input_size=224``: 11.7M params, 1.8G mult-adds."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels, width, input_size)
