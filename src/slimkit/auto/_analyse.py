"""The analysis step of ``auto``: measuring the input model, every knob's per-layer sensitivity and cost, and the
reference files each deployment format is calibrated on. Every part is cached in ``OUT/analysis/`` as it is made."""

from __future__ import annotations

import copy
import inspect
import logging
import math
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._cpu import resolve_reduce_range
from slimkit._io import read_json_object
from slimkit.auto._config import AutoConfig
from slimkit.auto._costs import (
    Analysis,
    calibrate_int8,
    full_ms,
    layer_info,
    level_widths,
    table_payload,
)
from slimkit.auto._folder import Cache, digest, state_digest, write_json
from slimkit.auto._formats import example_batch, searched_knobs
from slimkit.auto._measure import CANDIDATES_PER_RUN, LatencyMeter, compare_all
from slimkit.auto._sensitivity import (
    Calibration,
    ShortRecovery,
    channel_analysis,
    channel_groups,
    container_analysis,
    hessian_traces,
    int8_analysis,
    keep_levels,
    rank_analysis,
)

log = logging.getLogger(__name__)

Event = Callable[[str, dict[str, Any]], None]


def _selected(names: list[str], skip: tuple[str, ...]) -> list[str]:
    from slimkit._select import matches_any

    return [n for n in names if not (skip and matches_any(n, skip))]


