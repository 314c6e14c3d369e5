"""int8 ONNX deployment: QDQ export carrying slimkit's own scales and zero points, and ONNX Runtime's static /
dynamic quantization fed with the same calibration data, for side-by-side comparison.

ONNX Runtime fuses ``DequantizeLinear → Conv/Gemm/MatMul → QuantizeLinear`` into integer kernels (QLinearConv,
QGemm, ...) when the weights are int8 initializers behind a DequantizeLinear and the bias is int32 with scale
``s_x · s_w`` ("QDQ format", onnxruntime docs: Quantize ONNX models). The file written here has exactly that form.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimkit._io import atomic_write
from slimkit.export._onnx import DEFAULT_OPSET, ExportError, export_onnx

log = logging.getLogger(__name__)

INT8_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QLinearAdd", "NhwcQLinearConv", "QLinearGlobalAveragePool", "QLinearAveragePool",
    "QLinearMul", "QLinearLeakyRelu", "QLinearConcat", "QLinearSigmoid",
})


def export_qdq(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a frozen slimkit-quantized model (``quantize_ptq`` / ``convert_qat``) to a QDQ int8 ONNX file.

    Weights are stored as int8 initializers with their per-channel scales, biases as int32 on the ``s_x · s_w``
    grid, activations as uint8 QuantizeLinear/DequantizeLinear pairs with slimkit's calibrated scale and zero point.
    """
    from slimkit.quantize import QuantWrapper

    if not any(isinstance(m, QuantWrapper) and m.enabled and m.input_quant is not None for m in model.modules()):
        raise ExportError(f"{type(model).__name__} has no int8 layer (weight + activation quantized): quantize it "
                          "with slimkit.quantize.quantize_ptq / convert_qat first (weight-only models export as fp32)")
    import onnx

    target = Path(path)
    with tempfile.TemporaryDirectory(prefix="slimkit-qdq-") as tmp:
        raw = export_onnx(model, example_inputs, Path(tmp) / "raw.onnx", dynamic_batch=dynamic_batch, opset=opset)
        graph_model = onnx.load(str(raw))
    _fold_constants(graph_model)
    _quantize_biases(graph_model)
    _prune_initializers(graph_model)
    onnx.checker.check_model(graph_model)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target, "wb") as fh:
        fh.write(graph_model.SerializeToString())
    return target


def _constant_values(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _fold_constants(model) -> None:
    """Evaluate every node whose inputs are all constants (qparam arithmetic, weight QuantizeLinear), except
    DequantizeLinear, which must stay so that ONNX Runtime sees the QDQ pattern; results become initializers."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    values = _constant_values(graph)
    opset = [helper.make_opsetid(o.domain, o.version) for o in model.opset_import]
    kept = []
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        inputs_const = all((name == "" or name in values) for name in node.input)
        if node.op_type != "DequantizeLinear" and inputs_const and node.input:
            sub_inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
                          for n in node.input if n]
            sub_outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output]
            sub = helper.make_model(helper.make_graph([node], "fold", sub_inputs, sub_outputs), opset_imports=opset)
            results = ReferenceEvaluator(sub).run(None, {n: values[n] for n in node.input if n})
            for name, value in zip(node.output, results):
                values[name] = np.asarray(value)
            continue
        kept.append(node)
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    existing = {init.name for init in graph.initializer}
    for name in sorted(used - existing):
        if name in values:
            graph.initializer.append(numpy_helper.from_array(values[name], name))


def _quantize_biases(model) -> None:
    """Store the float bias of a Conv/Gemm fed by two DequantizeLinear nodes as int32 (scale ``s_x · s_w``, zero
    point 0) behind its own DequantizeLinear — the form ONNX Runtime fuses into QLinearConv / QGemm."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    new_nodes = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in inits:
            continue
        dq_x, dq_w = producer.get(node.input[0]), producer.get(node.input[1])
        if not (dq_x and dq_w and dq_x.op_type == dq_w.op_type == "DequantizeLinear"):
            continue
        s_x = numpy_helper.to_array(inits[dq_x.input[1]]).astype(np.float64).reshape(-1)
        s_w = numpy_helper.to_array(inits[dq_w.input[1]]).astype(np.float64).reshape(-1)
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        scale = (s_x * s_w).astype(np.float32)
        q = np.clip(np.round(bias / scale.astype(np.float64)), -(2**31), 2**31 - 1).astype(np.int32)
        base = node.input[2]
        graph.initializer.extend([
            numpy_helper.from_array(q, f"{base}_int32"),
            numpy_helper.from_array(scale if scale.size > 1 else scale.reshape(()), f"{base}_scale"),
            numpy_helper.from_array(np.zeros(scale.shape if scale.size > 1 else (), np.int32), f"{base}_zero_point"),
        ])
        attrs = {"axis": 0} if scale.size > 1 else {}
        new_nodes.append(helper.make_node(
            "DequantizeLinear", [f"{base}_int32", f"{base}_scale", f"{base}_zero_point"], [f"{base}_dq"],
            name=f"{base}_DequantizeLinear", **attrs,
        ))
        node.input[2] = f"{base}_dq"
    if new_nodes:
        nodes = new_nodes + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)


