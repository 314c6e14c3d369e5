import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from slimkit import ConfigError
from slimkit.analysis import build_latency_table, detect_step

from ._fake_measurer import Forbidden, MacMeasurer


def _tiny():
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, groups=32, padding=1),
                         nn.Conv2d(32, 48, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(48, 10)).eval()


def test_table_is_measured_once_then_read_from_the_cache(tmp_path):
    x = torch.zeros(1, 3, 8, 8)
    fake = MacMeasurer()
    first = build_latency_table(_tiny(), x, batch=4, cache_dir=tmp_path, measurer=fake)
    assert first.measured_points > 0 and fake.points_timed >= first.measured_points
    assert set(first.layers) == {"0", "2", "3", "7"}
    assert [first.layers[n].geometry.kind for n in ("0", "2", "3", "7")] == ["conv", "depthwise", "conv", "linear"]
    assert first.layers["0"].geometry.size == (8, 8) and first.layers["0"].geometry.batch == 4
    again = build_latency_table(_tiny(), x, batch=4, cache_dir=tmp_path, measurer=Forbidden())
    assert again.measured_points == 0 and again.other == pytest.approx(0.1)
    assert again.predict_ms() == pytest.approx(first.predict_ms())
    # another batch is another geometry: measured anew (steps are per machine and stay cached)
    fake.points_timed = 0
    build_latency_table(_tiny(), x, batch=8, cache_dir=tmp_path, measurer=fake)
    assert fake.points_timed == sum(len(t.in_grid) * len(t.out_grid) if t.geometry.kind != "depthwise"
                                    else len(t.out_grid) for t in first.layers.values())


def test_a_damaged_cache_entry_is_measured_again_never_read(tmp_path):
    """Entries of the cache file that are not what the module writes (wrong types, a zero step, a negative time, a
    share above 1) are dropped and measured again; the table equals a fresh one and nothing raises."""
    x = torch.zeros(1, 3, 8, 8)
    fresh = build_latency_table(_tiny(), x, batch=4, cache_dir=tmp_path, measurer=MacMeasurer())
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    layer = next(iter(data["layers"]))
    point = next(iter(data["layers"][layer]))
    data["layers"][layer][point] = [-1.0, "x"]
    data["steps"] = {kind: {"in": 0, "out": 16} for kind in data["steps"]}
    data["models"] = {k: [7.0, None] for k in data["models"]}
    data["reference_ms"] = None
    path.write_text(json.dumps(data))
    fake = MacMeasurer()
    again = build_latency_table(_tiny(), x, batch=4, cache_dir=tmp_path, measurer=fake)
    assert fake.points_timed > 0 and again.other == pytest.approx(fresh.other)
    assert again.predict_ms() == pytest.approx(fresh.predict_ms())
    for broken in ("[]", '{"machine": 5}', "null"):
        path.write_text(broken)
        assert build_latency_table(_tiny(), x, batch=4, cache_dir=tmp_path, measurer=MacMeasurer()).predict_ms() \
            == pytest.approx(fresh.predict_ms())


def test_table_follows_the_measured_steps_and_predicts_a_padded_width(tmp_path):
    x = torch.zeros(1, 3, 8, 8)
    table = build_latency_table(_tiny(), x, batch=2, cache_dir=tmp_path, measurer=MacMeasurer(step=16))
    conv = table.layers["3"]  # 32 → 48 pointwise
    assert (conv.step_in, conv.step_out) == (16, 16)
    assert conv.out_grid == (16, 32, 48) and conv.in_grid == (4, 8, 12, 16, 32)
    assert conv.cost(32, 40) == pytest.approx(conv.cost(32, 48))  # 40 outputs pad to 48
    assert conv.cost(32, 32) < conv.cost(32, 33)
    assert conv.snap(40, "out") == 32 and conv.snap(48, "out") == 48 and conv.snap(10, "in") == 8
    assert conv.snap(3, "in") == 4  # never below a quarter step
    full = table.predict_ms()
    half = table.predict_ms({"3": (32, 16), "7": (16, 10)})
    assert half < full and table.predict_ratio() == pytest.approx(1.0)
    assert 0.1 < table.predict_ratio({"3": (32, 16), "7": (16, 10)}) < 1


