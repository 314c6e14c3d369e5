"""A latency model of the target runtime: per-layer lookup tables over channel counts, cached per machine.

NetAdapt (Yang et al., ECCV 2018, §3.3) and HALP (Shen et al., NeurIPS 2022, §3.2) predict a pruned network's
latency as the sum of its layers' latencies, each read from a table measured on the target device over a grid of
input and output channel counts. :func:`build_latency_table` does this for ONNX Runtime on this CPU: it finds every
Conv2d and Linear layer with its real input size (one forward of the example input), measures each layer alone at
the batch and thread count that will be deployed (:mod:`._latency_probe`), and records the share of the network's
time spent in everything else (pooling, additions, layout glue) from one profiled run of the whole network. Of that
share, the executor's own work between kernels (``fixed``) stays as channels go; the other ops' kernels (additions,
activations, pooling, layout conversions) read and write the layers' outputs, so they shrink with them:

    predicted ratio = (1 − other) · Σ_l T_l(c_in_l, c_out_l) / Σ_l T_l(full)
                      + (other − fixed) · Σ_l c_out_l · A_l / Σ_l c_out_l(full) · A_l + fixed,

with A_l the output area of layer l (its spatial size, or a linear layer's rows). Held constant, the other share
over-predicted ResNet-20 pruned 75 % (28×28, batch 64) by about 0.04 of the original's time: its additions,
slices and layout conversions took 2.9 ms at full width and 1.1 ms pruned (ONNX Runtime's profiler, this machine).

Channel counts are measured only where the kernel's time steps: a sweep per layer kind finds the step (16 output
channels for MLAS's NCHWc convolutions on AVX-512), and each layer's grid holds multiples of it (at most
``max_points`` per axis, linear in between); a width between two multiples costs what the next multiple up costs,
which is how the kernel pads it. Below one step a layer runs in a different regime (MLAS reads fewer input
channels than one block straight from NCHW memory), so input widths of a quarter, half and three quarters of a
step are measured too, with the layout conversion such a layer needs in a network (its producer's blocked output
turned back into NCHW) counted in; above one step the isolated graph's conversions are left out, since inside a
network of aligned widths the blocked layout flows from layer to layer.

``precision="int8"`` builds the same tables for the model as slimkit's QDQ export deploys it: each layer is timed
as the QDQ graph ONNX Runtime fuses into a channels-last QLinearConv / QGemm (its border QuantizeLinear,
DequantizeLinear and Transpose nodes left out, since inside the network one quantized layer feeds the next), with
the int8 kernels' own steps, and the other share read from the deployed int8 file (its float layers, if any, count
as tabled layers, not as other time). The int8 kernels are separate code with their own blocking, so their time
does not follow the fp32 time as widths shrink: ResNet-20's 3×3 convs at 28×28, batch 64, took as long in int8 at
8 or 11 channels as at 16 or longer (measured on this machine), where fp32 time halves.

``widths`` adds the widths a search will choose to a layer's grid; those are read exactly and never interpolated
through (interpolation runs over the step grid alone).

``backend="openvino"`` builds the same tables in OpenVINO's CPU runtime (fp32, :class:`OpenVinoMeasurer`): its
convolutions (oneDNN's, channels-last inside the graph) have their own steps, found by the same sweeps, and its
border ``Reorder`` nodes are the layout glue. OpenVINO fuses a convolution's activation and residual addition into
the convolution's node, so less of its time is "other".

Measurements are cached in ``$SLIMKIT_CACHE/latency`` (default ``~/.cache/slimkit/latency``), one file per machine key
(CPU model and flags, the runtime and its version, threads, cache version), keyed inside by the layer's geometry (kind,
kernel, stride, padding, dilation, groups, input size, batch, and precision when not fp32) and channel counts; a
network's other share by its layers' shapes and batch (and for int8, the deployed file's bytes).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit import _io
from slimkit._cpu import cpu_info
from slimkit._errors import ConfigError
from slimkit._inputs import input_tuple
from slimkit._io import write_text_atomic
from slimkit._runtimes import DEFAULT_RUNTIME, require_runtime
from slimkit.analysis._latency_probe import PRECISIONS, ChunkedMeasurer, Geometry, Measurer, OrtMeasurer, probe_steps
from slimkit.analysis._openvino import OpenVinoMeasurer

log = logging.getLogger(__name__)

CACHE_VERSION = 6  # 6: int8 layers (their border Transposes left out)
#: ONNX Runtime op types whose time the table models (every other op's time is in the "other" share)
TABLE_OPS = frozenset({"Conv", "FusedConv", "NchwcConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"})
#: the same for an int8 QDQ network, whose quantized layers ONNX Runtime runs as these fused nodes
INT8_TABLE_OPS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "ConvInteger",
                            "MatMulInteger"})
#: the same for OpenVINO's CPU runtime (its node types; a convolution's fused activation and residual add run inside
#: its node there)
OPENVINO_TABLE_OPS = frozenset({"Convolution", "GroupConvolution", "FullyConnected", "MatMul"})
#: per runtime a table can be measured in: its measurer, the op types its tables model, the precisions it times
TABLE_RUNTIMES: dict[str, tuple[type[ChunkedMeasurer], frozenset[str], tuple[str, ...]]] = {
    "onnxruntime": (OrtMeasurer, TABLE_OPS, PRECISIONS),
    "openvino": (OpenVinoMeasurer, OPENVINO_TABLE_OPS, ("fp32",)),
}


def cache_root() -> Path:
    """``$SLIMKIT_CACHE/latency``."""
    return _io.cache_root() / "latency"


def machine_key(threads: int, backend: str = DEFAULT_RUNTIME) -> dict[str, Any]:
    """What a cached measurement depends on besides the layer: CPU, the runtime and its version, threads (the
    runtime's name is the key of its version, so each runtime's tables live in their own cache file)."""
    import importlib

    package = require_runtime(backend, "latency table backend").package
    cpu = cpu_info()
    flags = " ".join(sorted(cpu.flags or ()))
    digest = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return {"cpu": cpu.name, "cpu_flags": digest, backend: importlib.import_module(package).__version__,
            "threads": threads, "cache_version": CACHE_VERSION}


@dataclass(frozen=True)
class LayerLatency:
    """One layer's measured latency surface: ``ms[i][j]`` at ``in_grid[i]`` input and ``out_grid[j]`` output
    channels (a depthwise layer: ``in_grid == out_grid`` and only the diagonal is measured). ``in_base`` /
    ``out_base``: the widths of the step grid, the only ones interpolated between (empty: the whole grid); the
    others were measured because a search may choose them, and are read exactly, never interpolated through (an
    off-step width can run a slower fallback that says nothing of its neighbours)."""

    name: str
    geometry: Geometry
    in_channels: int
    out_channels: int
    in_grid: tuple[int, ...]
    out_grid: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]
    step_in: int
    step_out: int
    in_base: tuple[int, ...] = ()
    out_base: tuple[int, ...] = ()

    def snap(self, width: int, side: str) -> int:
        """The largest width ≤ ``width`` at which the kernel's time steps: the full width, a multiple of the
        measured step, or below one step a multiple of a quarter step (at least 1)."""
        full, step = (self.in_channels, self.step_in) if side == "in" else (self.out_channels, self.step_out)
        if width >= full:
            return full
        if width >= step:
            return width // step * step
        quarter = max(1, step // 4)
        return max(min(quarter, full), width // quarter * quarter)

    def _up(self, width: int, side: str) -> int:
        full, step = (self.in_channels, self.step_in) if side == "in" else (self.out_channels, self.step_out)
        width = max(width, 1)
        if width in (self.in_grid if side == "in" else self.out_grid):
            return width  # measured: its own time, whatever the kernel does off its steps
        unit = step if width > step else max(1, step // 4)
        return min(full, math.ceil(width / unit) * unit)

    def cost(self, cin: int, cout: int) -> float:
        """Milliseconds at (cin, cout): a measured width as measured, any other rounded up to the step and linear
        between the step grid's points."""
        cin, cout = self._up(cin, "in"), self._up(cout, "out")
        grid = np.asarray(self.ms, dtype=np.float64)

        def along(width: int, widths: tuple[int, ...], base: tuple[int, ...], values: np.ndarray) -> float:
            if width in widths:
                return float(values[widths.index(width)])
            keep = [i for i, w in enumerate(widths) if not base or w in base]
            return float(np.interp(width, [widths[i] for i in keep], values[keep]))

        if self.geometry.kind == "depthwise":
            return along(cout, self.out_grid, self.out_base, np.diag(grid))
        if cin in self.in_grid:
            return along(cout, self.out_grid, self.out_base, grid[self.in_grid.index(cin)])
        rows = np.array([along(cout, self.out_grid, self.out_base, grid[i]) for i in range(len(self.in_grid))])
        return along(cin, self.in_grid, self.in_base, rows)

    @property
    def full_ms(self) -> float:
        return self.cost(self.in_channels, self.out_channels)