def _prune_initializers(model) -> None:
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name in used or i.name not in {x.name for x in keep}]
    del graph.input[:]
    graph.input.extend(inputs)


def optimized_op_types(path: str | os.PathLike, threads: int = 1) -> dict[str, int]:
    """Op types (with counts) of the graph ONNX Runtime actually runs after its optimizations — shows whether
    QDQ pairs became integer kernels (QLinearConv, QGemm, MatMulInteger, ...) or fell back to float."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="slimkit-ort-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def int8_kernel_count(path: str | os.PathLike) -> int:
    """How many nodes of the optimized graph are integer kernels."""
    return sum(n for op, n in optimized_op_types(path).items() if op in INT8_KERNELS)


class _Reader:
    """Feeds calibration batches to onnxruntime.quantization (its CalibrationDataReader protocol)."""

    def __init__(self, input_name: str, batches: Iterable[torch.Tensor]) -> None:
        self._it = iter([{input_name: b.detach().cpu().numpy().astype(np.float32)} for b in batches])

    def get_next(self):
        return next(self._it, None)


def _calibration_batches(loader: Iterable) -> list[torch.Tensor]:
    from slimkit.quantize._ptq import _batches

    batches = list(_batches(loader))
    if not batches:
        raise ExportError("the calibration loader yielded no batches: give it at least one batch of inputs")
    return batches


def ort_quantize_static(
    fp32_path: str | os.PathLike, calibration_loader: Iterable, path: str | os.PathLike, *,
    method: str = "minmax", per_channel: bool = True,
) -> Path:
    """ONNX Runtime's own static int8 quantization (QDQ, uint8 activations, int8 weights) of an fp32 ONNX file,
    calibrated on the same batches slimkit uses; ``method`` is ``minmax``, ``entropy`` or ``percentile``."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ExportError(f"unknown ONNX Runtime calibration method '{method}': choose one of {', '.join(methods)}")
    batches = _calibration_batches(calibration_loader)
    name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slimkit-ortq-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception as error:
            log.info("quant_pre_process failed (%s); quantizing the file as exported", error)
            pre = Path(fp32_path)
        out = Path(tmp) / "q.onnx"
        quantize_static(
            str(pre), str(out), _Reader(name, batches), quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=methods[method],
        )
        with atomic_write(target, "wb") as fh:
            fh.write(out.read_bytes())
    return target


def ort_quantize_dynamic(fp32_path: str | os.PathLike, path: str | os.PathLike) -> Path:
    """ONNX Runtime's dynamic quantization (int8 weights, activations quantized at run time; MatMul/Gemm and Conv)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slimkit-ortd-") as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_dynamic(str(fp32_path), str(out), weight_type=QuantType.QInt8)
        with atomic_write(target, "wb") as fh:
            fh.write(out.read_bytes())
    return target


def onnx_accuracy(path: str | os.PathLike, loader: Iterable, threads: int = 1) -> float:
    """Top-1 accuracy of an ONNX classifier in ONNX Runtime over ``loader`` batches ``(x, y)``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = total = 0
    for x, y in loader:
        logits = session.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0]
        correct += int((logits.argmax(axis=1) == y.cpu().numpy()).sum())
        total += int(y.numel())
    if total == 0:
        raise ExportError("the evaluation loader yielded no samples")
    return correct / total
