"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks").

Inverted residual blocks: pointwise expansion ×t → ReLU6 → depthwise 3×3 → ReLU6 → linear pointwise projection,
with a residual connection when the stride is 1 and the channel count is unchanged (Fig. 3b, Table 1-2).
Channels are ``width`` × the paper's, rounded to a multiple of 8 as in the reference implementation; the last
1280-channel layer is only scaled when ``width`` > 1 (§6.1). At 1.0, 224×224, 1000 classes: 3.5M parameters
(the paper's Table 3 rounds to 3.4M) and 300M mult-adds.

Small inputs (``input_size`` < 112): the stem and the first stride-2 stage use stride 1 (total stride 8), so a
28×28 image ends on a 4×4 map.
"""

from __future__ import annotations

from torch import nn

from slimkit.models._mobilenet import SMALL_INPUT_LIMIT, conv_bn_relu
from slimkit.models._registry import register_model

#: (expansion t, output channels c, repeats n, first stride s), Sandler et al. Table 2.
MOBILENET_V2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` without going below 90% of ``value`` (reference code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """Expand (1×1, ×t) → depthwise 3×3 → linear project (1×1), + input when shapes match (Sandler et al. Table 1)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu(in_channels, hidden, 1, 1, relu=nn.ReLU6))
        layers += [
            conv_bn_relu(hidden, hidden, 3, stride, groups=hidden, relu=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),  # linear bottleneck: no activation after the projection (§3.2)
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        # use_residual is fixed at construction, so torch.fx traces one static graph.
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with width multiplier ``width``, ``num_classes``, ``in_channels`` and ``input_size``."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0, input_size: int = 224,
                 dropout: float = 0.2) -> None:
        super().__init__()
        small = input_size < SMALL_INPUT_LIMIT
        channels = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        self.stem = conv_bn_relu(in_channels, channels, 3, 1 if small else 2, relu=nn.ReLU6)
        blocks = []
        for i, (t, c, n, s) in enumerate(MOBILENET_V2_SETTINGS):
            out = make_divisible(c * width)
            for j in range(n):
                stride = s if j == 0 and not (small and i == 1) else 1
                blocks.append(InvertedResidual(channels, out, stride, t))
                channels = out
        self.features = nn.Sequential(*blocks)
        self.head = conv_bn_relu(channels, last, 1, 1, relu=nn.ReLU6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        x = self.head(self.features(self.stem(x)))
        return self.fc(self.dropout(self.flatten(self.pool(x))))


@register_model("mobilenet_v2", input_shape=(1, 28, 28), paper="Sandler et al. 2018")
def mobilenet_v2(num_classes: int = 10, in_channels: int = 1, width: float = 1.0, input_size: int = 28,
                 dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2; at ``num_classes=1000, in_channels=3, input_size=224``: 3.5M params, 300M mult-adds."""
    return MobileNetV2(num_classes, in_channels, width, input_size, dropout)