@dataclass
class LatencyTable:
    """Per-layer latency tables of one model at one batch and thread count, and the share of its time that the
    tables do not model (``other``). :meth:`predict_ratio` is the model's predicted latency at given widths as a
    fraction of its full-width latency."""

    layers: dict[str, LayerLatency]
    other: float
    batch: int
    threads: int
    machine: dict[str, Any] = field(default_factory=dict)
    measured_points: int = 0
    #: the part of ``other`` outside every kernel (the executor's own work), which does not shrink with the
    #: layers' outputs; None: all of it (a constant other share)
    other_fixed: float | None = None
    #: the runtime measured: "onnxruntime" or "openvino"
    backend: str = DEFAULT_RUNTIME

    def predict_ms(self, widths: Mapping[str, tuple[int, int]] | None = None) -> float:
        """Σ of the layer tables at ``widths`` (layer → (in, out) channels; absent layers at full width)."""
        widths = widths or {}
        return sum(t.cost(*widths.get(name, (t.in_channels, t.out_channels))) for name, t in self.layers.items())

    def predict_ratio(self, widths: Mapping[str, tuple[int, int]] | None = None) -> float:
        """The predicted latency at ``widths`` as a fraction of the full-width model's (module docstring)."""
        widths = widths or {}
        return self.fixed_share + sum(self.layer_share(name, *widths.get(name, (t.in_channels, t.out_channels)))
                                      for name, t in self.layers.items())

    @property
    def fixed_share(self) -> float:
        """The share of the full model's time that no width changes."""
        return self.other if self.other_fixed is None else min(self.other_fixed, self.other)

    def layer_share(self, name: str, cin: int, cout: int) -> float:
        """Layer ``name``'s part of :meth:`predict_ratio` at (cin, cout): its own time, and the other ops' time
        over the outputs it writes."""
        layer = self.layers[name]
        own = (1.0 - self.other) * layer.cost(cin, cout) / self._full[0]
        return own + self.other_over(name) * cout / layer.out_channels

    def other_over(self, name: str) -> float:
        """The share of the full model's time that other ops spend over layer ``name``'s outputs at full width
        (normalisation, activation, residual adds, quantize / dequantize: it shrinks with the output channels)."""
        return (self.other - self.fixed_share) * self.output_share(name)

    def output_share(self, name: str) -> float:
        """Layer ``name``'s share of the values all the tabled layers write at full width."""
        layer = self.layers[name]
        return layer.out_channels * _output_area(layer.geometry) / self._full[1]

    @functools.cached_property
    def _full(self) -> tuple[float, float]:
        # the full model's summed layer time and output size (each layer's output channels times its area)
        outputs = sum(t.out_channels * _output_area(t.geometry) for t in self.layers.values())
        return max(self.predict_ms(), 1e-12), max(float(outputs), 1e-12)

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "threads": self.threads, "other": self.other, "other_fixed": self.other_fixed,
                "backend": self.backend, "machine": self.machine,
                "measured_points": self.measured_points,
                "layers": {n: {"in": t.in_channels, "out": t.out_channels, "step_in": t.step_in,
                               "step_out": t.step_out, "in_grid": list(t.in_grid), "out_grid": list(t.out_grid),
                               "in_base": list(t.in_base), "out_base": list(t.out_base),
                               "ms": [list(r) for r in t.ms], "geometry": t.geometry.key()}
                           for n, t in self.layers.items()}}


