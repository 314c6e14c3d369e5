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

TITLE = "int8 weight range by CPU: full-range vs 7-bit weights in ONNX Runtime's int8 kernels"
MODELS = {"lenet5": 10, "resnet20": 4}  # the epochs of the quantize section's MNIST models
CALIBRATION_IMAGES = 1024
THREADS = 2
log = logging.getLogger(__name__)


def _outputs(model: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


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
    from slimkit.export import export_onnx, export_qdq, ort_quantize_static, run_onnx
    from slimkit.quantize import QuantConfig, quant_report, quantize

    data = create_data("mnist", batch_size=256, calibration_size=CALIBRATION_IMAGES)
    model = trained(name, epochs).eval()
    count = 2000 if quick else len(data.test.inputs)
    x, targets = data.test.inputs[:count], data.test.targets[:count].numpy()
    example = data.example_input()
    fp32_path = export_onnx(model, example, tmp / f"{name}_fp32.onnx")
    fp32 = run_onnx(fp32_path, x, threads=THREADS)
    rows: dict[str, Any] = {"fp32": {"accuracy": float(np.mean(fp32.argmax(1) == targets))}}
    for reduce_range in (False, True):
        q = quantize(model, example, QuantConfig(reduce_range=reduce_range), data=data.calibration)
        path = export_qdq(q, example, tmp / f"{name}_slimkit_{reduce_range}.onnx")
        rows[f"slimkit_{'w7' if reduce_range else 'w8'}"] = {
            **_compare(_outputs(q, x), run_onnx(path, x, threads=THREADS), targets),
            "weight_bits": quant_report(q).details["weight_range"]["bits"], "against": "its fake-quant model"}
        peer = ort_quantize_static(fp32_path, data.calibration, tmp / f"{name}_ort_{reduce_range}.onnx",
                                   reduce_range=reduce_range)
        rows[f"ort_{'w7' if reduce_range else 'w8'}"] = {
            **_compare(fp32, run_onnx(peer, x, threads=THREADS), targets),
            "weight_bits": 7 if reduce_range else 8, "against": "the fp32 file"}
    return {"rows": rows, "test_images": count, "epochs": epochs,
            "default": quant_report(quantize(model, example, QuantConfig(), data=data.calibration))
            .details["weight_range"]}


LABELS = {"slimkit_w8": "slimkit int8, `reduce_range=False` (±127)", "slimkit_w7": "slimkit int8, `reduce_range=True` "
          "(±63)", "ort_w8": "ORT quantize_static, `reduce_range=False`", "ort_w7": "ORT quantize_static, "
          "`reduce_range=True`"}


def render(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The section's markdown from its results (``python -m benchmarks.run --rerender int8_range``)."""
    table = []
    for name in payload["models"]:
        block = payload[name]
        table.append([f"{name} ({block['epochs']} epochs)", "fp32", "–", "–", "–", "–",
                      f"{100 * block['rows']['fp32']['accuracy']:.2f}%"])
        for key, label in LABELS.items():
            row = block["rows"][key]
            table.append([name, label, row["weight_bits"], row["against"], f"{100 * row['agreement']:.2f}%",
                          f"{row['relative_mean_diff']:.4f}", f"{100 * row['accuracy']:.2f}%"])
    cpu = payload["machine"]
    saturates = not (cpu.get("avx512_vnni") or cpu.get("avx_vnni"))
    first = payload[payload["models"][0]]
    lines = [
        f"On this CPU (AVX512-VNNI {cpu.get('avx512_vnni')}, AVX-VNNI {cpu.get('avx_vnni')}) ONNX Runtime's uint8 × "
        "int8 kernels " + ("add pairs of products in saturating int16 (VPMADDUBSW)" if saturates else
                           "accumulate in int32 (VPDPBUSD)") + f". `QuantConfig()` chose {first['default']['bits']}-bit"
        f" weights here ({first['default']['reason']}). Agreement: top-1 agreement of the int8 file in ONNX Runtime "
        "with the model named in 'against', on the "
        f"{first['test_images']:,} MNIST test images; 'mean |diff|': mean absolute difference of the outputs relative "
        f"to that model's mean absolute output. Calibration: {payload['calibration_images']:,} training images, "
        "min/max observers, per-channel weights, quantizers over the whole graph; ONNX Runtime "
        f"{payload['threads']} threads. Every setting is fixed in advance; the test set is read once per file.",
        "",
        markdown_table(["model", "file", "weight bits", "against", "agreement", "mean |diff|", "test accuracy"],
                       table),
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
