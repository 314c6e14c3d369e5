"""Sensitivity sweep per layer, the PNG plot, and per-layer ratios from a table and a global target."""

from __future__ import annotations

import pytest
import torch

from slimkit import ConfigError
from slimkit.prune import SensitivityResult, ratios_from_sensitivity, sensitivity
from tests.prune._nets import digit_net


def test_sweep_table_and_plot(tmp_path):
    model, data = digit_net()
    result = sensitivity(model, torch.zeros(1, 1, 8, 8), data.test, ratios=(0.25, 0.75))
    assert list(result.table) == ["conv1", "conv2", "fc1"]
    assert result.sizes == {"conv1": 16, "conv2": 32, "fc1": 64}
    assert 0.8 < result.baseline <= 1
    for row in result.table.values():
        assert set(row) == {0.25, 0.75} and all(0 <= v <= 1 for v in row.values())
    png = result.plot(tmp_path / "sens.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| conv1 | 16 |" in result.to_markdown()


def test_ratios_from_table_prune_robust_layers_harder():
    table = {"a": {0.2: 0.98, 0.5: 0.97, 0.8: 0.60}, "b": {0.2: 0.90, 0.5: 0.50, 0.8: 0.10}}
    result = SensitivityResult(baseline=0.98, table=table, sizes={"a": 10, "b": 10})
    # Target 0.35 of all units: 'a' alone at 0.5 (drop 0.01) gives 0.25; adding 'b' at 0.2 (drop 0.08) gives 0.35.
    assert ratios_from_sensitivity(result, 0.35) == {"a": 0.5, "b": 0.2}
    assert ratios_from_sensitivity(result, 0.0) == {"a": 0.2, "b": 0.0}
    with pytest.raises(ConfigError, match="use a value in"):
        ratios_from_sensitivity(result, 1.2)