def _output_area(geometry: Geometry) -> int:
    """Output values per channel and sample: a convolution's output height × width, a linear layer's rows."""
    if geometry.kind == "linear":
        return int(geometry.size[0])
    h, w = geometry.output_size()
    return h * w


@dataclass(frozen=True)
class _Layer:
    name: str
    geometry: Geometry
    cin: int
    cout: int


def _pads(module: nn.Conv2d) -> tuple[int, int, int, int]:
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0, 0, 0)
        total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        return (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
    ph, pw = module.padding
    return (ph, pw, ph, pw)


def model_layers(model: nn.Module, example_inputs: Any, batch: int | None = None) -> list[_Layer]:
    """Every Conv2d and Linear layer of ``model`` with the geometry it runs at (one forward of the example)."""
    inputs = input_tuple(example_inputs)
    found: dict[str, _Layer] = {}
    hooks = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple, _out: Any) -> None:
            x = args[0]
            b = batch or int(x.shape[0])
            if isinstance(module, nn.Conv2d):
                depthwise = module.groups > 1 and module.groups == module.in_channels
                geometry = Geometry("depthwise" if depthwise else "conv", tuple(module.kernel_size),
                                    tuple(module.stride), _pads(module), tuple(module.dilation),
                                    1 if depthwise else module.groups, tuple(x.shape[-2:]), b, module.bias is not None)
                found.setdefault(name, _Layer(name, geometry, module.in_channels, module.out_channels))
            else:
                rows = int(np.prod(x.shape[1:-1])) if x.dim() > 2 else 1
                geometry = Geometry("linear", size=(rows,), batch=b, bias=module.bias is not None)
                found.setdefault(name, _Layer(name, geometry, module.in_features, module.out_features))
        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in was_training:
            m.training = mode
    return list(found.values())


