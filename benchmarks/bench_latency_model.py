"""How well slimkit's latency tables predict ONNX Runtime, in fp32 and int8: models pruned uniformly (L1, no
fine-tuning: latency does not depend on the weights' values) at several ratios, each predicted ratio next to the
measured one (interleaved against the unpruned fp32 model, with its A/A control).

Predictions compared (what ``slimkit auto`` and ``prune --latency`` use, and what they replaced):
- fp32, step rule: the table's grid of kernel steps, a width between steps priced at the next step up;
- fp32, widths measured, constant other: the same table with the pruned widths themselves measured
  (``build_latency_table(widths=)``, as ``auto`` measures every width its search can choose), and the time outside
  the layers a constant share of the original's (the table before the other ops shrank with the outputs);
- fp32, widths measured: the same, with the other ops' kernels shrinking with the layers' outputs and only the
  executor's own share constant (``LatencyTable.predict_ratio``);
- int8, fp32 × int8 ratio: the fp32 prediction times the whole int8 model's measured ratio (``auto`` before the int8
  tables: it assumed int8 gains and pruning gains compose);
- int8, int8 tables: each layer's int8 kernel (QLinearConv / QGemm) measured at the pruned widths, scaled so the
  unpruned int8 model predicts its measured ratio, the int8 network's other ops a constant (``slimkit.auto``'s
  ``calibrate_int8`` and cost model);
- int8, int8 tables, other shrinking: the same, the other ops (quantize / dequantize among them) shrinking with the
  layers' outputs as in fp32 and only the executor's own share constant (tried for ``slimkit.auto``'s cost model;
  it keeps the constant, which predicted better).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._common import LATENCY_METHOD, LATENCY_THREADS, Section, latency_cell, latency_record, markdown_table

TITLE = "Latency model: predicted vs measured (fp32 and int8, pruned widths)"
RATIOS = (0.25, 0.5, 0.75)
#: (spec, input shape, batch): the MNIST models at the auto benchmark's batch, MobileNetV2 at a real resolution
MODELS = (("lenet5", (1, 28, 28), 64), ("resnet20", (1, 28, 28), 64), ("mobilenet_v2", (3, 224, 224), 8))
METHODS = ("fp32, step rule", "fp32, widths measured, constant other", "fp32, widths measured",
           "int8, fp32 × int8 ratio", "int8, int8 tables", "int8, int8 tables, other shrinking")

log = logging.getLogger(__name__)


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"models": MODELS[:1], "ratios": RATIOS[1:2], "repeats": 10}
    return {"models": MODELS, "ratios": RATIOS, "repeats": 30}


def _compare(a: Any, b: Any, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    from slimkit.analysis import compare_latency

    return latency_record(compare_latency(a, b, x, backend="onnxruntime", threads=LATENCY_THREADS, warmup=3,
                                          repeats=repeats))


def _widths(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    from slimkit.analysis._latency_table import model_layers

    return {layer.name: (layer.cin, layer.cout) for layer in model_layers(model, x)}


def _model(spec: str, shape: tuple[int, ...]) -> nn.Module:
    from slimkit import models

    torch.manual_seed(0)
    if spec == "mobilenet_v2":
        from benchmarks.bench_latency_prune import _alive

        return _alive(models.create("mobilenet_v2", num_classes=1000, in_channels=3, input_size=224), shape)
    return models.from_spec(spec).eval()


def _int8_file(model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    from slimkit.export import export_qdq
    from slimkit.quantize import QuantConfig, quantize

    gen = torch.Generator().manual_seed(1)
    calibration = [(torch.rand(16, *x.shape[1:], generator=gen), torch.zeros(16, dtype=torch.long))
                   for _ in range(2)]
    return export_qdq(quantize(model, x, QuantConfig(), data=calibration), x, path)


def _rows(spec: str, shape: tuple[int, ...], batch: int, s: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from slimkit.analysis import build_latency_table, profile
    from slimkit.analysis._latency import export_for_timing
    from slimkit.auto._costs import calibrate_int8, full_ms, table_payload
    from slimkit.prune import PruneConfig, prune_channels

    base = _model(spec, shape)
    x = torch.zeros(1, *shape)
    timed = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))
    pruned = {r: prune_channels(base, x, PruneConfig(ratio=r)).eval() for r in s["ratios"]}
    widths = {r: _widths(m, x) for r, m in pruned.items()}
    levels: dict[str, tuple[list[int], list[int]]] = {}
    for per_layer in widths.values():
        for name, (cin, cout) in per_layer.items():
            levels.setdefault(name, ([], []))[0].append(cin)
            levels[name][1].append(cout)
    base_fp32 = export_for_timing(base, (timed,), tmp / f"{spec}.onnx")
    base_int8 = _int8_file(base, x, tmp / f"{spec}-int8.onnx")
    options = {"batch": batch, "threads": LATENCY_THREADS, "cache_dir": tmp}
    step_table = build_latency_table(base, x, **options)
    fp32_table = build_latency_table(base, x, widths=levels, **options)
    int8_table = build_latency_table(base, x, precision="int8", network=base_int8, widths=levels, **options)
    int8_whole = _compare(base_fp32, base_int8, timed, s["repeats"])
    out: dict[str, Any] = {"batch": batch, "int8_whole": int8_whole, "fp32_other": fp32_table.other,
                           "fp32_other_fixed": fp32_table.other_fixed, "int8_other": int8_table.other, "rows": {}}
    latency = {**table_payload(fp32_table), "int8": int8_whole["ratio"]}
    if int8_whole["ratio"] is not None:
        calibrate_int8(latency, table_payload(int8_table), [])
    fp32_full = full_ms(latency)  # the input model in the fp32 tables' milliseconds, as auto's search counts it
    base_macs = profile(base, x).total.macs
    for r, model in pruned.items():
        fp32_file = export_for_timing(model, (timed,), tmp / f"{spec}-{r}.onnx")
        int8_file = _int8_file(model, x, tmp / f"{spec}-{r}-int8.onnx")
        fp32_predicted = fp32_table.predict_ratio(widths[r])
        predicted = {"fp32, step rule": step_table.predict_ratio(widths[r]),
                     "fp32, widths measured, constant other": replace(fp32_table, other_fixed=None).predict_ratio(
                         widths[r]),
                     "fp32, widths measured": fp32_predicted, "int8, fp32 × int8 ratio": None,
                     "int8, int8 tables": None, "int8, int8 tables, other shrinking": None}
        if "int8_scale" in latency:
            predicted["int8, fp32 × int8 ratio"] = fp32_predicted * int8_whole["ratio"]
            int8_ms = sum(t.cost(*widths[r][name]) for name, t in int8_table.layers.items())
            predicted["int8, int8 tables"] = latency["int8_scale"] * (int8_ms + latency["int8_other_ms"]) / fp32_full
            # the int8 network's time at these widths by its own table, its other ops shrinking as in fp32
            int8_network_ms = int8_table.predict_ms() / (1 - int8_table.other)
            predicted["int8, int8 tables, other shrinking"] = (latency["int8_scale"] * int8_network_ms
                                                               * int8_table.predict_ratio(widths[r]) / fp32_full)
        out["rows"][str(r)] = {
            "macs": profile(model, x).total.macs / base_macs,
            "fp32": _compare(base_fp32, fp32_file, timed, s["repeats"]),
            "int8": _compare(base_fp32, int8_file, timed, s["repeats"]), "predicted": predicted}
        log.info("latency model: %s %.2f → %s", spec, r, out["rows"][str(r)])
    return out


def _error(predicted: float | None, record: dict[str, Any]) -> float | None:
    if predicted is None or record["ratio"] is None:
        return None
    return abs(predicted - record["ratio"]) / record["ratio"]


def render(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The section's markdown and data from its results: what ``run`` writes and what ``python -m benchmarks.run
    --rerender latency_model`` rebuilds from ``results/latency_model.json``."""
    data = {"settings": payload["settings"], "models": payload["models"]}
    rows: list[list[Any]] = []
    errors: dict[str, list[float]] = {m: [] for m in METHODS}
    for spec, entry in data["models"].items():
        rows.append([f"**{spec}** (batch {entry['batch']})", "1.00", "int8 unpruned",
                     latency_cell(entry["int8_whole"]), "–", "–"])
        for r, row in entry["rows"].items():
            for method in METHODS:
                record = row["int8" if method.startswith("int8") else "fp32"]
                predicted = row["predicted"].get(method)
                error = _error(predicted, record)
                if error is not None:
                    errors[method].append(error)
                rows.append([f"{spec} pruned {float(r):.0%}", f"{row['macs']:.2f}", method, latency_cell(record),
                             "–" if predicted is None else f"{predicted:.3f}",
                             "–" if error is None else f"{error:.0%}"])
    table = markdown_table(["model", "MAC ratio", "prediction", "measured ratio (p10–p90)", "predicted",
                            "error"], rows)
    summary = markdown_table(["prediction", "cells", "mean error", "largest error"],
                             [[m, len(e), f"{sum(e) / len(e):.0%}" if e else "–", f"{max(e):.0%}" if e else "–"]
                              for m, e in errors.items()])
    s = data["settings"]
    return f"""Every model pruned uniformly by L1 norm at {', '.join(f'{r:.0%}' for r in s['ratios'])} of the
channels of every group, without fine-tuning (latency does not depend on the weights' values), then timed against
the unpruned fp32 model: fp32 ONNX and slimkit's int8 QDQ export (uint8 activations, int8 weights per channel;
ONNX Runtime's QLinearConv / QGemm). {LATENCY_METHOD}; {s['repeats']} interleaved rounds per comparison. The
tables are measured afresh in each run. The error is the absolute difference predicted − measured over the measured
ratio; a "too noisy" cell has none.

{table}

{summary}
""", data


def run(quick: bool) -> Section:
    torch.set_num_threads(1)
    s = _settings(quick)
    data: dict[str, Any] = {"settings": {"ratios": list(s["ratios"]), "repeats": s["repeats"]}, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-latency-model-") as tmp:
        for spec, shape, batch in s["models"]:
            data["models"][spec] = _rows(spec, shape, batch, s, Path(tmp))
    markdown, data = render(data)
    return Section(topic="latency_model", title=TITLE, markdown=markdown, data=data)
