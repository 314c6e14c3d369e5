"""OpenVINO's CPU runtime as a place to time models: compiled models for latency comparisons, and layer probes for
latency tables.

Every model is compiled as a deployment runs it (:func:`openvino_compiled`): ``threads`` inference threads, one
stream, no core pinning (on a shared machine a pinned thread waits for its core), and fp32 float arithmetic.
OpenVINO's own default on a CPU with AVX512-BF16 or AMX is bfloat16, which changes a model's numbers (a small CNN's
logits moved by 1.4e-3 here), so it would time another model than the one deployed in fp32; a bf16 deployment is a
precision choice to measure on its own. Int8 (QDQ) models still run their quantized layers in int8.

Layer times come from OpenVINO's performance counters, which hold each node's mean since compilation (not the last
inference's), each run's time floored to a whole microsecond before it is added: a node's mean over the timed runs is
the difference of its totals after the warm-up and at the end, half a microsecond low on average, which a layer's
time gets back (:data:`FLOOR_BIAS_MS`); a network's other ops keep it (a network of 100 µs kernels does not feel it).
Layout conversions at a one-layer graph's borders (``Reorder`` nodes) are its layout glue, as ONNX Runtime's
``ReorderInput``/``ReorderOutput`` are.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from slimkit._errors import ConfigError, UnsupportedModelError
from slimkit._runtimes import require_runtime
from slimkit.analysis._latency_probe import ChunkedMeasurer, Geometry

#: OpenVINO CPU node types that only convert layouts (a one-layer graph's borders)
OPENVINO_GLUE = frozenset({"Reorder"})
#: how OpenVINO's error texts begin lines that only locate the error in its sources
_LOCATION_LINES = ("Exception from ", "Check '")


@functools.cache
def openvino_core() -> Any:
    """OpenVINO's runtime core (one per process), or a :class:`ConfigError` saying how to install it."""
    require_runtime("openvino", "backend")
    import openvino

    return openvino.Core()


def openvino_compiled(core: Any, model: Any, threads: int, *, profile: bool = False) -> Any:
    """``model`` (a path, or an ``openvino.Model``) compiled for this CPU as the module docstring says; ``profile``
    turns on per-node performance counters."""
    return core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                             "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
                                             "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": profile})


