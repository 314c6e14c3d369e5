"""Latency-aware pruning (prune/_latency.py) against a synthetic latency table: target reached, widths snapped."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from torch import nn

from slimkit import ConfigError
from slimkit.analysis import LatencyComparison, build_latency_table
from slimkit.analysis._latency import comparison_from_samples
from slimkit.analysis._latency_table import model_layers
from slimkit.prune import LatencyTarget, PruneConfig, prune_channels, prune_to_latency, pruning_info
from tests.analysis._fake_measurer import MacMeasurer


class Net(nn.Module):
    """Two residual stages (64 and 96 channels) and a head: coupled groups, unaligned-able widths."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.a1 = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))
        self.down = nn.Sequential(nn.Conv2d(64, 96, 3, stride=2, padding=1), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(96, 96, 3, padding=1), nn.ReLU(), nn.Conv2d(96, 96, 3, padding=1))
        self.fc = nn.Linear(96, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a1(x))
        x = self.down(x)
        x = torch.relu(x + self.b1(x))
        return self.fc(x.mean((2, 3)))


X = torch.zeros(1, 3, 12, 12)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    torch.manual_seed(0)
    return build_latency_table(Net().eval(), X, batch=8, cache_dir=tmp_path_factory.mktemp("lat"),
                               measurer=MacMeasurer(step=16, other=0.1))


def _widths(model):
    return {layer.name: (layer.cin, layer.cout) for layer in model_layers(model, X, batch=8)}


@pytest.mark.parametrize("target", [0.7, 0.5, 0.3])
def test_search_reaches_the_target_within_ten_percent_with_snapped_widths(table, target):
    torch.manual_seed(0)
    model = Net().eval()
    config = PruneConfig(target_latency=LatencyTarget(target, batch=8, measure=False))
    pruned = prune_to_latency(model, X, config, table=table)
    # the latency of the model actually built, read from the same table, is at the target (not above, ≤ 10 % below)
    achieved = table.predict_ratio(_widths(pruned))
    assert 0.9 * target <= achieved <= target + 1e-9
    info = pruning_info(pruned)["latency"]
    assert info["predicted"] == pytest.approx(achieved) and info["measured"] is None
    for name, (cin, cout) in _widths(pruned).items():  # every width sits where the kernel's time steps
        layer = table.layers[name]
        assert layer.snap(cin, "in") == cin and layer.snap(cout, "out") == cout, (name, cin, cout)
    with torch.no_grad():
        assert pruned(torch.randn(2, 3, 12, 12)).shape == (2, 10)
    assert all(p.shape == q.shape for p, q in zip(model.state_dict().values(), Net().state_dict().values()))


def test_search_spends_the_budget_where_importance_is_cheapest(table):
    """48 of a1.0's 64 filters are made nearly dead (L1 ÷ 100): the search removes exactly those first."""
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.a1[0].weight[16:].mul_(0.01)
    pruned = prune_to_latency(model, X, PruneConfig(target_latency=LatencyTarget(0.6, batch=8, measure=False)),
                              table=table)
    widths = _widths(pruned)
    assert widths["a1.0"][1] == 16 and widths["a1.2"][0] == 16
    kept = pruning_info(pruned)["keep"]["a1.0"]["out"]
    assert kept == list(range(16))  # the live filters


def test_latency_group_weight_cuts_every_group_alike_where_units_cut_one_to_its_floor(table):
    """Random filters (flat scores): the stem's 64-wide residual stream costs the most time per channel, so with
    "units" the search takes it to its floor (16 of 64) first; with "latency" a group costs what its share of
    the time is worth and each removal weighs more the thinner it leaves the group, so the cuts spread."""
    def kept_fractions(group_weight):
        torch.manual_seed(0)
        target = LatencyTarget(0.5, batch=8, measure=False, group_weight=group_weight)
        widths = _widths(prune_to_latency(Net().eval(), X, PruneConfig(target_latency=target), table=table))
        assert table.predict_ratio(widths) <= 0.5
        return [widths["stem.0"][1] / 64, widths["a1.0"][1] / 64, widths["down.0"][1] / 96, widths["b1.0"][1] / 96]

    units, latency = kept_fractions("units"), kept_fractions("latency")
    assert min(units) == 0.25 and max(units) == 1.0
    assert min(latency) >= 0.5 and max(latency) - min(latency) < max(units) - min(units)


