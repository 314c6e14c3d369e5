"""OpenVINO as a latency runtime (analysis/_openvino.py): comparisons, the counters behind layer times, tables."""

from __future__ import annotations

import importlib.util
import sys
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from slimkit import ConfigError
from slimkit._errors import UnsupportedModelError
from slimkit.analysis import OpenVinoMeasurer, OrtMeasurer, build_latency_table, compare_latency, latency
from slimkit.analysis._openvino import _node_totals, _OpenVinoProbe, _timed_means, openvino_compiled, openvino_core
from slimkit.export import export_onnx

from ._fake_measurer import Forbidden

#: tests that run OpenVINO itself (a dev dependency, so CI has it); the others fake it or its absence
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 24, 3), nn.ReLU(), nn.Conv2d(24, 24, 3), nn.Flatten(),
                         nn.Linear(24 * 24 * 24, 10)).eval()


@needs_openvino
def test_openvino_runs_the_model_in_fp32_not_its_bfloat16_default(tmp_path):
    """On a CPU with AVX512-BF16 or AMX OpenVINO's default precision is bfloat16, whose 8-bit mantissa moves these
    logits by ~1e-3; a latency measured that way would be of another model."""
    import openvino

    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    path = export_onnx(_model(), x, tmp_path / "m.onnx")
    compiled = openvino_compiled(openvino_core(), str(path), 1)
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32  # on any CPU
    got = next(iter(compiled.create_infer_request().infer({0: x.numpy()}).values()))
    with torch.no_grad():
        want = _model()(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


@needs_openvino
def test_latency_and_comparisons_run_in_openvino(tmp_path):
    x = torch.zeros(2, 1, 28, 28)
    result = latency(_model(), x, backend="openvino", threads=1, warmup=1, repeats=5)
    assert 0 < result.p10_ms <= result.median_ms <= result.p90_ms and result.backend == "openvino"
    a = export_onnx(_model(), x, tmp_path / "a.onnx")
    cmp = compare_latency(a, _model(), x, backend="openvino", threads=1, warmup=1, repeats=4)
    assert cmp.sessions == 3 and cmp.candidate.backend == "openvino" and cmp.control.repeats == 4
    assert cmp.status in ("ok", "too noisy") and cmp.aa_ratio > 0  # real timings: no threshold asserted


@needs_openvino
def test_a_file_openvino_cannot_compile_names_the_reason(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["X"], ["Y"], domain="example.unknown")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("example.unknown", 1)])
    (tmp_path / "odd.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(UnsupportedModelError, match=r"OpenVINO cannot run .*odd\.onnx: .*NoSuchOp.*measure this "
                                                     r"model's latency in onnxruntime \(--runtime onnxruntime\)"
                       ) as caught:
        latency(tmp_path / "odd.onnx", torch.zeros(1, 4), backend="openvino", repeats=1)
    assert "Exception from" not in str(caught.value)


def _node(node_type, us, status="EXECUTED"):
    return SimpleNamespace(node_type=node_type, status=SimpleNamespace(name=status),
                           real_time=timedelta(microseconds=us))


