"""ResNeXt-50 32×4d (Xie et al. 2017, "Aggregated Residual Transformations") and ResNet-50 (He et al. 2016).

Both use the bottleneck block 1×1 → 3×3 → 1×1 (×4 expansion) with the stride on the 3×3 conv and projection
shortcuts when the shape changes. ResNeXt replaces the 3×3 conv by a group conv of ``groups`` (cardinality C)
paths of ``width_per_group`` channels each (Fig. 3c form): the bottleneck width is
``planes × width_per_group / 64 × groups``. ResNet-50 is the same block with C=1, d=64.
At 224×224, 1000 classes: ResNet-50 25.6M params / 4.1G mult-adds; ResNeXt-50 32×4d 25.0M / 4.2G (Xie et al. Table 1).

Small inputs (``input_size`` < 112): the 7×7/2 stem becomes 3×3/1 and the stem max-pool is dropped (total stride 8).
"""

from __future__ import annotations

from torch import nn

from slimkit.models._mobilenet import SMALL_INPUT_LIMIT
from slimkit.models._registry import register_model


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (grouped: cardinality) → 1×1 expand (×4), plus shortcut, ReLU (He et al. Fig. 5)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, groups: int, width_per_group: int) -> None:
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu3 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


class BottleneckResNet(nn.Module):
    """ResNet/ResNeXt with bottleneck blocks: ``layers`` per stage, ``groups`` (cardinality), ``width_per_group``,
    and ``width`` multiplier on the base planes (64, 128, 256, 512)."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000, in_channels: int = 3,
                 groups: int = 1, width_per_group: int = 64, width: float = 1.0, input_size: int = 224) -> None:
        super().__init__()
        small = input_size < SMALL_INPUT_LIMIT
        stem = max(8, round(64 * width))
        if small:
            self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        stages, channels = [], stem
        for i, blocks in enumerate(layers):
            planes = max(1, round(64 * 2**i * width))
            stage = []
            for b in range(blocks):
                stride = 2 if i > 0 and b == 0 else 1
                stage.append(Bottleneck(channels, planes, stride, groups, width_per_group))
                channels = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)  # zero-init the last BN of each block (Goyal et al. 2017)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnext50_32x4d", input_shape=(1, 28, 28), paper="Xie et al. 2017")
def resnext50_32x4d(num_classes: int = 10, in_channels: int = 1, groups: int = 32, width_per_group: int = 4,
                    width: float = 1.0, input_size: int = 28) -> BottleneckResNet:
    """ResNeXt-50 (32×4d); at ``num_classes=1000, in_channels=3, input_size=224``: 25.0M params, 4.2G mult-adds."""
    return BottleneckResNet((3, 4, 6, 3), num_classes, in_channels, groups, width_per_group, width, input_size)


@register_model("resnet50", input_shape=(1, 28, 28), paper="He et al. 2016")
def resnet50(num_classes: int = 10, in_channels: int = 1, width: float = 1.0, input_size: int = 28) -> BottleneckResNet:
    """ResNet-50; at ``num_classes=1000, in_channels=3, input_size=224``: 25.6M params, 4.1G mult-adds."""
    return BottleneckResNet((3, 4, 6, 3), num_classes, in_channels, 1, 64, width, input_size)