def test_a_measured_miss_corrects_the_target_and_searches_again(table, monkeypatch):
    import slimkit.analysis

    calls = []

    def fake_compare(baseline, candidate, x, **kwargs) -> LatencyComparison:
        predicted = table.predict_ratio(_widths(candidate))
        measured = 1.25 * predicted  # the runtime is slower than the table says
        calls.append(measured)
        return comparison_from_samples([[1.0] * 9, [1.0] * 9, [measured] * 9], backend="onnxruntime", threads=1,
                                       batch_size=8)

    monkeypatch.setattr(slimkit.analysis, "compare_latency", fake_compare)
    pruned = prune_to_latency(Net().eval(), X, PruneConfig(target_latency=LatencyTarget(0.5, batch=8, refine=2)),
                              table=table)
    rounds = pruning_info(pruned)["latency"]["rounds"]
    assert len(rounds) >= 2 and rounds[1]["goal"] < rounds[0]["goal"]
    assert pruning_info(pruned)["latency"]["measured"]["ratio"] == pytest.approx(min(calls))


@pytest.mark.parametrize(("value", "message"), [
    (1.5, r"target_latency 1.5 is out of range: .* in \(0, 1\)"),
    (0, "target_latency 0 is out of range"),
    (True, "target_latency True is out of range"),
    ("fast", "target_latency 'fast' is out of range"),
    (float("nan"), "target_latency nan is out of range"),
])
def test_bad_latency_targets_are_rejected_before_work(value, message):
    with pytest.raises(ConfigError, match=message):
        prune_channels(Net(), X, PruneConfig(target_latency=value))


def test_conflicting_or_malformed_targets_are_rejected():
    with pytest.raises(ConfigError, match="give one target"):
        prune_channels(Net(), X, PruneConfig(target_latency=0.5, speedup=2.0))
    with pytest.raises(ConfigError, match="per-layer ratios"):
        prune_channels(Net(), X, PruneConfig(target_latency=0.5, ratio={"a1.*": 0.5}))
    with pytest.raises(ConfigError, match=r"target_latency.batch=0: use a whole number ≥ 1"):
        LatencyTarget(0.5, batch=0)
    with pytest.raises(ConfigError, match="tolerance"):
        LatencyTarget(0.5, tolerance=0.9)
    with pytest.raises(ConfigError, match="group_weight='flat': use one of 'units', 'latency'"):
        LatencyTarget(0.5, group_weight="flat")


def test_an_unreachable_target_names_the_reachable_one(table):
    with pytest.raises(ConfigError, match=r"target_latency 0.05 is below what pruning can reach .* use "
                                          r"target_latency ≥ 0\.\d\d, or allow widths below one kernel block"):
        prune_to_latency(Net().eval(), X, PruneConfig(target_latency=LatencyTarget(0.05, batch=8, measure=False)),
                         table=table)



def _fast_runtime(table, monkeypatch, factor):
    """compare_latency replaced by the table's prediction × ``factor`` (a runtime that far off the table)."""
    import slimkit.analysis

    def fake_compare(baseline, candidate, x, **kwargs) -> LatencyComparison:
        measured = factor * table.predict_ratio(_widths(candidate))
        return comparison_from_samples([[1.0] * 9, [1.0] * 9, [measured] * 9], backend="onnxruntime", threads=1,
                                       batch_size=8)

    monkeypatch.setattr(slimkit.analysis, "compare_latency", fake_compare)


def _predicted_floor(table):
    import re

    with pytest.raises(ConfigError) as error:
        prune_to_latency(Net().eval(), X, PruneConfig(target_latency=LatencyTarget(0.01, batch=8, measure=False)),
                         table=table)
    return float(re.search(r"use target_latency ≥ (\d\.\d\d)", str(error.value)).group(1))


def test_a_target_below_the_tables_floor_is_measured_before_it_is_refused(table, monkeypatch):
    """The table over-predicts narrow models (the runtime runs them at 0.7 of its prediction): a target under the
    predicted floor but above the measured one is reached, not refused."""
    floor = _predicted_floor(table)
    target = round(0.85 * floor, 2)
    _fast_runtime(table, monkeypatch, 0.7)
    pruned = prune_to_latency(Net().eval(), X, PruneConfig(target_latency=LatencyTarget(target, batch=8, refine=2)),
                              table=table)
    info = pruning_info(pruned)["latency"]
    assert info["rounds"][0]["predicted"] == pytest.approx(floor, abs=0.01)  # the narrowest model, timed first
    assert info["measured"]["ratio"] <= target * 1.1
    # the model kept is no narrower than it needs to be: milder than the narrowest one whenever that is allowed
    assert info["measured"]["ratio"] >= 0.9 * target and info["predicted"] > info["rounds"][0]["predicted"]
    # the narrowest model measures just over the target, within its tolerance: it is the answer, timed once
    close = 0.7 * floor / 1.05
    info = pruning_info(prune_to_latency(Net().eval(), X, PruneConfig(target_latency=LatencyTarget(close, batch=8)),
                                         table=table))["latency"]
    assert len(info["rounds"]) == 1 and close < info["measured"]["ratio"] <= 1.1 * close
    with pytest.raises(ConfigError, match=r"narrowest allowed width the model measured 0\.\d\d of the original's "
                                          r"latency \(the table predicted"):
        prune_to_latency(Net().eval(), X, PruneConfig(target_latency=LatencyTarget(round(0.6 * floor, 2), batch=8)),
                         table=table)