def test_the_other_ops_shrink_with_the_outputs_they_read_and_the_executors_share_does_not(tmp_path):
    x = torch.zeros(1, 3, 8, 8)
    table = build_latency_table(_tiny(), x, batch=2, cache_dir=tmp_path,
                                measurer=MacMeasurer(step=16, other=0.2, fixed=0.05))
    assert (table.other, table.other_fixed) == (0.2, 0.05)
    # outputs per sample: conv 0 32·64, depthwise 2 32·64, pointwise 3 48·64, linear 7 10 (one row)
    full_outputs = 32 * 64 + 32 * 64 + 48 * 64 + 10
    widths = {"3": (32, 16), "7": (16, 10)}  # the pointwise conv keeps 16 of its 48 outputs
    layers = table.predict_ms(widths) / table.predict_ms()
    outputs = (full_outputs - 32 * 64) / full_outputs
    assert table.predict_ratio(widths) == pytest.approx(0.8 * layers + 0.15 * outputs + 0.05)
    assert table.predict_ratio() == pytest.approx(1.0)
    # all of it fixed: the constant other share
    constant = build_latency_table(_tiny(), x, batch=2, cache_dir=False, measurer=MacMeasurer(step=16, other=0.2))
    assert constant.predict_ratio(widths) == pytest.approx(0.8 * layers + 0.2)
    # a cache written before the fixed part was measured holds a bare share: that entry is measured again
    cache = next(tmp_path.glob("*.json"))
    data = json.loads(cache.read_text())
    data["models"] = {key: 0.2 for key in data["models"]}
    cache.write_text(json.dumps(data))
    fake = MacMeasurer(step=16, other=0.3, fixed=0.1)
    again = build_latency_table(_tiny(), x, batch=2, cache_dir=tmp_path, measurer=fake)
    assert fake.points_timed == 0 and (again.other, again.other_fixed) == (0.3, 0.1)


def test_a_real_table_builds_in_seconds_on_a_tiny_model(tmp_path):
    from slimkit.analysis import OrtMeasurer

    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    table = build_latency_table(model, torch.zeros(1, 1, 6, 6), batch=1, max_points=2, cache_dir=tmp_path,
                                measurer=OrtMeasurer(repeats=2, warmup=1))
    # real timings: no threshold on them
    assert table.layers["2"].full_ms > 0 and 0 <= table.other_fixed <= table.other < 1
    assert table.layers["2"].step_out in (1, 2, 4, 8, 16, 32)
    reused = build_latency_table(model, torch.zeros(1, 1, 6, 6), batch=1, max_points=2, cache_dir=tmp_path,
                                 measurer=Forbidden())
    assert reused.layers["2"].full_ms == table.layers["2"].full_ms


def _staircase(step, n=64, noise=0.0, seed=0):
    rng = random.Random(seed)
    return [math.ceil(w / step) * (1 + noise * rng.uniform(-1, 1)) for w in range(1, n + 1)]


@pytest.mark.parametrize(("step", "seed"), [(8, 0), (16, 1), (16, 2), (32, 3)])
def test_detect_step_finds_a_padded_block_under_noise(step, seed):
    n = max(64, 3 * step)  # a step is confirmed by two midpoints at least: 32 needs a sweep past 80
    assert detect_step(range(1, n + 1), _staircase(step, n=n, noise=0.02, seed=seed)) == step


def test_one_midpoint_does_not_decide_a_step():
    """A 16-channel staircase whose one 32-step midpoint (48) reads 6 % slow, as preemption makes a single time:
    still 16, not 32."""
    times = _staircase(16)
    times[47] *= 1.06
    assert detect_step(range(1, 65), times) == 16


def test_detect_step_separates_linear_kernels_and_unaligned_fallbacks():
    widths = range(1, 65)
    assert detect_step(widths, [0.01 * w for w in widths]) == 1  # time ∝ width: every width is worth keeping
    fallback = [w * (1.0 if w % 16 == 0 or w < 16 else 1.6) for w in widths]  # NCHWc input needs 16-multiples
    assert detect_step(widths, fallback) == 16
    assert detect_step(range(1, 20), _staircase(16, n=19)) < 16  # a sweep shorter than 2 steps cannot confirm one


@pytest.mark.parametrize(("kwargs", "message"), [({"threads": 0}, "threads"), ({"max_points": 1}, "max_points"),
                                                 ({"batch": 0}, "batch")])
def test_bad_table_options_are_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_latency_table(_tiny(), torch.zeros(1, 3, 8, 8), measurer=Forbidden(), cache_dir=False, **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [({"precision": "int4"}, "precision"),
                                                 ({"precision": "int8"}, "network="),
                                                 ({"precision": "int8", "network": "missing.onnx"}, "not a file")])
def test_bad_int8_table_options_are_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_latency_table(_tiny(), torch.zeros(1, 3, 8, 8), measurer=Forbidden(), cache_dir=False, **kwargs)


