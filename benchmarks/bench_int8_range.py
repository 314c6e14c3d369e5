"""int8 weight range by CPU: do slimkit's int8 ONNX files compute, in ONNX Runtime, what their fake-quant model
computes — with full-range 8-bit weights (±127) and with 7-bit weights (±63, ``QuantConfig(reduce_range=True)``)?

On x86 CPUs without VNNI, ONNX Runtime's uint8 × int8 kernels (QLinearConv, QGemm) add pairs of products in a
saturating int16 (VPMADDUBSW): 2 · 255 · 127 overflows it, 2 · 255 · 63 does not. The table measures, on the machine
that runs it, the top-1 agreement between each int8 file in ONNX Runtime and the PyTorch model it was exported from,
and both accuracies on the 10,000 MNIST test images; ONNX Runtime's own quantizer with and without its
``reduce_range`` is the peer. Nothing is chosen here (no validation split is needed): every row is one fixed setting.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import Section, markdown_table
from benchmarks.bench_quantize import CALIBRATION_IMAGES, THREADS
from benchmarks.bench_quantize import MNIST_MODELS as MODELS

TITLE = "int8 weight range by CPU: full-range vs 7-bit weights in ONNX Runtime's int8 kernels"
log = logging.getLogger(__name__)


def _outputs(model: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


def _run_onnx(path: Path, x: torch.Tensor, batch: int = 500) -> np.ndarray:
    from slimkit.export import run_onnx

    return np.concatenate([run_onnx(path, x[i:i + batch], threads=THREADS) for i in range(0, len(x), batch)])


def _largest_weight_code(path: Path) -> int:
    """The largest |code| among the file's int8 weight tensors (not the zero points): 127 full range, 63 slimkit's
    7-bit grid, 64 ONNX Runtime's reduced range."""
    import onnx
    from onnx import numpy_helper

    return max(int(np.abs(numpy_helper.to_array(t).astype(int)).max()) for t in onnx.load(str(path)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1)


def _compare(reference: np.ndarray, got: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Top-1 agreement of ``got`` with ``reference``, their mean |difference| relative to the reference's mean
    |value|, and both accuracies."""
    return {"agreement": float(np.mean(got.argmax(1) == reference.argmax(1))),
            "relative_mean_diff": float(np.abs(got - reference).mean() / np.abs(reference).mean()),
            "accuracy": float(np.mean(got.argmax(1) == targets)),
            "reference_accuracy": float(np.mean(reference.argmax(1) == targets))}


def _model_rows(name: str, epochs: int, quick: bool, tmp: Path) -> dict[str, Any]:
    from benchmarks._baselines import trained
    from slimkit.data import create_data
    from slimkit.export import export_onnx, export_qdq, ort_quantize_static
    from slimkit.quantize import QuantConfig, quant_report, quantize

    data = create_data("mnist", batch_size=256, calibration_size=CALIBRATION_IMAGES)
    model = trained(name, epochs).eval()
    count = 2000 if quick else len(data.test.inputs)
    x, targets = data.test.inputs[:count], data.test.targets[:count].numpy()
    example = data.example_input()
    fp32_path = export_onnx(model, example, tmp / f"{name}_fp32.onnx")
    fp32 = _run_onnx(fp32_path, x)
    rows: dict[str, Any] = {"fp32": {"accuracy": float(np.mean(fp32.argmax(1) == targets))}}
    for reduce_range in (False, True):
        q = quantize(model, example, QuantConfig(reduce_range=reduce_range), data=data.calibration)
        path = export_qdq(q, example, tmp / f"{name}_slimkit_{reduce_range}.onnx")
        rows[f"slimkit_{'w7' if reduce_range else 'w8'}"] = {
            **_compare(_outputs(q, x), _run_onnx(path, x), targets), "reduce_range": reduce_range,
            "weight_bits": quant_report(q).details["weight_range"]["bits"], "largest_code": _largest_weight_code(path),
            "against": "its fake-quant model"}
        peer = ort_quantize_static(fp32_path, data.calibration, tmp / f"{name}_ort_{reduce_range}.onnx",
                                   reduce_range=reduce_range)
        rows[f"ort_{'w7' if reduce_range else 'w8'}"] = {
            **_compare(fp32, _run_onnx(peer, x), targets), "reduce_range": reduce_range,
            "largest_code": _largest_weight_code(peer), "against": "the fp32 file"}
    return {"rows": rows, "test_images": count, "epochs": epochs,
            "default": quant_report(quantize(model, example, QuantConfig(), data=data.calibration))
            .details["weight_range"]}


LABELS = {"slimkit_w8": "slimkit int8", "slimkit_w7": "slimkit int8", "ort_w8": "ORT quantize_static",
          "ort_w7": "ORT quantize_static"}


def render(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The section's markdown from its results (``python -m benchmarks.run --rerender int8_range``)."""
    table = []
    for name in payload["models"]:
        block = payload[name]
        table.append([f"{name} ({block['epochs']} epochs)", "fp32", "–", "–", "–", "–", "–",
                      f"{100 * block['rows']['fp32']['accuracy']:.2f}%"])
        for key, label in LABELS.items():
            row = block["rows"][key]
            table.append([name, label, f"`{row['reduce_range']}`", f"±{row['largest_code']}", row["against"],
                          f"{100 * row['agreement']:.2f}%", f"{row['relative_mean_diff']:.4f}",
                          f"{100 * row['accuracy']:.2f}%"])
    cpu = payload["machine"]
    saturates = cpu["int8_sums_saturate"]
    first = payload[payload["models"][0]]
    default = first["default"]
    behaviour = "add pairs of products in saturating int16 (VPMADDUBSW)" if saturates else "do not saturate"
    lines = [
        f"On this CPU ({cpu['machine']}, AVX512-VNNI {cpu.get('avx512_vnni')}, AVX-VNNI {cpu.get('avx_vnni')}) ONNX "
        f"Runtime's uint8 × int8 kernels {behaviour}. `QuantConfig()` chose {default['bits']}-bit weights here: "
        f"{default['reason']}. 'weights': the largest absolute int8 code in the file's weight tensors. "
        "'agreement': top-1 agreement of the int8 file in ONNX Runtime with the model named in 'against', on the "
        f"{first['test_images']:,} MNIST test images; 'mean abs. diff': mean absolute difference of the outputs "
        "relative to that model's mean absolute output. Calibration: "
        f"{payload['calibration_images']:,} training images, min/max observers, per-channel weights, quantizers "
        f"over the whole graph; ONNX Runtime {payload['threads']} threads. Every setting is fixed in advance; the "
        "test set is read once per file.",
        "",
        markdown_table(["model", "file", "reduce_range", "weights", "against", "agreement", "mean abs. diff",
                        "test accuracy"], table),
    ]
    return "\n".join(lines), payload


def run(quick: bool) -> Section:
    from benchmarks._common import machine_info

    torch.set_num_threads(THREADS)
    payload: dict[str, Any] = {"machine": machine_info(), "models": list(MODELS),
                               "calibration_images": CALIBRATION_IMAGES, "threads": THREADS}
    with tempfile.TemporaryDirectory(prefix="bench-int8-range-") as tmp:
        for name, epochs in MODELS.items():
            log.info("int8 range: %s", name)
            payload[name] = _model_rows(name, epochs, quick, Path(tmp))
    markdown, data = render(payload)
    return Section(topic="int8_range", title=TITLE, markdown=markdown, data=data)
