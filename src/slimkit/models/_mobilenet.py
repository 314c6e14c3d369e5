"""MobileNetV1 (Howard et al. 2017, "MobileNets: Efficient CNNs for Mobile Vision Applications").

A 3×3 stem followed by 13 depthwise-separable blocks (depthwise 3×3-BN-ReLU, pointwise 1×1-BN-ReLU), global
average pooling and one fully-connected layer (Table 1). Width multiplier α scales every layer's channels (§3.3);
the resolution multiplier ρ is the input size itself. At α=1.0, 224×224 and 1000 classes: 4.2M parameters and
569M mult-adds (Table 8).

Small inputs (``input_size`` < 112, e.g. 28×28 MNIST): the stem and the first stride-2 block use stride 1, so the
total stride is 8 instead of 32 and a 28×28 image still ends on a 4×4 map rather than collapsing to 1×1.
"""

from __future__ import annotations

from torch import nn

from slimkit.models._registry import register_model

#: (output channels, stride) of the 13 depthwise-separable blocks, Howard et al. Table 1.
MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)

#: Below this input size the early strides are reduced (see the module docstring).
SMALL_INPUT_LIMIT = 112


def scale_channels(channels: int, width: float, minimum: int = 8) -> int:
    """``channels × width`` rounded, at least ``minimum`` (Howard et al. §3.3: α N channels)."""
    return max(minimum, round(channels * width))


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1,
                 relu: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Conv (bias-free, same padding) → BN → activation: the unit every layer of the mobile zoo is made of."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        relu(),
    )


class DepthwiseSeparable(nn.Module):
    """Depthwise k×k (one filter per input channel) → BN → ReLU → pointwise 1×1 → BN → ReLU (Howard et al. Fig. 3).

    Its cost is D_K²·M·D_F² + M·N·D_F² mult-adds instead of D_K²·M·N·D_F² (Eq. 5 vs Eq. 2).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel: int = 3) -> None:
        super().__init__()
        self.depthwise = conv_bn_relu(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.pointwise = conv_bn_relu(in_channels, out_channels, 1, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class MobileNetV1(nn.Module):
    """MobileNetV1 with width multiplier ``width`` (α), ``num_classes``, ``in_channels`` and ``input_size``."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0, input_size: int = 224,
                 dropout: float = 0.0) -> None:
        super().__init__()
        small = input_size < SMALL_INPUT_LIMIT
        channels = scale_channels(32, width)
        self.stem = conv_bn_relu(in_channels, channels, 3, 1 if small else 2)
        blocks = []
        for i, (out, stride) in enumerate(MOBILENET_V1_BLOCKS):
            if small and i == 1:
                stride = 1
            out = scale_channels(out, width)
            blocks.append(DepthwiseSeparable(channels, out, stride))
            channels = out
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        self.out_channels = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.features(self.stem(x))
        return self.fc(self.dropout(self.flatten(self.pool(x))))


@register_model("mobilenet_v1", input_shape=(1, 28, 28), paper="Howard et al. 2017")
def mobilenet_v1(num_classes: int = 10, in_channels: int = 1, width: float = 1.0, input_size: int = 28,
                 dropout: float = 0.0) -> MobileNetV1:
    """MobileNetV1; at ``num_classes=1000, in_channels=3, input_size=224``: 4.2M params, 569M mult-adds."""
    return MobileNetV1(num_classes, in_channels, width, input_size, dropout)