class FakeRequest:
    """An infer request whose counters work as OpenVINO's CPU plugin's do: each run's node time floored to a whole
    microsecond and added up, the mean reported the total floor-divided by the runs, a node whose mean is 0 reported
    as not run. The k-th call of a node type takes ``times[type][k]`` µs; ``latency`` (ms, a float) is the last
    call's sum plus ``overhead``."""

    def __init__(self, times, overhead=50):
        self.times, self.overhead, self.calls, self.latency = times, overhead, 0, 0.0
        self.feeds = []

    def infer(self, feed, **kwargs):
        self.feeds.append((feed, kwargs))
        self.calls += 1
        self.latency = (sum(t[self.calls - 1] for t in self.times.values()) + self.overhead) / 1e3

    @property
    def profiling_info(self):
        means = {op: int(sum(int(v) for v in t[:self.calls])) // self.calls for op, t in self.times.items()}
        return [_node(op, us, "EXECUTED" if us else "NOT_RUN") for op, us in means.items()] + [
            _node("Result", 0, "NOT_RUN")]


def test_counter_means_since_compilation_become_the_timed_runs_mean():
    """A 4000 µs first run then 1000 µs runs: after 3 runs the counter shows 2000, after 8 it shows 1375, so the
    last 5 averaged 1000 µs — not the 1375 shown. Every run is floored to a microsecond first, so a 1.6 µs kernel
    reads as 1 µs, and a 0.4 µs one as nothing: it drops out once its mean floors to 0."""
    request = FakeRequest({"Convolution": [4000, 1000, 1000, 1000, 1000, 1000, 1000, 1000],
                           "FullyConnected": [3.7, 1.6, 1.6, 1.6, 1.6, 1.6, 1.6, 1.6],
                           "Eltwise": [3.7, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]})
    for _ in range(3):
        request.infer(None)
    after_warmup = _node_totals(request, 3)
    assert after_warmup == pytest.approx({"Convolution": 6.0, "FullyConnected": 0.003, "Eltwise": 0.003})
    for _ in range(5):
        request.infer(None)
    assert _timed_means(request, after_warmup, 8, 3) == pytest.approx({"Convolution": 1.0, "FullyConnected": 0.001})


def test_a_probe_reads_kernel_and_glue_from_the_timed_runs_and_scales_them_to_each_run():
    """Kernel and glue means over the timed runs (2 and 0.5 ms; the kernel gets back the half microsecond the
    counters' flooring takes off on average), each run's share by its latency over their mean: the fastest timed run
    (2.35 ms of a 2.55 ms mean) stands for the layer. A sub-microsecond kernel, which the counters read as nothing,
    is half a microsecond."""
    request = FakeRequest({"Convolution": [9000, 2000, 2000, 1800, 2200, 2000],
                           "Reorder": [3000, 500, 500, 500, 500, 500]})
    probe = _OpenVinoProbe(request, {0: np.zeros(1)}, warmup=2)
    for _ in range(6):
        probe.run()
    kernel, glue = probe.times(2)
    scale = np.array([2.55, 2.35, 2.75, 2.55]) / 2.55  # per timed run, over their mean (0.05 ms overhead each)
    # (the counters' floor-divided means keep the totals to a few microseconds over six runs)
    assert kernel == pytest.approx(2.0005 * scale, abs=3e-3) and glue == pytest.approx(0.5 * scale, abs=3e-3)
    assert all(kwargs == {"share_inputs": True, "share_outputs": True} for _, kwargs in request.feeds)
    tiny = _OpenVinoProbe(FakeRequest({"FullyConnected": [0.4] * 6}, overhead=3), {0: np.zeros(1)}, warmup=2)
    for _ in range(6):
        tiny.run()
    assert tiny.times(2)[0] == pytest.approx([0.0005] * 4)


def test_a_networks_other_share_is_its_time_outside_the_tabled_ops(monkeypatch):
    """0.75 ms of convolutions, 0.25 ms of an eltwise op and 0.25 ms outside every node per run: 0.4 of the run is
    other, 0.2 outside every kernel."""
    runs = 8
    request = FakeRequest({"Convolution": [750] * runs, "Eltwise": [250] * runs}, overhead=250)
    measurer = OpenVinoMeasurer(repeats=5, warmup=3)
    monkeypatch.setattr(measurer, "_compiled_request", lambda model: request)
    other, fixed = measurer.other_share("net.onnx", [np.zeros((1, 3))], {"Convolution"})
    assert (other, fixed) == pytest.approx((0.4, 0.2))


@needs_openvino
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
    ({"backend": "openvino", "precision": "int8", "network": "x.onnx"},
     "int8 latency table is measured in ONNX Runtime .* precision='fp32' for openvino"),
    ({"backend": "openvino", "precision": "fp16"}, "precision='fp16': use one of fp32, int8"),
    ({"backend": "openvino", "measurer": OrtMeasurer()}, "measurer given times in onnxruntime but the table is for "
                                                         "backend='openvino'"),
    ({"measurer": OpenVinoMeasurer()}, "measurer given times in openvino but the table is for "
                                       "backend='onnxruntime': pass backend='openvino'"),
])
def test_bad_openvino_table_options_are_rejected_before_anything_is_timed(kwargs, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_latency_table(_model(), torch.zeros(1, 1, 28, 28), cache_dir=tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_without_openvino_installed_the_analysis_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails, and find_spec finds nothing
    openvino_core.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"backend 'openvino' needs the openvino package: pip install openvino"):
            latency(_model(), torch.zeros(1, 1, 28, 28), backend="openvino")
        with pytest.raises(ConfigError, match=r"pip install openvino"):
            build_latency_table(_model(), torch.zeros(1, 1, 28, 28), cache_dir=False, backend="openvino")
    finally:
        openvino_core.cache_clear()