class _PrecisionMeasurer(MacMeasurer):
    """fp32 as MacMeasurer; int8 a flat 1 ms per layer whatever its widths (the plateau measured on small convs)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.table_ops: list[set[str]] = []

    def points(self, geometry, points):
        self.seen.append(geometry.precision)
        if geometry.precision == "int8":
            return [(1.0, 0.0)] * len(points)
        return super().points(geometry, points)

    def other_share(self, onnx_path, inputs, table_ops):
        self.table_ops.append(set(table_ops))
        return super().other_share(onnx_path, inputs, table_ops)


def test_int8_tables_are_their_own_measurements_and_keys(tmp_path):
    x = torch.zeros(1, 3, 8, 8)
    network = tmp_path / "int8.onnx"
    network.write_bytes(b"stands for the deployed int8 file")
    fake = _PrecisionMeasurer()
    fp32 = build_latency_table(_tiny(), x, batch=2, cache_dir=tmp_path, measurer=fake)
    int8 = build_latency_table(_tiny(), x, batch=2, cache_dir=tmp_path, measurer=fake, precision="int8",
                               network=network)
    assert set(fake.seen) == {"fp32", "int8"}
    assert {t.geometry.precision for t in int8.layers.values()} == {"int8"}
    assert "QLinearConv" in fake.table_ops[-1] and "Conv" in fake.table_ops[0]
    conv = int8.layers["3"]
    assert conv.cost(32, 16) == pytest.approx(conv.full_ms)  # the int8 plateau, not fp32's halving
    assert fp32.layers["3"].cost(32, 16) < 0.6 * fp32.layers["3"].full_ms
    # fp32 keys are unchanged by the precision field (tables cached before int8 existed stay valid)
    assert "precision" not in fp32.layers["3"].geometry.key() and "precision=int8" in conv.geometry.key()
    again = build_latency_table(_tiny(), x, batch=2, cache_dir=tmp_path, measurer=Forbidden(), precision="int8",
                                network=network)
    assert again.predict_ms() == pytest.approx(int8.predict_ms())


@pytest.mark.parametrize(("kind", "fused"), [("conv", "QLinearConv"), ("depthwise", "QLinearConv"),
                                             ("linear", "QGemm")])
def test_an_int8_layer_runs_as_onnx_runtimes_quantized_kernel(kind, fused, tmp_path):
    from slimkit.analysis._latency_probe import Geometry, _onnx_layer, _runs, _session

    size = (16,) if kind == "linear" else (6, 6)
    geometry = Geometry(kind, *(() if kind == "linear" else ((3, 3), (1, 1), (1, 1, 1, 1))), size=size, batch=2,
                        precision="int8")
    model, x = _onnx_layer(geometry, 16, 16)
    session = _session(model, 1, str(tmp_path / "p"))
    y = session.run(None, {"X": x})[0]
    ops = _runs(session.end_profiling(), 0)[0]
    assert fused in ops and "Conv" not in ops and "Gemm" not in ops
    reference = _session(_onnx_layer(Geometry(kind, *(() if kind == "linear" else ((3, 3), (1, 1), (1, 1, 1, 1))),
                                              size=size, batch=2), 16, 16)[0], 1, str(tmp_path / "r"))
    expected = reference.run(None, {"X": x})[0]
    # uint8 activations on ±4 (step 8/255) and int8 weights: the same layer within its quantisation error
    assert np.abs(y - expected).max() < 0.05 * np.abs(expected).max() + 0.05


class _SlowOffSteps(MacMeasurer):
    """Output channels off a multiple of 16 run a fallback at twice the padded time (what int8 convs do)."""

    def points(self, geometry, points):
        times = super().points(geometry, points)
        return [(ms * (2.0 if co % self.step else 1.0), glue) for (ms, glue), (_, co) in zip(times, points)]


def test_widths_a_search_chooses_are_measured_not_read_off_the_steps(tmp_path):
    x = torch.zeros(1, 3, 8, 8)
    plain = build_latency_table(_tiny(), x, batch=2, cache_dir=False, measurer=_SlowOffSteps())
    extra = build_latency_table(_tiny(), x, batch=2, cache_dir=False, measurer=_SlowOffSteps(),
                                widths={"3": ([24], [40]), "2": ([20], [20])})
    conv, depthwise = extra.layers["3"], extra.layers["2"]
    assert 40 in conv.out_grid and 24 in conv.in_grid and 20 in depthwise.out_grid
    assert plain.layers["3"].cost(32, 40) == pytest.approx(plain.layers["3"].cost(32, 48))  # read off the step
    assert conv.cost(32, 40) == pytest.approx(2 * conv.cost(32, 48))  # measured: the fallback's time
    assert conv.cost(32, 32) == pytest.approx(plain.layers["3"].cost(32, 32))  # the step grid is unchanged
    assert conv.cost(32, 39) == pytest.approx(conv.cost(32, 48))  # an unmeasured width: the step rule, as before


def test_a_measured_off_step_width_is_not_interpolated_through():
    x = torch.zeros(1, 3, 8, 8)
    plain = build_latency_table(_tiny(), x, batch=2, max_points=2, cache_dir=False, measurer=_SlowOffSteps())
    extra = build_latency_table(_tiny(), x, batch=2, max_points=2, cache_dir=False, measurer=_SlowOffSteps(),
                                widths={"3": ([], [40])})
    conv = extra.layers["3"]
    assert 32 not in conv.out_grid and 40 in conv.out_grid  # 32 is read between the step grid's 16 and 48
    assert conv.cost(32, 32) == pytest.approx(plain.layers["3"].cost(32, 32))  # not pulled up by the slow 40
    assert conv.cost(32, 40) == pytest.approx(2 * conv.cost(32, 48))
