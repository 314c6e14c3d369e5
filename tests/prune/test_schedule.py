"""Schedules: one-shot + fine-tune, iterative, and layer-by-layer with least-squares reconstruction."""

from __future__ import annotations

import pytest
import torch

from slimkit import ConfigError
from slimkit.analysis import evaluate
from slimkit.prune import (
    SCHEDULES,
    PruneConfig,
    prune_channels,
    prune_iterative,
    prune_layerwise,
    prune_oneshot,
    reconstruct_,
)
from tests.prune._nets import digit_net

X = torch.zeros(1, 1, 8, 8)


def test_schedules_are_registered():
    assert SCHEDULES.names() == ["iterative", "layerwise", "oneshot"]


def test_iterative_reaches_the_one_shot_width_and_recovers_accuracy():
    model, data = digit_net()
    config = PruneConfig(ratio=0.75)
    pruned = prune_iterative(model, X, config, train=data.train, steps=2, epochs=1)
    oneshot = prune_channels(model, X, config)
    assert pruned.conv2.out_channels == oneshot.conv2.out_channels == 8
    assert pruned.fc1.out_features == oneshot.fc1.out_features == 16
    assert evaluate(pruned.eval(), data.test).accuracy > evaluate(oneshot.eval(), data.test).accuracy


def test_oneshot_fine_tunes_in_place():
    model, data = digit_net()
    pruned = prune_oneshot(model, X, PruneConfig(ratio=0.75), train=data.train, epochs=1)
    plain = prune_channels(model, X, PruneConfig(ratio=0.75))
    assert evaluate(pruned.eval(), data.test).accuracy > evaluate(plain.eval(), data.test).accuracy


def _feature_error(model, pruned, x) -> float:
    with torch.no_grad():
        return float(((model(x) - pruned(x)) ** 2).mean())


def test_reconstruction_reduces_the_error_to_the_original_outputs():
    model, data = digit_net()
    pruned = prune_channels(model, X, PruneConfig(ratio=0.6))
    x = torch.cat([b[0] for b in data.calibration])
    before = _feature_error(model, pruned.eval(), x)
    report = reconstruct_(pruned, model, data.calibration)
    assert set(report) == {"conv2", "fc1", "fc2"}
    assert all(after <= b for b, after in report.values())
    assert _feature_error(model, pruned, x) < before


def test_layerwise_with_reconstruction_beats_plain_pruning():
    model, data = digit_net()
    config = PruneConfig(ratio=0.6)
    layerwise = prune_layerwise(model, X, config, data=data.calibration)
    plain = prune_channels(model, X, config)
    assert layerwise.conv2.out_channels == plain.conv2.out_channels
    x = torch.cat([b[0] for b in data.calibration])
    assert _feature_error(model, layerwise.eval(), x) < _feature_error(model, plain.eval(), x)
    with pytest.raises(ConfigError, match="calibration data"):
        prune_layerwise(model, X, config, data=None)