class Analyser:
    """Computes (or loads) the :class:`~slimkit.auto._costs.Analysis` of one input model under one config."""

    def __init__(self, model: nn.Module, example: Any, data: Any, config: AutoConfig, folder: Path,
                 meter: LatencyMeter | None, formats: list[str], spec: str | None, baseline_onnx: Path,
                 base: dict[str, Any], emit: Event) -> None:
        self.model, self.example, self.data, self.config = model, example, data, config
        self.folder, self.meter, self.formats, self.spec = folder, meter, formats, spec
        self.baseline_onnx, self.base, self.emit = baseline_onnx, base, emit
        budget = config.budget
        # what the cached entries depend on (each entry is keyed by its own option, so grids may change freely)
        self.key = digest({"weights": state_digest(model.state_dict()), "samples": config.calibration_samples,
                           "proxy": config.proxy, "criterion": config.criterion, "seed": config.seed,
                           "skip": list(config.skip), "data": getattr(data, "name", None),
                           "deployment": [budget.batch, budget.threads],  # type: ignore[union-attr]
                           "int8_reduce_range": resolve_reduce_range(None)})
        self.widths: dict[str, tuple[list[int], list[int]]] | None = None  # the search's widths per layer
        self._quantized: nn.Module | None = None

    def int8_model(self) -> nn.Module:
        """The input model in int8 (every layer not skipped), quantized once for the analysis."""
        from slimkit.quantize import QuantConfig, quantize

        if self._quantized is None:
            self._quantized = quantize(self.model, self.example, QuantConfig(skip=tuple(self.config.skip)),
                                       data=self.data.calibration)
        return self._quantized

    def cache(self, name: str) -> Cache:
        return Cache(self.folder / f"{name}.json", self.key)

    def progress(self, what: str) -> Callable[[str, int, int], None]:
        def report(kind: str, done: int, total: int) -> None:
            self.emit("analysis", {"what": what, "done": done, "total": total})
        return report

    def uses(self, knob: str) -> bool:
        return any(knob in searched_knobs(self.base, f, self.model, self.config.knobs) for f in self.formats)

    def run(self) -> Analysis:
        config, model = self.config, self.model
        layers = layer_info(model, self.example)
        skip = [n for n in layers if n not in _selected(list(layers), config.skip)]
        analysis = Analysis(layers=layers, base=dict(self.base), skip=skip)
        self.emit("analysis", {"what": "calibration", "done": 0, "total": 1})
        calib = Calibration.build(model, self.data.calibration, config.calibration_samples, config.proxy)
        budget = config.budget
        if budget.latency is not None and self.meter is not None:  # type: ignore[union-attr]
            analysis.latency = self._table("latency")
        if self.uses("channels"):
            analysis.groups = self._channels(calib, analysis)
            if analysis.latency is not None:  # the widths the search chooses among, measured (not read off steps)
                self.widths = level_widths(analysis.groups)
                analysis.latency = self._table("latency_levels", widths=self.widths) or analysis.latency
        method = self._method(calib, analysis)
        traces = None
        if method == "hessian":
            names = [n for n in layers if n not in skip]
            cached = read_json_object(self.folder / "hessian.json")
            if isinstance(cached, dict) and cached.get("key") == self.key:
                traces = cached["traces"]
            else:
                self.emit("analysis", {"what": "hessian traces", "done": 0, "total": 1})
                traces = hessian_traces(model, calib, names, seed=config.seed)
                write_json(self.folder / "hessian.json", {"key": self.key, "traces": traces})
        if "int8" in self.formats:
            self._int8(calib, analysis)
        if self.uses("rank"):
            names = [n for n in layers if n not in skip]
            analysis.rank = rank_analysis(model, self.example, calib, names, config.rank_ratios, method=method,
                                          traces=traces, seed=config.seed, cache=self.cache("rank"),
                                          progress=self.progress("rank"))
            if analysis.latency is not None and analysis.rank:
                int8 = "int8_layers" in analysis.latency
                analysis.latency["rank"], rank_int8 = self._rank_latency(analysis, int8=int8)
                if int8:
                    analysis.latency["rank_int8"] = rank_int8
        if "container" in self.formats:
            names = [n for n in layers if n not in skip]
            bits = config.cluster_bits if "clusters" in config.knobs else (8,)
            sparsities = config.sparsities if "sparsity" in config.knobs else ()
            recovery = self._short_recovery(calib, method, len(names) * len(sparsities))
            analysis.container = container_analysis(model, calib, names, sparsities, bits, method=method,
                                                    traces=traces, seed=config.seed, cache=self.cache("container"),
                                                    recovery=recovery, progress=self.progress("container"))
            analysis.base["container_sensitivity"] = method if recovery is None else recovery.label
            self._container_reference(analysis)
        analysis.base.update(self.base)
        write_json(self.folder / "summary.json", {"key": self.key, "method": method, "layers": analysis.layers,
                                                  "skip": analysis.skip, "groups": analysis.groups,
                                                  "rank": analysis.rank, "int8": analysis.int8,
                                                  "container": analysis.container, "latency": analysis.latency,
                                                  "base": analysis.base})
        return analysis

    # --- the parts ----------------------------------------------------------------------------------------------

    def _table(self, name: str, **options: Any) -> dict[str, Any] | None:
        """The latency table ``name`` (``OUT/analysis/NAME.json``), built by the meter with ``options``; None when
        the meter does not take them (a :class:`LatencyMeter` written before ``precision`` / ``widths``)."""
        accepts = inspect.signature(self.meter.table).parameters  # type: ignore[union-attr]
        if not any(p.kind is p.VAR_KEYWORD for p in accepts.values()) and any(k not in accepts for k in options):
            log.warning("auto: the latency meter's table() takes no %s: %s is skipped", ", ".join(options), name)
            return None
        key = digest({"analysis": self.key, "options": {k: str(v) if isinstance(v, Path) else v
                                                        for k, v in options.items()}})
        cached = read_json_object(self.folder / f"{name}.json")
        if isinstance(cached, dict) and cached.get("key") == key:
            return cached["table"]
        self.emit("analysis", {"what": name.replace("_", " ") + " table", "done": 0, "total": 1})
        budget = self.config.budget
        table = self.meter.table(self.model, self.example, batch=budget.batch,  # type: ignore[union-attr]
                                 threads=budget.threads, **options)  # type: ignore[union-attr]
        payload = table_payload(table)
        write_json(self.folder / f"{name}.json", {"key": key, "table": payload})
        return payload

    def _channels(self, calib: Calibration, analysis: Analysis) -> dict[str, Any]:
        config = self.config
        groups = channel_groups(self.model, self.example, config.skip)
        steps: dict[str, list[int]] = {}
        if analysis.latency is not None:
            for name in groups:
                table = analysis.latency["layers"].get(name)
                if table is not None and table["step_out"] > 1:
                    steps[name] = [table["step_out"]]
        levels = {name: keep_levels(units, config.keep_fractions, steps.get(name, ())) for name, units in
                  groups.items()}
        return channel_analysis(self.model, self.example, calib, groups, levels, criterion=config.criterion,
                                data=self.data.calibration, skip=config.skip, seed=config.seed,
                                cache=self.cache("channels"), progress=self.progress("channels"),
                                container="container" in self.formats and "channels" in searched_knobs(
                                    self.base, "container", self.model, config.knobs))

    def _method(self, calib: Calibration, analysis: Analysis) -> str:
        """``loss`` or ``hessian`` for the weight-perturbing knobs (see ``AutoConfig.sensitivity``)."""
        config = self.config
        if config.sensitivity != "auto":
            return config.sensitivity
        layers = len([n for n in analysis.layers if n not in analysis.skip])
        evals = 0
        if self.uses("rank"):
            evals += layers * len(config.rank_ratios)
        if "container" in self.formats:
            evals += layers * (len(config.sparsities) + 1) * len(config.cluster_bits)
        estimate = evals * calib.seconds
        method = "loss" if estimate <= config.sensitivity_seconds else "hessian"
        log.info("auto: %d sensitivity evaluations × %.3f s = %.0f s: %s", evals, calib.seconds, estimate, method)
        return method

    def _short_recovery(self, calib: Calibration, method: str, options: int) -> ShortRecovery | None:
        """The short recovery each container sparsity is measured after (``AutoConfig.sensitivity_steps``), or None
        (one-shot): with the Hessian estimate, without sparsities, or under ``sensitivity="auto"`` when the
        ``options`` recoveries would not fit ``sensitivity_seconds`` (timed on two steps)."""
        config = self.config
        if method != "loss" or not config.sensitivity_steps or not options:
            return None
        recovery = ShortRecovery.build(self.data.train, config.sensitivity_steps, config.recovery_lr, config.seed)
        if config.sensitivity == "auto":
            timing = ShortRecovery(recovery.batches[:2], recovery.lr, recovery.seed)
            started = time.perf_counter()
            timing(copy.deepcopy(self.model))
            step = (time.perf_counter() - started) / len(timing.batches)
            estimate = (options + 1) * config.sensitivity_steps * step
            if estimate > config.sensitivity_seconds:
                log.info("auto: %d short recoveries × %d steps × %.3f s = %.0f s: container sparsity measured "
                         "one-shot", options + 1, config.sensitivity_steps, step, estimate)
                return None
        return recovery

    def _int8(self, calib: Calibration, analysis: Analysis) -> None:
        """Per-layer int8 sensitivity; the whole int8 model's file bytes, latency ratio and accuracy."""
        from slimkit.export import export_qdq, self_contained_onnx

        config = self.config
        quantizable = [n for n in analysis.layers if n not in analysis.skip]
        if "int8" in config.knobs:
            analysis.int8 = int8_analysis(self.model, self.example, calib, self.data.calibration, quantizable,
                                          cache=self.cache("int8"), progress=self.progress("int8"))
        reference = read_json_object(self.folder / "int8_reference.json")
        path = self.folder / "int8_reference.onnx"
        if not (isinstance(reference, dict) and reference.get("key") == self.key and path.is_file()
                and self_contained_onnx(path)):  # slimkit writes whole files: one naming others is not its own
            self.emit("analysis", {"what": "int8 reference", "done": 0, "total": 1})
            quantized = self.int8_model()
            export_qdq(quantized, self.example, path)
            from slimkit.analysis import evaluate

            scores = evaluate(quantized, self.data.valid)
            reference = {"key": self.key, "bytes": path.stat().st_size, "accuracy": scores.accuracy,
                         "loss": scores.loss, "latency": None}
            if self.meter is not None:
                budget = self.config.budget
                reference["latency"] = self.meter.compare(
                    self.model, quantized, self.baseline_onnx, path,
                    example_batch(self.example, budget.batch), threads=budget.threads)  # type: ignore[union-attr]
            write_json(self.folder / "int8_reference.json", reference)
        self.base["int8_bytes"] = reference["bytes"]
        self.base["int8_reference"] = {k: v for k, v in reference.items() if k != "key"}
        if analysis.latency is not None:
            ratio = (reference.get("latency") or {}).get("ratio")
            if ratio is None:
                log.warning("auto: the int8 model's latency ratio could not be measured (too noisy): the search "
                            "assumes int8 is no faster than fp32")
            analysis.latency["int8"] = float(ratio) if ratio else 1.0
            self._int8_latency_table(analysis, path, measured=ratio is not None)

    def _int8_latency_table(self, analysis: Analysis, network: Path, *, measured: bool) -> None:
        """Per-layer tables of the int8 kernels (``latency["int8_layers"]``, ``["int8_other_ms"]``), scaled so that
        the whole int8 model's prediction is its measured ratio (``["int8_scale"]``). Needed because int8 time does
        not follow fp32 time as widths shrink: ResNet-20's int8 QLinearConv at 28×28 is no faster at 11 or 8
        channels than at 16 (measured), so "int8 ratio × pruned fp32 time" promised latencies the candidates never
        reached. ``measured``: the int8 reference's ratio was read (without it nothing is calibrated: int8 is priced
        as fp32, and a float layer's cost in context cannot be told)."""
        assert analysis.latency is not None
        payload = self._table("latency_int8", precision="int8", network=network,
                              **({"widths": self.widths} if self.widths else {}))
        if payload is None:  # a meter written before int8 tables: int8 priced by its whole-model ratio
            return
        calibrate_int8(analysis.latency, payload, analysis.skip)
        if "int8" in self.config.knobs and measured:
            analysis.latency["int8_float_extra"] = self._float_in_int8(analysis)

    def _float_in_int8(self, analysis: Analysis) -> dict[str, float]:
        """Per quantizable layer, what keeping it in float costs inside the int8 network, measured in context: the
        int8 model with that layer alone in float, timed against the int8 model itself in one comparison (in the
        tables' milliseconds). The tables cannot see this: around a float layer ONNX Runtime changes layouts
        (LeNet-5 with conv1 float ran its first max-pool in plain NCHW at 6× the time), so a mixed plan predicted at
        0.33 of the input measured 0.70. Paired with the int8 network, not read as the difference of two ratios to
        the input: each comparison carries its own bias of a few per cent, which the difference turned into a
        saving (ResNet-20: 12 of 20 layers read cheaper in float than in int8; a plan floating 15 of them,
        predicted at 0.34 of the input, measured 0.95). A reading below zero is taken as zero: noise the search
        would otherwise seek out (the layers that read cheapest are the ones it floats)."""
        from slimkit.export import export_qdq
        from slimkit.quantize import QuantConfig, quantize

        latency = analysis.latency
        assert latency is not None
        int8_ms = latency["int8"] * full_ms(latency)  # the int8 network, in the tables' milliseconds
        cache = self.cache("int8_float_vs_int8")
        budget = self.config.budget
        layers = [n for n in analysis.int8 if n not in analysis.skip]
        out: dict[str, float] = {}
        todo = [name for name in layers if name not in cache]
        if layers:  # the cached ones count as done (a resumed analysis shows the step too)
            self.emit("analysis", {"what": "float layers in int8", "done": len(layers) - len(todo),
                                   "total": len(layers)})
        with tempfile.TemporaryDirectory(prefix="slimkit-auto-") as tmp:
            # a few layers per run, each paired with the int8 network in the same rounds (compare_all)
            for start in range(0, len(todo), CANDIDATES_PER_RUN):
                chunk = todo[start:start + CANDIDATES_PER_RUN]
                mixed = []
                for name in chunk:
                    quantized = quantize(self.model, self.example, QuantConfig(skip=(*self.config.skip, name)),
                                         data=self.data.calibration)
                    mixed.append((quantized, export_qdq(quantized, self.example,
                                                        Path(tmp) / f"mixed-{len(mixed)}.onnx")))
                records = compare_all(self.meter, self.int8_model(), self.folder / "int8_reference.onnx",  # type: ignore
                                      mixed, example_batch(self.example, budget.batch),  # type: ignore[union-attr]
                                      threads=budget.threads)  # type: ignore[union-attr]
                for name, record in zip(chunk, records, strict=True):
                    cache.put(name, record.get("ratio"))
                self.emit("analysis", {"what": "float layers in int8", "done": len(layers) - len(todo) + start
                                       + len(chunk), "total": len(layers)})
        for name in layers:
            ratio = cache.get(name)
            if ratio is not None:  # too noisy to read: the tables' estimate stands
                out[name] = max((float(ratio) - 1.0) * int8_ms, 0.0)
        return out

    def _rank_latency(self, analysis: Analysis, *, int8: bool) -> tuple[dict[str, dict[str, float]], dict]:
        """Latency of each factorisation / the layer's, timed as one-layer graphs at the layer's input size; with
        ``int8`` also the factors in int8 / the layer in int8, as one-layer QDQ graphs (the int8 kernels' plateau at
        narrow widths holds for the factors too; empty without). Each factorisation is made once for both."""
        from slimkit.decompose import DecomposeConfig, decompose
        from slimkit.export import export_qdq
        from slimkit.quantize import QuantConfig, quantize

        cache, cache_int8 = self.cache("rank_latency"), self.cache("rank_latency_int8")
        threads = self.config.budget.threads  # type: ignore[union-attr]
        inputs = _layer_inputs(self.model, self.example, list(analysis.rank), self.config.budget.batch)  # type: ignore
        out: dict[str, dict[str, float]] = {}
        out_int8: dict[str, dict[str, float]] = {}
        total = sum(len(rows) for rows in analysis.rank.values())
        done = 0
        with tempfile.TemporaryDirectory(prefix="slimkit-auto-") as tmp:
            for name, rows in analysis.rank.items():
                single = nn.Sequential()
                single.add_module("layer", self.model.get_submodule(name))
                x = inputs[name]
                calibration = [(x, torch.zeros(len(x), dtype=torch.long))]

                def in_int8(module: nn.Module, x: torch.Tensor = x, calibration: list = calibration) -> tuple:
                    """``module`` in int8, as a QDQ file."""
                    quantized = quantize(module, x[:1], QuantConfig(), data=calibration)
                    return quantized, export_qdq(quantized, x[:1], Path(tmp) / f"int8-{uuid.uuid4().hex}.onnx")

                # what is not cached yet, each against the fp32 layer, timed together in runs of a few (compare_all):
                # the layer in int8, each factorisation, and each factorisation in int8
                wanted: list[tuple[Cache, str, Any]] = []
                if int8 and f"{name}|int8" not in cache_int8:
                    wanted.append((cache_int8, f"{name}|int8", lambda m=single: in_int8(m)))
                for row in rows:
                    key = f"{name}|{row['ratio']}"
                    if key not in cache or (int8 and f"{key}|int8" not in cache_int8):
                        factored = decompose(single, x[:1], DecomposeConfig(
                            layers=("layer",), ratio=row["ratio"], method=("tucker2", "svd"), seed=self.config.seed))
                        if key not in cache:
                            wanted.append((cache, key, lambda m=factored: (m, None)))
                        if int8 and f"{key}|int8" not in cache_int8:
                            wanted.append((cache_int8, f"{key}|int8", lambda m=factored: in_int8(m)))
                for start in range(0, len(wanted), CANDIDATES_PER_RUN):
                    chunk = wanted[start:start + CANDIDATES_PER_RUN]
                    made = [make() for _, _, make in chunk]
                    records = compare_all(self.meter, single, None, made, (x,), threads=threads)  # type: ignore
                    for _, file in made:  # a wide model's int8 layers add up: each file lives for its run only
                        if file is not None:
                            Path(file).unlink(missing_ok=True)
                    for (where, key, _), record in zip(chunk, records, strict=True):
                        ratio = record.get("ratio")
                        where.put(key, float(ratio) if ratio is not None else None)
                layer_int8 = cache_int8.get(f"{name}|int8") if int8 else None
                for row in rows:
                    key = f"{name}|{row['ratio']}"
                    value = cache.get(key)
                    # too noisy to read: priced as no faster than the layer (no gain the search cannot see)
                    out.setdefault(name, {})[str(row["ratio"])] = value if value is not None else 1.0
                    if int8:
                        value = cache_int8.get(f"{key}|int8")
                        if value is not None and layer_int8:  # unreadable (too noisy): the fp32 ratio stands
                            out_int8.setdefault(name, {})[str(row["ratio"])] = value / layer_int8
                    done += 1
                    self.emit("analysis", {"what": "rank latency", "done": done, "total": total})
        return out, out_int8

    def _container_reference(self, analysis: Analysis) -> None:
        """The input model as a container with every layer at 8 bits, no sparsity (calibrates the header)."""
        from slimkit.share import ClusterConfig, cluster_weights, save_compressed

        reference = read_json_object(self.folder / "container_reference.json")
        if not (isinstance(reference, dict) and reference.get("key") == self.key):
            self.emit("analysis", {"what": "container reference", "done": 0, "total": 1})
            layers = [n for n in analysis.layers if n not in analysis.skip]
            clustered = cluster_weights(self.model, None, ClusterConfig(bits=dict.fromkeys(layers, 8), layers=layers,
                                                                  seed=self.config.seed))
            with tempfile.TemporaryDirectory(prefix="slimkit-auto-") as tmp:
                size = save_compressed(clustered, Path(tmp) / "reference.slim", self.spec).file_bytes
            reference = {"key": self.key, "bytes": size}
            write_json(self.folder / "container_reference.json", reference)
        self.base["container_bytes"] = reference["bytes"]


def _layer_inputs(model: nn.Module, example: Any, names: list[str], batch: int) -> dict[str, torch.Tensor]:
    """Each named layer's input from one forward of the example, repeated to ``batch`` rows."""
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        def hook(module: nn.Module, args: tuple, _out: Any, name: str = name) -> None:
            captured.setdefault(name, args[0].detach())
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(*example_batch(example, 1))
    finally:
        for h in hooks:
            h.remove()
    return {n: x.expand(batch, *x.shape[1:]).contiguous().clone() for n, x in captured.items()}


def reachable_text(reach: dict[str, dict[str, float]], budget: dict[str, float]) -> str:
    """``latency ≥ 0.21 (int8), size ≥ 0.03 (container)``: the smallest predicted ratio per budget key."""
    parts = []
    for key in budget:
        values = [(v[key], f) for f, v in reach.items() if key in v and math.isfinite(v[key])]
        if values:
            best, fmt = min(values)
            parts.append(f"{key} ≥ {math.ceil(best * 1000) / 1000:g} ({fmt})")
    return ", ".join(parts)


def temporary_folder() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="slimkit-auto-")