def _grid(full: int, step: int, max_points: int, multiple: int = 1, below: bool = False) -> tuple[int, ...]:
    """Multiples of the step up to the full width (at most ``max_points``, spread evenly, always the ends); with
    ``below``, also a quarter, half and three quarters of a step (their own regime, see the module docstring)."""
    unit = step * multiple // math.gcd(step, multiple)
    widths = [*range(unit, full, unit), full]
    if len(widths) > max_points:
        idx = np.unique(np.round(np.linspace(0, len(widths) - 1, max_points)).astype(int))
        widths = [widths[i] for i in idx]
    if below and step >= 4:
        quarter = step // 4
        widths = sorted({*widths, *(q for q in (quarter, 2 * quarter, 3 * quarter)
                                    if q < min(full, unit) and q % multiple == 0)})
    return tuple(widths)


def _with(grid: tuple[int, ...], extra: Sequence[int], full: int, multiple: int) -> tuple[int, ...]:
    """``grid`` and the valid ``extra`` widths (1..full, whole groups of a grouped conv), sorted."""
    return tuple(sorted({*grid, *(int(w) for w in extra if 1 <= w <= full and w % multiple == 0)}))


class _Cache:
    def __init__(self, folder: Path | None, machine: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]
        self.path = None if folder is None else folder / f"{digest}.json"
        self.data: dict[str, Any] = {"machine": machine, "steps": {}, "layers": {}, "models": {}}
        if self.path is not None and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
                if isinstance(loaded, dict) and loaded.get("machine") == machine:
                    kept = _valid_entries(loaded)
                    self.data.update(kept)
                    if kept != {k: loaded.get(k, {}) for k in kept}:
                        log.warning("latency cache %s has damaged entries: measuring those again", self.path)
            except (OSError, ValueError):
                log.warning("latency cache %s is unreadable: measuring again", self.path)
        self.dirty = False

    def save(self) -> None:
        if self.path is not None and self.dirty:
            write_text_atomic(self.path, json.dumps(self.data, sort_keys=True))


