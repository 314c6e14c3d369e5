"""Timing single layers in a runtime at chosen channel counts, and finding where a kernel's time steps.

A layer is timed alone: a one-node ONNX graph (Conv or Gemm) at the layer's real input size and batch, in a session
with the same options as :func:`slimkit.analysis.compare_latency` (fixed threads, spinning off). ONNX Runtime's
profiler gives each node's kernel time, so the layout glue an isolated graph needs (``ReorderInput`` /
``ReorderOutput`` around an NCHWc convolution) is left out: inside a network of aligned widths the blocked layout
flows from one convolution to the next without it. Sessions of one layer's grid points stay alive together and run
round-robin, so a change in machine load spreads over all of them (the interleaving of :func:`compare_latency`).
:class:`OrtMeasurer` does this in ONNX Runtime; ``slimkit.analysis._openvino.OpenVinoMeasurer`` in OpenVINO.

:func:`detect_step` reads a width sweep and returns the channel multiple at which time steps (e.g. 16 where MLAS
pads output channels to its NCHWc block on AVX-512, 8 on AVX2): measured, never assumed.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from slimkit._cpu import kernel_weight_bits, resolve_reduce_range

#: nodes an isolated graph needs only to convert layouts at its borders (not part of the layer's cost in a network)
LAYOUT_GLUE = frozenset({"ReorderInput", "ReorderOutput"})
#: nodes an isolated int8 graph needs only to take float NCHW in and give float NCHW out: inside a QDQ network one
#: quantized layer feeds the next directly (ORT fuses QuantizeLinear → DequantizeLinear → Conv → QuantizeLinear into
#: one channels-last QLinearConv, and transposes only at the network's borders), so they are not the layer's cost
INT8_BORDER = frozenset({"QuantizeLinear", "DequantizeLinear", "Transpose"})
#: the numeric formats a layer is timed in: fp32, or int8 as slimkit's QDQ export deploys it (uint8 activations per
#: tensor, int8 weights per output channel, int32 bias)
PRECISIONS = ("fp32", "int8")
#: candidate step sizes tried by :func:`detect_step`
STEP_CANDIDATES = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Geometry:
    """Everything about a layer that its latency depends on except its channel counts.

    ``kind`` is ``"conv"`` (dense or grouped Conv2d), ``"depthwise"`` (groups = channels; in and out channels move
    together) or ``"linear"``. ``size`` is the input's spatial size (H, W) for a conv and ``(rows,)`` for a linear
    layer (the product of every input dim between batch and features); ``batch`` is the batch timed; ``precision``
    is one of :data:`PRECISIONS`.
    """

    kind: str
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    size: tuple[int, ...] = ()
    batch: int = 1
    bias: bool = True
    precision: str = "fp32"

    def key(self) -> str:
        d = asdict(self)
        if self.precision == "fp32":  # the keys of tables measured before int8 tables existed stay valid
            del d["precision"]
        return "|".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, (tuple, list)) else v}" for k, v in d.items())

    def macs(self, cin: int, cout: int) -> int:
        if self.kind == "linear":
            return self.batch * self.size[0] * cin * cout
        out_h, out_w = self.output_size()
        per_out = (1 if self.kind == "depthwise" else cin // self.groups) * self.kernel[0] * self.kernel[1]
        return self.batch * cout * out_h * out_w * per_out

    def output_size(self) -> tuple[int, int]:
        (h, w), (kh, kw), (sh, sw), (dh, dw) = self.size, self.kernel, self.stride, self.dilation
        pt, pl, pb, pr = self.padding
        return ((h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1)


Point = tuple[int, int]


class Measurer(Protocol):
    """What :func:`slimkit.analysis.build_latency_table` times with; tests inject a fake."""

    def points(self, geometry: Geometry, points: Sequence[Point]) -> list[tuple[float, float]]:
        """(kernel, layout glue) milliseconds per call of the layer alone at each (in, out) channel count."""

    def other_share(self, onnx_path: str | os.PathLike, inputs: Sequence[np.ndarray],
                    table_ops: set[str]) -> tuple[float, float]:
        """The share of a whole network's run time spent outside the ops the table models (other kernels and the
        executor's own per-node work), and the part of it outside every kernel (the executor's work alone)."""


def _onnx_layer(geometry: Geometry, cin: int, cout: int, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A one-node ONNX model of the layer (or, for int8, the QDQ graph ONNX Runtime fuses into one quantized node) and
    a random input for it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    g = geometry
    if g.kind == "linear":
        shape_x = [g.batch * g.size[0], cin]
        weight = (rng.standard_normal((cout, cin)) * 0.1).astype(np.float32)
        inits = [numpy_helper.from_array(weight, "W")]
        inputs = ["X", "W"]
        if g.bias:
            inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "B"))
            inputs.append("B")
        node = helper.make_node("Gemm", inputs, ["Y"], transB=1)
        shape_y = [shape_x[0], cout]
    else:
        groups = cin if g.kind == "depthwise" else g.groups
        weight = (rng.standard_normal((cout, cin // groups, *g.kernel)) * 0.1).astype(np.float32)
        inits = [numpy_helper.from_array(weight, "W")]
        inputs = ["X", "W"]
        if g.bias:
            inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "B"))
            inputs.append("B")
        node = helper.make_node("Conv", inputs, ["Y"], kernel_shape=list(g.kernel), strides=list(g.stride),
                                pads=[g.padding[0], g.padding[1], g.padding[2], g.padding[3]],
                                dilations=list(g.dilation), group=groups)
        shape_x = [g.batch, cin, *g.size]
        shape_y = [g.batch, cout, *g.output_size()]
    nodes = [node]
    if g.precision == "int8":
        nodes, inits = _quantized(node, inits, rng)
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("X", TensorProto.FLOAT, shape_x)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shape_y)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="slimkit")
    model.ir_version = 8
    return model.SerializeToString(), rng.standard_normal(shape_x).astype(np.float32)


def _quantized(node: Any, inits: list, rng: np.random.Generator) -> tuple[list, list]:
    """The float layer ``node`` as slimkit's QDQ export writes it: X → QuantizeLinear → DequantizeLinear (uint8, per
    tensor), the weight as int8 per output channel and the bias as int32 behind DequantizeLinear, the output through
    QuantizeLinear → DequantizeLinear; ONNX Runtime fuses the middle into QLinearConv / QGemm."""
    from onnx import helper, numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in inits}
    weight = arrays["W"]
    cout = weight.shape[0]
    x_scale, y_scale = np.float32(8 / 255), np.float32(0.05)  # a unit-normal input spans about ±4
    qmax = 2 ** (kernel_weight_bits(8, 8, resolve_reduce_range(None)) - 1) - 1  # as QuantConfig() gives here
    w_scale = (np.abs(weight.reshape(cout, -1)).max(axis=1) / qmax).clip(1e-8).astype(np.float32)
    w_int8 = np.round(weight / w_scale.reshape(-1, *[1] * (weight.ndim - 1))).clip(-qmax, qmax).astype(np.int8)
    out = [numpy_helper.from_array(np.array(x_scale), "x_scale"),
           numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
           numpy_helper.from_array(np.array(y_scale), "y_scale"),
           numpy_helper.from_array(np.array(128, np.uint8), "y_zero"),
           numpy_helper.from_array(w_int8, "W_int8"), numpy_helper.from_array(w_scale, "W_scale"),
           numpy_helper.from_array(np.zeros(cout, np.int8), "W_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["X", "x_scale", "x_zero"], ["X_q"]),
             helper.make_node("DequantizeLinear", ["X_q", "x_scale", "x_zero"], ["X_dq"]),
             helper.make_node("DequantizeLinear", ["W_int8", "W_scale", "W_zero"], ["W_dq"], axis=0)]
    inputs = ["X_dq", "W_dq"]
    if "B" in arrays:
        out += [numpy_helper.from_array(np.zeros(cout, np.int32), "B_int32"),
                numpy_helper.from_array((x_scale * w_scale).astype(np.float32), "B_scale"),
                numpy_helper.from_array(np.zeros(cout, np.int32), "B_zero")]
        nodes.append(helper.make_node("DequantizeLinear", ["B_int32", "B_scale", "B_zero"], ["B_dq"], axis=0))
        inputs.append("B_dq")
    layer = helper.make_node(node.op_type, inputs, ["Y_float"])
    layer.attribute.extend(node.attribute)
    nodes += [layer, helper.make_node("QuantizeLinear", ["Y_float", "y_scale", "y_zero"], ["Y_q"]),
              helper.make_node("DequantizeLinear", ["Y_q", "y_scale", "y_zero"], ["Y"])]
    return nodes, out


def _session(model: bytes | str, threads: int, profile_prefix: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = profile_prefix
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _runs(path: str, skip: int) -> list[dict[str, float]]:
    """Per timed run (after ``skip`` warm-up runs): kernel milliseconds by op type, and under ``"<run>"`` the run's
    whole duration (executor overhead included), from an ORT profile file."""
    events = json.loads(Path(path).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session"
                  and e.get("name") == "model_run")
    nodes = sorted((e["ts"], e["dur"], e.get("args", {}).get("op_name", "?")) for e in events
                   if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"))
    out: list[dict[str, float]] = []
    i = 0
    for start, end in runs:
        ops: dict[str, float] = {"<run>": (end - start) / 1e3}
        while i < len(nodes) and nodes[i][0] < start:
            i += 1
        while i < len(nodes) and nodes[i][0] <= end:
            ops[nodes[i][2]] = ops.get(nodes[i][2], 0.0) + nodes[i][1] / 1e3
            i += 1
        out.append(ops)
    return out[skip:]


#: percentile of a layer's per-run kernel times taken as its time: the minimum, since preemption only adds time and
#: on a machine with more runnable jobs than cores a kernel longer than a time slice is often stretched 2× in most
#: runs (measured: a 3.7 ms conv took 7.7 ms in 80 % of 25 runs at load 12 on 2 cores)
QUANTILE = 0
#: the layer every chunk of measurements is timed against (a mid-size 3×3 conv, ~0.3 ms on one AVX-512 core)
REFERENCE = (Geometry("conv", (3, 3), (1, 1), (1, 1, 1, 1), size=(14, 14), batch=8), 32, 32)


class _OrtProbe:
    """One live ONNX Runtime session of a one-layer graph, profiled."""

    def __init__(self, model: bytes, x: np.ndarray, threads: int, prefix: str, border: frozenset[str]) -> None:
        self.session, self.feed, self.border = _session(model, threads, prefix), {"X": x}, border

    def run(self) -> None:
        self.session.run(None, self.feed)

    def times(self, skip: int) -> tuple[np.ndarray, np.ndarray]:
        """(kernel, layout glue) milliseconds of each run after the first ``skip``."""
        runs = _runs(self.session.end_profiling(), skip)
        return (np.array([sum(v for op, v in ops.items() if op not in LAYOUT_GLUE and op not in self.border
                              and op != "<run>") for ops in runs]),
                np.array([sum(v for op, v in ops.items() if op in LAYOUT_GLUE) for ops in runs]))


@dataclass
class ChunkedMeasurer:
    """Times one-layer graphs in live runtime instances (probes), chunk by chunk, against a reference layer.

    Noise on a shared machine is mostly preemption, which only ever adds time and hits a long kernel more often
    than a short one, so a layer's time is the fastest of its runs (:data:`QUANTILE`), not their median. The
    load also drifts between one layer's measurements and the next (CPU frequency, cache pressure), so every
    chunk of probes runs a fixed reference layer (:data:`REFERENCE`) too, all in a seeded random order per
    round, and a point's time is its fastest run ÷ the reference's fastest run in the same chunk, times
    ``reference_ms`` (the reference's time in the first chunk, or given, e.g. from a cache, so that tables built
    at different times share one scale). Only ratios between layers matter to a latency prediction. A runtime
    supplies :meth:`_probe` (one live instance of a one-layer graph) and :meth:`other_share`.
    """

    threads: int = 1
    repeats: int = 21
    warmup: int = 3
    live_sessions: int = 8
    seed: int = 0
    reference_ms: float | None = None
    #: the runtime this measurer times in (see :data:`slimkit._runtimes.RUNTIMES`)
    backend: ClassVar[str] = ""

    def _probe(self, model: bytes, x: np.ndarray, geometry: Geometry, prefix: str) -> Any:
        raise NotImplementedError

    def other_share(self, onnx_path: str | os.PathLike, inputs: Sequence[np.ndarray],
                    table_ops: set[str]) -> tuple[float, float]:
        raise NotImplementedError

    def points(self, geometry: Geometry, points: Sequence[Point]) -> list[tuple[float, float]]:
        result: list[tuple[float, float]] = [(math.nan, math.nan)] * len(points)
        ref_geometry, ref_in, ref_out = REFERENCE
        ref_model, ref_x = _onnx_layer(ref_geometry, ref_in, ref_out)
        with tempfile.TemporaryDirectory(prefix="slimkit-lattable-") as tmp:
            for chunk in range(0, len(points), self.live_sessions):
                idx = list(range(chunk, min(len(points), chunk + self.live_sessions)))
                probes = [self._probe(ref_model, ref_x, ref_geometry, str(Path(tmp) / f"ref{chunk}"))]
                for k in idx:
                    model, x = _onnx_layer(geometry, *points[k])
                    probes.append(self._probe(model, x, geometry, str(Path(tmp) / f"p{k}")))
                order = list(range(len(probes)))
                rng = random.Random(self.seed + chunk)
                for r in range(self.warmup + self.repeats):
                    if r >= self.warmup:
                        rng.shuffle(order)
                    for j in order:
                        probes[j].run()
                times = [probe.times(self.warmup) for probe in probes]
                ref = max(float(np.percentile(times[0][0], QUANTILE)), 1e-6)
                if self.reference_ms is None:
                    self.reference_ms = ref
                for j, k in enumerate(idx, start=1):
                    kernel, glue = times[j]
                    result[k] = (float(np.percentile(kernel, QUANTILE)) / ref * self.reference_ms,
                                 float(np.percentile(glue, QUANTILE)) / ref * self.reference_ms)
                del probes
        return result


@dataclass
class OrtMeasurer(ChunkedMeasurer):
    """Times layers and networks in ONNX Runtime with its profiler (see the module docstring and
    :class:`ChunkedMeasurer`)."""

    backend: ClassVar[str] = "onnxruntime"

    def _probe(self, model: bytes, x: np.ndarray, geometry: Geometry, prefix: str) -> Any:
        return _OrtProbe(model, x, self.threads, prefix, INT8_BORDER if geometry.precision == "int8"
                         else frozenset())

    def other_share(self, onnx_path: str | os.PathLike, inputs: Sequence[np.ndarray],
                    table_ops: set[str]) -> tuple[float, float]:
        with tempfile.TemporaryDirectory(prefix="slimkit-latnet-") as tmp:
            session = _session(str(onnx_path), self.threads, str(Path(tmp) / "net"))
            feed = {i.name: x for i, x in zip(session.get_inputs(), inputs)}
            for _ in range(self.warmup + self.repeats):
                session.run(None, feed)
            runs = _runs(session.end_profiling(), self.warmup)
        other, outside = [], []
        for ops in runs:
            run = max(ops["<run>"], 1e-12)
            other.append(1.0 - sum(v for op, v in ops.items() if op in table_ops) / run)
            outside.append(1.0 - sum(v for op, v in ops.items() if op != "<run>") / run)
        share = float(np.clip(np.median(other), 0.0, 0.95))
        return share, float(np.clip(np.median(outside), 0.0, share))


def detect_step(widths: Sequence[int], ms: Sequence[float], *, margin: float = 0.05,
                coverage: float = 0.8) -> int:
    """The channel step of a kernel, read from a sweep of widths 1..N (the largest valid s in
    :data:`STEP_CANDIDATES` with N ≥ 2·s).

    s is valid when keeping a width between two multiples of s buys nothing: at least ``coverage`` of the widths
    strictly between multiples cost at least the straight line between the neighbouring multiples (less
    ``margin``): a padded block (MLAS pads NCHWc output channels) or a slower fallback (unaligned NCHWc input
    channels). And the midpoints (multiples of s/2) cost clearly more than that line (by ``margin``, for two
    thirds of them): otherwise the finer widths are as efficient as the multiples, and a coarser s would only
    throw away choices (a kernel whose time is linear in the width has step 1); a step needs two midpoints at least
    (OpenVINO's 16-channel staircase read as 32 from its one midpoint at 48 in a 64-wide sweep). The first block is
    left out: below one block MLAS reads NCHW input directly, a different regime.
    """
    table = dict(zip(widths, ms))
    best = 1
    for s in STEP_CANDIDATES[1:]:
        if max(widths) < 2 * s:
            break

        def line(w: int, s: int = s) -> float | None:
            lo, hi = w // s * s, w // s * s + s
            if lo < s or lo not in table or hi not in table:
                return None
            return table[lo] + (table[hi] - table[lo]) * (w - lo) / s

        inner = [(w, ref) for w in widths if w % s and (ref := line(w)) is not None]
        half = [(w, ref) for w, ref in inner if w % max(1, s // 2) == 0]
        if not inner or len(half) < 2:  # one midpoint alone would let a single noisy time decide the step
            continue
        no_better = sum(table[w] >= (1 - margin) * ref for w, ref in inner) >= coverage * len(inner)
        worse = 3 * sum(table[w] >= (1 + margin) * ref for w, ref in half) >= 2 * len(half)
        if no_better and worse:
            best = s
    return best


#: the layers swept to find each kind's steps: (geometry, sweep length, fixed other channel count)
PROBES: dict[str, tuple[Geometry, int, int]] = {
    "conv": (Geometry("conv", (3, 3), (1, 1), (1, 1, 1, 1), size=(14, 14), batch=8), 64, 64),
    "depthwise": (Geometry("depthwise", (3, 3), (1, 1), (1, 1, 1, 1), size=(28, 28), batch=8), 64, 0),
    "linear": (Geometry("linear", size=(1,), batch=256), 64, 512),
}


#: sweeps per probe in :func:`probe_steps`, their times taken point by point at the fastest: one sweep in OpenVINO
#: read its convolutions' input step as 1 in two of three runs and as 32 in the third (preemption hits single points)
STEP_SWEEPS = 3


def probe_steps(kind: str, measurer: Measurer, precision: str = "fp32", sweeps: int = STEP_SWEEPS) -> dict[str, int]:
    """Steps of ``kind`` along the output and input channels, from ``sweeps`` sweeps of a probe layer
    (:data:`PROBES`) in ``precision``, each width at its fastest."""
    geometry, n, fixed = PROBES[kind]
    geometry = replace(geometry, precision=precision)
    widths = list(range(1, n + 1))

    def kernel(points: list[Point]) -> list[float]:
        runs = [[k for k, _ in measurer.points(geometry, points)] for _ in range(sweeps)]
        return [min(times) for times in zip(*runs)]

    if kind == "depthwise":
        step = detect_step(widths, kernel([(w, w) for w in widths]))
        return {"in": step, "out": step}
    return {"out": detect_step(widths, kernel([(fixed, w) for w in widths])),
            "in": detect_step(widths, kernel([(w, fixed) for w in widths]))}
