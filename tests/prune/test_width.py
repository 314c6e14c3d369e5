"""scale_width: every coupled channel group shrinks by the multiplier."""

from __future__ import annotations

import pytest
import torch

from slimkit import ConfigError, models
from slimkit.prune import WidthConfig, scale_width


def test_resnet20_half_width():
    model = models.create("resnet20")
    slim = scale_width(model, torch.zeros(1, 1, 28, 28), WidthConfig(0.5))
    widths = [slim.get_submodule(f"layer{s}.0.conv1").out_channels for s in (1, 2, 3)]
    assert widths == [8, 16, 32]
    assert slim.conv1.out_channels == 8 and slim.fc.out_features == 10
    assert slim(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("bad", [{"multiplier": 1.5}, {"multiplier": 0}, {"round_to": 0}])
def test_width_config_validated_on_construction(bad):
    with pytest.raises(ConfigError, match="use"):
        WidthConfig(**bad)