def _valid_entries(loaded: dict[str, Any]) -> dict[str, Any]:
    """The entries of a cache file that have the form this module writes (a damaged or edited entry is dropped and
    measured again, never read into a table): steps {"in": n, "out": n} with n ≥ 1, points "cin,cout" → two
    finite times ≥ 0, models → (other share, fixed share) in [0, 1], a positive reference time."""
    def time(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    def point(key: Any, v: Any) -> bool:
        head, _, tail = key.partition(",") if isinstance(key, str) else ("", "", "")
        return (head.isdigit() and tail.isdigit() and isinstance(v, list) and len(v) == 2
                and all(time(t) for t in v))

    def table(v: Any) -> dict[str, Any]:
        return v if isinstance(v, dict) else {}

    out: dict[str, Any] = {
        "steps": {k: v for k, v in table(loaded.get("steps")).items()
                  if isinstance(v, dict) and set(v) == {"in", "out"}
                  and all(type(n) is int and n >= 1 for n in v.values())},
        "layers": {k: {p: t for p, t in v.items() if point(p, t)} for k, v in table(loaded.get("layers")).items()
                   if isinstance(v, dict)},
        "models": {k: v for k, v in table(loaded.get("models")).items()
                   if isinstance(v, list) and len(v) == 2 and all(time(t) and t <= 1 for t in v)},
    }
    reference = loaded.get("reference_ms")
    if time(reference) and reference > 0:
        out["reference_ms"] = float(reference)
    return out


def _model_key(model: nn.Module, inputs: tuple, batch: int) -> str:
    parts = [(n, type(m).__name__, [tuple(p.shape) for p in m.parameters(recurse=False)])
             for n, m in model.named_modules()]
    parts.append([tuple(x.shape[1:]) for x in inputs if isinstance(x, torch.Tensor)])
    return hashlib.sha256(repr((parts, batch)).encode()).hexdigest()[:20]


def build_latency_table(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    batch: int | None = None,
    threads: int = 1,
    max_points: int = 6,
    cache_dir: str | os.PathLike | bool | None = True,
    measurer: Measurer | None = None,
    precision: str = "fp32",
    network: str | os.PathLike | None = None,
    widths: Mapping[str, tuple[Sequence[int], Sequence[int]]] | None = None,
    backend: str = DEFAULT_RUNTIME,
) -> LatencyTable:
    """Measure (or load from the cache) the latency table of every Conv2d/Linear layer of ``model``.

    ``batch``: the batch the model will run at (default: the example's); ``threads``: threads per runtime session;
    ``max_points``: grid points per channel axis; ``cache_dir``: True for ``$SLIMKIT_CACHE/latency``, a folder, or
    False/None for no cache; ``measurer``: what times layers (default: the backend's, :class:`OrtMeasurer`; tests
    inject one; a measurer of another runtime than ``backend`` is refused, as its times would be cached as the
    backend's).
    ``precision="int8"`` times every layer as the QDQ export deploys it (fused into QLinearConv / QGemm: its own
    kernels, whose time does not follow the fp32 one — at 28×28, below 16 channels an int8 conv can be slower than at
    16), with its own steps; the share of time outside the layers is then read from ``network``, the deployed int8 ONNX
    file of ``model``. NetAdapt's layer-wise look-up tables (Yang et al. 2018, §3.3) with HALP's per-(c_in, c_out) grid
    (Shen et al. 2022, Eq. 4), measured in ONNX Runtime (or ``backend``); see the module docstring for what is cached
    and how it is keyed. ``widths`` (layer → input widths, output widths) adds the widths a search will choose to the
    grids: those are then read as measured rather than from their step, which matters where the kernel does not pad but
    falls back to a slower path off its steps (int8 convs at 12 of 16 output channels measured twice the time of 16).
    ``backend="openvino"`` measures in OpenVINO's CPU runtime instead (fp32;
    :class:`~slimkit.analysis.OpenVinoMeasurer`), cached apart from ONNX Runtime's tables.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"latency table precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    if backend not in TABLE_RUNTIMES:
        raise ConfigError(f"latency table backend={backend!r}: use one of {', '.join(TABLE_RUNTIMES)}")
    measurer_type, table_ops, precisions = TABLE_RUNTIMES[backend]
    if precision not in precisions:
        raise ConfigError(f"an {precision} latency table is measured in ONNX Runtime (slimkit's QDQ export): use "
                          f"backend='onnxruntime', or precision={precisions[0]!r} for {backend}")
    timed_in = getattr(measurer, "backend", backend)  # a measurer that does not say (a test's fake) is taken as given
    if timed_in != backend:
        raise ConfigError(f"the measurer given times in {timed_in} but the table is for backend={backend!r}: "
                          f"pass backend={timed_in!r}, or a measurer of {backend}")
    require_runtime(backend, "latency table backend")
    if precision != "fp32" and network is None:
        raise ConfigError(f"a {precision} latency table needs network=<the model's deployed {precision} ONNX file>, "
                          "to measure the share of time spent outside its layers")
    if network is not None and not Path(network).is_file():
        raise ConfigError(f"latency table network='{network}' is not a file: give the deployed ONNX file")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"latency table threads={threads!r}: use a whole number ≥ 1")
    if max_points < 2:
        raise ConfigError(f"latency table max_points={max_points}: use at least 2 grid points per axis")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ConfigError(f"latency table batch={batch!r}: use a whole number ≥ 1 (the deployed batch)")
    inputs = input_tuple(example_inputs)
    batch = batch or int(inputs[0].shape[0])
    measurer = measurer or measurer_type(threads=threads)
    folder = cache_root() if cache_dir is True else (Path(cache_dir) if cache_dir else None)
    cache = _Cache(folder, machine_key(threads, backend))
    if getattr(measurer, "reference_ms", False) is None and "reference_ms" in cache.data:
        measurer.reference_ms = cache.data["reference_ms"]  # one scale for every table built on this machine
    layers = model_layers(model, inputs, batch)
    counted = {"points": 0}

    def steps(kind: str) -> dict[str, int]:
        key = kind if precision == "fp32" else f"{kind}/{precision}"
        if key not in cache.data["steps"]:
            cache.data["steps"][key] = probe_steps(kind, measurer, precision)
            cache.dirty = True
            log.info("latency table: %s kernels step at %s channels", key, cache.data["steps"][key])
        return cache.data["steps"][key]

    tables: dict[str, LayerLatency] = {}
    for layer in layers:
        g = replace(layer.geometry, precision=precision)
        s = steps(g.kind)
        multiple = g.groups if g.kind == "conv" else 1
        below = layer.cin >= s["in"]  # a layer whose full input is below one block always reads NCHW input
        in_base = _grid(layer.cin, s["in"], max_points, multiple, below=below)
        out_base = _grid(layer.cout, s["out"], max_points, multiple)
        extra_in, extra_out = widths.get(layer.name, ((), ())) if widths else ((), ())
        in_grid = _with(in_base, extra_in, layer.cin, multiple)
        out_grid = _with(out_base, extra_out, layer.cout, multiple)
        if g.kind == "depthwise":
            in_base = out_base = _grid(layer.cout, max(s["in"], s["out"]), max_points, below=below)
            in_grid = out_grid = _with(in_base, (*extra_in, *extra_out), layer.cout, 1)
            wanted = [(c, c) for c in out_grid]
        else:
            wanted = [(ci, co) for ci in in_grid for co in out_grid]
        stored = cache.data["layers"].setdefault(g.key(), {})
        missing = [p for p in wanted if f"{p[0]},{p[1]}" not in stored]
        if missing:
            for p, ms in zip(missing, measurer.points(g, missing)):
                stored[f"{p[0]},{p[1]}"] = [float(ms[0]), float(ms[1])]
            counted["points"] += len(missing)
            cache.dirty = True

        def value(ci: int, co: int, s: dict[str, int] = s, below: bool = below, key: dict = stored) -> float:
            kernel, glue = key[f"{ci},{co}"]
            return kernel + (glue if below and ci < s["in"] else 0.0)

        if g.kind == "depthwise":  # only the diagonal is measured; cost() reads the diagonal
            ms = tuple(tuple(value(c, c) for _ in out_grid) for c in in_grid)
        else:
            ms = tuple(tuple(value(ci, co) for co in out_grid) for ci in in_grid)
        tables[layer.name] = LayerLatency(layer.name, g, layer.cin, layer.cout, in_grid, out_grid, ms,
                                          s["in"], s["out"], in_base, out_base)
    key = _model_key(model, inputs, batch)
    if network is not None:  # the deployed file is what is profiled: its bytes are the key
        key = f"{precision}:{key}:{hashlib.sha256(Path(network).read_bytes()).hexdigest()[:20]}"
    if not isinstance(cache.data["models"].get(key), list):  # (a bare number: cached before the fixed part was)
        # an int8 network's float layers (skipped ones) are tabled too, in fp32: their time is not "other"
        cache.data["models"][key] = list(_other_share(model, inputs, batch, measurer, network,
                                                      INT8_TABLE_OPS | table_ops if precision == "int8"
                                                      else table_ops))
        cache.dirty = True
    if getattr(measurer, "reference_ms", None) is not None and "reference_ms" not in cache.data:
        cache.data["reference_ms"] = measurer.reference_ms
        cache.dirty = True
    cache.save()
    other, fixed = (float(v) for v in cache.data["models"][key])
    return LatencyTable(tables, other, batch, threads, cache.data["machine"], counted["points"], other_fixed=fixed,
                        backend=backend)


def _other_share(model: nn.Module, inputs: tuple, batch: int, measurer: Measurer,
                 network: str | os.PathLike | None, table_ops: frozenset[str]) -> tuple[float, float]:
    from slimkit.analysis._latency import export_for_timing

    full = tuple(x.expand(batch, *x.shape[1:]).contiguous() if isinstance(x, torch.Tensor) and x.dim() > 0 else x
                 for x in inputs)
    feeds = [x.detach().cpu().numpy() for x in full if isinstance(x, torch.Tensor)]
    if network is not None:
        return measurer.other_share(network, feeds, set(table_ops))
    with tempfile.TemporaryDirectory(prefix="slimkit-lattable-") as tmp:
        path = export_for_timing(model, full, Path(tmp) / "model.onnx")
        return measurer.other_share(path, feeds, set(table_ops))
