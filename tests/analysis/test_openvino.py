"""OpenVINO as a latency runtime: comparisons, per-layer tables, latency targets, and the commands' ``--runtime``."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from slimkit import ConfigError
from slimkit.analysis import (
    OpenVinoMeasurer,
    build_latency_table,
    compare_latency,
    latency,
    openvino_core,
)
from slimkit.analysis._latency import openvino_compiled
from slimkit.analysis._latency_probe import _openvino_node_totals, _openvino_timed
from slimkit.export import export_onnx

from ._fake_measurer import Forbidden, MacMeasurer

pytest.importorskip("openvino")  # a dev dependency: CI has it; the tests below of its absence fake that


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 24, 3), nn.ReLU(), nn.Conv2d(24, 24, 3), nn.Flatten(),
                         nn.Linear(24 * 24 * 24, 10)).eval()


def test_openvino_runs_the_model_in_fp32_not_its_bfloat16_default(tmp_path):
    """On a CPU with AVX512-BF16 or AMX OpenVINO's default precision is bfloat16, whose 8-bit mantissa moves these
    logits by ~1e-2; a latency measured that way would be of another model."""
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    path = export_onnx(_model(), x, tmp_path / "m.onnx")
    request = openvino_compiled(openvino_core(), str(path), 1).create_infer_request()
    got = next(iter(request.infer({0: x.numpy()}).values()))
    with torch.no_grad():
        want = _model()(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_latency_and_comparisons_run_in_openvino(tmp_path):
    x = torch.zeros(2, 1, 28, 28)
    result = latency(_model(), x, backend="openvino", threads=1, warmup=1, repeats=5)
    assert 0 < result.p10_ms <= result.median_ms <= result.p90_ms and result.backend == "openvino"
    a = export_onnx(_model(), x, tmp_path / "a.onnx")
    cmp = compare_latency(a, _model(), x, backend="openvino", threads=1, warmup=1, repeats=4)
    assert cmp.sessions == 3 and cmp.candidate.backend == "openvino" and cmp.control.repeats == 4
    assert cmp.status in ("ok", "too noisy") and cmp.aa_ratio > 0  # real timings: no threshold asserted


def test_a_file_openvino_cannot_compile_is_a_clear_error(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["X"], ["Y"], domain="example.unknown")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("example.unknown", 1)])
    (tmp_path / "odd.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(ConfigError, match=r"OpenVINO cannot run .*odd\.onnx.*measure this model in onnxruntime"):
        latency(tmp_path / "odd.onnx", torch.zeros(1, 4), backend="openvino", repeats=1)


def _fake_request(nodes):
    """A request whose performance counters report ``nodes``: (type, status, mean µs)."""
    return SimpleNamespace(profiling_info=[
        SimpleNamespace(node_type=t, status=SimpleNamespace(name=status), real_time=timedelta(microseconds=us))
        for t, status, us in nodes])


def test_counter_means_since_compilation_become_the_timed_runs_mean():
    """OpenVINO's counters are whole-microsecond means over every inference so far: the timed runs' mean is the
    difference of totals. A 4000 µs first run then 1000 µs runs: after 3 runs the mean is 2000, after 8 it is 1375,
    so the last 5 averaged 1000 µs — not the 1375 the counter shows. A microsecond kernel's rounding can make its
    difference negative: it counts 0."""
    after_warmup = _openvino_node_totals(_fake_request([("Convolution", "EXECUTED", 2000), ("Reorder", "EXECUTED", 300),
                                                        ("FullyConnected", "EXECUTED", 2), ("Result", "NOT_RUN", 0)]),
                                         3)
    assert after_warmup == pytest.approx({"Convolution": 6.0, "Reorder": 0.9, "FullyConnected": 0.006})
    end = _fake_request([("Convolution", "EXECUTED", 1375), ("Reorder", "EXECUTED", 150),
                         ("FullyConnected", "EXECUTED", 0), ("Result", "NOT_RUN", 0)])
    timed = _openvino_timed(end, after_warmup, 8, 3)
    assert timed == pytest.approx({"Convolution": 1.0, "Reorder": 0.06, "FullyConnected": 0.0})


def test_an_openvino_table_builds_in_seconds_and_is_cached_apart_from_onnx_runtimes(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    x = torch.zeros(1, 1, 6, 6)
    table = build_latency_table(model, x, batch=1, max_points=2, cache_dir=tmp_path, backend="openvino",
                                measurer=OpenVinoMeasurer(repeats=2, warmup=1))
    assert table.backend == "openvino" and table.to_dict()["backend"] == "openvino"
    assert table.layers["2"].full_ms > 0 and 0 <= table.other_fixed <= table.other < 1  # real timings
    assert table.machine["openvino"] and "onnxruntime" not in table.machine
    reused = build_latency_table(model, x, batch=1, max_points=2, cache_dir=tmp_path, backend="openvino",
                                 measurer=Forbidden())
    assert reused.layers["2"].full_ms == table.layers["2"].full_ms
    with pytest.raises(AssertionError, match="although the cache holds it"):  # ONNX Runtime's table is its own
        build_latency_table(model, x, batch=1, max_points=2, cache_dir=tmp_path, measurer=Forbidden())
    assert len(list(tmp_path.glob("*.json"))) == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"backend": "tvm"}, "backend='tvm': use one of onnxruntime, openvino"),
    ({"backend": "openvino", "precision": "int8", "network": "x.onnx"}, "int8 latency table is measured in ONNX "
                                                                        "Runtime"),
])
def test_bad_openvino_table_options_are_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_latency_table(_model(), torch.zeros(1, 1, 28, 28), cache_dir=False, **kwargs)


def test_a_latency_target_in_openvino_is_timed_there(tmp_path):
    from slimkit.prune import LatencyTarget, PruneConfig, prune_to_latency, pruning_info
    from tests.prune.test_latency import Net, X

    torch.manual_seed(0)
    net = Net().eval()
    table = build_latency_table(net, X, batch=8, cache_dir=tmp_path, backend="openvino",
                                measurer=MacMeasurer(step=16, other=0.1))
    target = LatencyTarget(0.6, batch=8, refine=0, backend="openvino")
    pruned = prune_to_latency(net, X, PruneConfig(target_latency=target), table=table)
    info = pruning_info(pruned)["latency"]
    assert info["backend"] == "openvino" and info["predicted"] <= 0.6
    assert info["measured"]["status"] in ("ok", "too noisy")  # timed in OpenVINO: no threshold on real timings
    onnx_table = build_latency_table(net, X, batch=8, cache_dir=tmp_path, measurer=MacMeasurer(step=16, other=0.1))
    with pytest.raises(ConfigError, match="table given was measured in onnxruntime, but the target is in openvino"):
        prune_to_latency(net, X, PruneConfig(target_latency=target), table=onnx_table)


def test_without_openvino_installed_every_entry_point_says_how_to_get_it(monkeypatch, tmp_path, capsys):
    from slimkit.cli import main
    from slimkit.prune import LatencyTarget

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(ConfigError, match=r"needs the openvino package: pip install openvino"):
        latency(_model(), torch.zeros(1, 1, 28, 28), backend="openvino")
    with pytest.raises(ConfigError, match=r"pip install openvino"):
        LatencyTarget(0.5, backend="openvino")
    with pytest.raises(ConfigError, match=r"pip install openvino"):
        build_latency_table(_model(), torch.zeros(1, 1, 28, 28), cache_dir=False, backend="openvino")
    assert main(["prune", "lenet5", "--data", "mnist", "--ratio", "0.3", "--runtime", "openvino",
                 "--out", str(tmp_path / "out")]) == 2
    assert "evaluation.runtime: 'openvino' needs the openvino package" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_runtime_flag_measures_a_commands_latency_in_openvino_and_the_report_says_so(tmp_path, capsys):
    from slimkit.cli import main

    assert main(["prune", "lenet5", "--data", "mnist", "--ratio", "0.3", "--runtime", "openvino",
                 "--eval-samples", "100", "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["recipe"]["evaluation"]["runtime"] == "openvino"
    pruned = metrics["stages"][1]
    assert pruned["latency_runtime"] == "openvino" and pruned["latency_status"] in ("ok", "too noisy")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "in OpenVINO (CPU, fp32) at a fixed thread count" in report and "in ONNX Runtime" not in report
    assert main(["prune", "lenet5", "--data", "mnist", "--ratio", "0.3", "--runtime", "openvino", "--no-latency",
                 "--out", str(tmp_path / "other")]) == 2
    assert "--runtime sets the latency comparison, which --no-latency skips" in capsys.readouterr().err