def _reason(error: Exception) -> str:
    """What went wrong, from an OpenVINO error text (its source-location lines left out)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(_LOCATION_LINES)] or lines or [type(error).__name__]
    return " ".join(said)[:400]


def _compiled_or_refused(model: Any, threads: int, *, profile: bool = False) -> Any:
    """:func:`openvino_compiled` on this process's core, an :class:`UnsupportedModelError` naming the reason when
    OpenVINO cannot compile ``model`` (a path, or an ``openvino.Model`` of one layer)."""
    try:
        return openvino_compiled(openvino_core(), model, threads, profile=profile)
    except Exception as error:  # OpenVINO raises its own types (e.g. an op it does not implement)
        where = model if isinstance(model, str) else "a layer"
        raise UnsupportedModelError(f"OpenVINO cannot run {where}: {_reason(error)}: measure this model's latency in "
                                    "onnxruntime (--runtime onnxruntime)") from None


def openvino_runner(path: str | os.PathLike, inputs: tuple[torch.Tensor, ...], threads: int) -> Callable[[], object]:
    """One compiled model of the ONNX file at ``path``, as a zero-argument call on ``inputs``. The inputs are
    shared with OpenVINO, not copied into it on every call (ONNX Runtime reads a numpy input in place too)."""
    compiled = _compiled_or_refused(str(path), threads)
    if len(compiled.inputs) != len(inputs):
        raise ConfigError(f"{path} takes {len(compiled.inputs)} input(s) but {len(inputs)} example input(s) were "
                          "given: pass one tensor per model input")
    request = compiled.create_infer_request()
    feed = {k: np.ascontiguousarray(t.detach().cpu().numpy()) for k, t in enumerate(inputs)}

    def run() -> object:
        return request.infer(feed, share_inputs=True, share_outputs=True)

    return run


def _node_totals(request: Any, runs: int) -> dict[str, float]:
    """Milliseconds spent so far in each executed node type (the counters' means times the runs)."""
    totals: dict[str, float] = {}
    for node in request.profiling_info:
        if node.status.name == "EXECUTED":
            totals[node.node_type] = totals.get(node.node_type, 0.0) + node.real_time.total_seconds() * 1e3 * runs
    return totals


def _timed_means(request: Any, before: dict[str, float], runs: int, skip: int) -> dict[str, float]:
    """Each executed node type's mean milliseconds over runs ``skip`` + 1 … ``runs`` (never below 0: the counters'
    rounding can make a microsecond kernel's difference negative)."""
    totals = _node_totals(request, runs)
    return {op: max(0.0, (ms - before.get(op, 0.0)) / max(runs - skip, 1)) for op, ms in totals.items()}


class _Counted:
    """A compiled model's request with performance counters, its per-inference latencies, and its counter totals
    after the warm-up (the module docstring)."""

    def __init__(self, request: Any, feed: dict[int, np.ndarray], warmup: int) -> None:
        self.request, self.feed, self.warmup = request, feed, warmup
        self.latencies: list[float] = []
        self.after_warmup: dict[str, float] = {}

    def run(self) -> None:
        self.request.infer(self.feed, share_inputs=True, share_outputs=True)
        self.latencies.append(float(self.request.latency))
        if len(self.latencies) == self.warmup:
            self.after_warmup = _node_totals(self.request, self.warmup)

    def timed(self) -> tuple[dict[str, float], np.ndarray]:
        """(mean milliseconds per node type, each run's latency) over the runs after the warm-up."""
        return (_timed_means(self.request, self.after_warmup, len(self.latencies), self.warmup),
                np.asarray(self.latencies[self.warmup:], dtype=np.float64))


#: what flooring every run's node time to a whole microsecond takes off a node's timed mean, on average
FLOOR_BIAS_MS = 0.0005


class _OpenVinoProbe(_Counted):
    """One compiled one-layer graph. Its kernel and glue are the counters' timed means (the layer's node, half a
    microsecond added back for the flooring: a kernel under a microsecond would read as nothing), and as with ONNX
    Runtime the fastest run stands for the layer: each run's share of the timed mean is its own latency over the timed
    runs' mean latency (the counters cannot give single runs). Timing the layer by its latency less an empty
    inference's instead over-predicted ResNet-20 pruned to its narrowest widths (0.80 predicted, 0.54 measured):
    an inference's own costs grow with its tensors."""

    def times(self, skip: int) -> tuple[np.ndarray, np.ndarray]:
        means, latency = self.timed()
        kernel = sum(ms for op, ms in means.items() if op not in OPENVINO_GLUE) + FLOOR_BIAS_MS
        glue = sum(ms for op, ms in means.items() if op in OPENVINO_GLUE)
        scale = latency / max(float(latency.mean()), 1e-12) if latency.size else np.ones(1)
        return scale * kernel, scale * glue


@dataclass
class OpenVinoMeasurer(ChunkedMeasurer):
    """:class:`~slimkit.analysis.OrtMeasurer`'s method in OpenVINO's CPU runtime (module docstring): each layer a
    one-node graph, interleaved with the reference layer, timed from the performance counters. fp32 only."""

    backend: ClassVar[str] = "openvino"

    def _compiled_request(self, model: Any) -> Any:
        return _compiled_or_refused(model, self.threads, profile=True).create_infer_request()

    def _probe(self, model: bytes, x: np.ndarray, geometry: Geometry, prefix: str) -> Any:
        if geometry.precision != "fp32":
            raise ValueError("OpenVinoMeasurer times fp32 layers only")
        return _OpenVinoProbe(self._compiled_request(openvino_core().read_model(model)), {0: x}, self.warmup)

    def other_share(self, onnx_path: str | os.PathLike, inputs: Sequence[np.ndarray],
                    table_ops: set[str]) -> tuple[float, float]:
        network = _Counted(self._compiled_request(str(onnx_path)), dict(enumerate(inputs)), self.warmup)
        for _ in range(self.warmup + self.repeats):
            network.run()
        means, latency = network.timed()
        run = max(float(latency.mean()), 1e-12)
        share = float(np.clip(1.0 - sum(ms for op, ms in means.items() if op in table_ops) / run, 0.0, 0.95))
        return share, float(np.clip(1.0 - sum(means.values()) / run, 0.0, share))