def test_sub_block_widths_reach_lower_targets(table):
    """0.14 is below the floor of 16-channel steps at min_keep 0.125; a quarter-block width (4, 8, 12) gets there."""
    def prune(sub_block):
        target = LatencyTarget(0.14, batch=8, measure=False, min_keep=0.125, sub_block=sub_block)
        return prune_to_latency(Net().eval(), X, PruneConfig(target_latency=target), table=table)

    with pytest.raises(ConfigError, match="sub_block=True"):
        prune(False)
    widths = _widths(prune(True))
    assert table.predict_ratio(widths) <= 0.14
    assert any(0 < w < 16 for cin, cout in widths.values() for w in (cin, cout) if w not in (3, 10))


def test_prune_command_reaches_a_latency_target_from_a_cached_table(tmp_path, monkeypatch, capsys):
    """``slimkit prune lenet5 --latency 0.6``: the table comes from the machine's cache (filled here by the MAC
    measurer, so nothing is timed), the result records predicted vs measured and the CLI prints both."""
    import json

    from slimkit import models
    from slimkit.cli import main

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "cache"))
    build_latency_table(models.create("lenet5"), torch.zeros(1, 1, 28, 28), batch=1,
                        cache_dir=tmp_path / "cache" / "latency", measurer=MacMeasurer(step=16, other=0.05))
    assert main(["prune", "lenet5", "--data", "mnist", "--latency", "0.6", "--out", str(tmp_path / "out"),
                 "--eval-samples", "100", "--no-latency"]) == 0
    printed = capsys.readouterr().out
    assert "latency target 0.6 at batch 1: predicted 0." in printed
    stage = json.loads((tmp_path / "out" / "metrics.json").read_text())["stages"][1]
    target = stage["notes"]["latency_target"]
    first = target["rounds"][0]  # later rounds correct the (synthetic) table by real measurements
    assert first["predicted"] <= 0.6 and target["measured"]["status"] in ("ok", "too noisy")
    assert stage["macs"] < json.loads((tmp_path / "out" / "metrics.json").read_text())["stages"][0]["macs"]


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_a_latency_target_in_openvino_is_searched_on_its_table_and_timed_there(tmp_path):
    torch.manual_seed(0)
    net = Net().eval()
    table = build_latency_table(net, X, batch=8, cache_dir=tmp_path, backend="openvino",
                                measurer=_Labelled(MacMeasurer(step=16, other=0.1), "openvino"))
    target = LatencyTarget(0.6, batch=8, refine=0, backend="openvino")
    pruned = prune_to_latency(net, X, PruneConfig(target_latency=target), table=table)
    info = pruning_info(pruned)["latency"]
    assert info["backend"] == "openvino" and info["predicted"] <= 0.6
    assert info["measured"]["status"] in ("ok", "too noisy")  # timed in OpenVINO: no threshold on real timings


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_a_table_of_another_runtime_than_the_targets_is_refused(table):
    # the module's table is ONNX Runtime's; an object without a backend attribute is taken as ONNX Runtime's too
    for given in (table, object()):
        with pytest.raises(ConfigError, match="table given was measured in onnxruntime, but the target is in "
                                              "openvino"):
            prune_to_latency(Net().eval(), X, PruneConfig(target_latency=LatencyTarget(0.5, backend="openvino")),
                             table=given)
    with pytest.raises(ConfigError, match=r"target_latency\.backend='tvm': use one of 'onnxruntime', 'openvino'"):
        LatencyTarget(0.5, backend="tvm")
    assert LatencyTarget(0.5).runtime == "onnxruntime" and LatencyTarget(0.5, backend="openvino").runtime == "openvino"


def test_a_latency_target_without_openvino_installed_says_how_to_get_it_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    target = LatencyTarget(0.5, backend="openvino")  # naming it is fine: a recipe may be read anywhere
    with pytest.raises(ConfigError, match=r"target_latency\.backend 'openvino' needs the openvino package"):
        prune_to_latency(Net().eval(), X, PruneConfig(target_latency=target), table=object())


class _Labelled:
    """A measurer that says which runtime it stands in for."""

    def __init__(self, inner, backend):
        self.inner, self.backend = inner, backend

    def points(self, geometry, points):
        return self.inner.points(geometry, points)

    def other_share(self, onnx_path, inputs, table_ops):
        return self.inner.other_share(onnx_path, inputs, table_ops)
