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

from slimkit._cpu import resolve_reduce_range
from slimkit._io import atomic_write
from slimkit.export._onnx import DEFAULT_OPSET, ExportError, export_onnx

log = logging.getLogger(__name__)

INT8_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QLinearAdd", "NhwcQLinearConv", "QLinearGlobalAveragePool", "QLinearAveragePool",
    "QLinearMul", "QLinearLeakyRelu", "QLinearConcat", "QLinearSigmoid", "QLinearSoftmax", "QLinearWhere",
})


def export_qdq(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a frozen slimkit-quantized model (``quantize`` / ``convert_qat``) to a QDQ int8 ONNX file.

    Weights are stored as int8 initializers with their per-channel scales, biases as int32 on the ``s_x · s_w``
    grid, activations as uint8 QuantizeLinear/DequantizeLinear pairs with slimkit's calibrated scale and zero point.
    """
    from slimkit.quantize import QuantWrapper

    if not any(isinstance(m, QuantWrapper) and m.enabled and m.input_quant is not None for m in model.modules()):
        raise ExportError(f"{type(model).__name__} has no int8 layer (weight + activation quantized): quantize it "
                          "with slimkit.quantize.quantize / convert_qat first (weight-only models export as fp32)")
    import onnx

    target = Path(path)
    with tempfile.TemporaryDirectory(prefix="slimkit-qdq-") as tmp:
        raw = export_onnx(model, example_inputs, Path(tmp) / "raw.onnx", dynamic_batch=dynamic_batch, opset=opset)
        graph_model = onnx.load(str(raw))
    _fold_constants(graph_model)
    _quantize_biases(graph_model)
    _integer_pads(graph_model)
    _drop_requantize_identities(graph_model)
    _shapes_from_integers(graph_model)
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
    taken: set[str] = set()
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
        if f"{base}_int32" in taken:  # a layer called twice: its bias twice, each on its own call's grid
            base = f"{base}_{sum(name.startswith(base) for name in taken)}"
        taken.add(f"{base}_int32")
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


def _qparams(inits: dict, node) -> tuple | None:
    """(scale, zero point, dtype) of a per-tensor QuantizeLinear/DequantizeLinear with constant qparams."""
    from onnx import numpy_helper

    if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
        return None
    scale, zero = numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(inits[node.input[2]])
    if scale.size != 1 or zero.size != 1:
        return None
    return float(scale.reshape(())), int(zero.reshape(())), zero.dtype


def _consumers(graph) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _integer_pads(model) -> None:
    """``DequantizeLinear → Pad(constant 0) → QuantizeLinear`` with equal qparams becomes a Pad of the integer
    tensor with the zero point as its constant: exactly the same values (0 is the zero point on the grid), and ONNX
    Runtime pads uint8 directly — its QDQ rules have no Pad fusion, so the pair would otherwise stay in float (as
    in the files its own ``quantize_static`` writes, e.g. ResNet's option-A shortcuts)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    removed = []
    for pad in graph.node:
        if pad.op_type != "Pad" or any(a.name == "mode" and a.s not in (b"", b"constant") for a in pad.attribute):
            continue
        dq = producer.get(pad.input[0])
        after = users.get(pad.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        q = after[0]
        params = _qparams(inits, dq)
        if params is None or params != _qparams(inits, q) or q.output[0] in outputs:
            continue
        value = pad.input[2] if len(pad.input) > 2 else ""
        if value and (value not in inits or np.any(numpy_helper.to_array(inits[value]) != 0)):
            continue
        if len(pad.input) > 3 and pad.input[3]:
            continue  # opset ≥ 18 ``axes`` input: left as exported
        zero = numpy_helper.from_array(np.array(params[1], dtype=params[2]), f"{pad.name or pad.output[0]}_zero_point")
        graph.initializer.append(zero)
        inits[zero.name] = zero
        pads = pad.input[1] if len(pad.input) > 1 else ""
        del pad.input[:]
        pad.input.extend([dq.input[0], pads, zero.name])
        pad.output[0] = q.output[0]
        removed.append(q)
    for node in removed:
        graph.node.remove(node)
    _remove_dead_dequantize(graph)


def _drop_requantize_identities(model) -> None:
    """``DequantizeLinear → QuantizeLinear`` with the same qparams is the identity on the integers: the Q's users
    read the DQ's input directly (ties of shared quantizers can produce such pairs)."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    removed = []
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.output[0] in outputs:
            continue
        dq = producer.get(q.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        params = _qparams(inits, dq)
        if params is not None and params == _qparams(inits, q):
            rename[q.output[0]] = dq.input[0]
            removed.append(q)
    if not removed:
        return
    for node in removed:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            while name in rename:
                name = rename[name]
            node.input[i] = name
    _remove_dead_dequantize(graph)


def _shapes_from_integers(model) -> None:
    """``Shape``/``Size`` of a DequantizeLinear output read the integer tensor instead (same shape): otherwise ONNX
    Runtime dequantizes a whole activation only to learn its shape (dynamic-batch reshapes, chunk)."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type in ("Shape", "Size") and node.input and node.input[0] in producer:
            dq = producer[node.input[0]]
            if dq.op_type == "DequantizeLinear":
                node.input[0] = dq.input[0]
    _remove_dead_dequantize(graph)


def _remove_dead_dequantize(graph) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in used]
    for node in dead:
        graph.node.remove(node)


def _prune_initializers(model) -> None:
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name in used or i.name not in {x.name for x in keep}]
    del graph.input[:]
    graph.input.extend(inputs)


def _optimized_graph(path: str | os.PathLike, threads: int = 1, level: str = "extended"):
    import onnx
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if level not in levels:
        raise ExportError(f"unknown ONNX Runtime optimization level '{level}': choose one of {', '.join(levels)}")
    with tempfile.TemporaryDirectory(prefix="slimkit-ort-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath).graph


def optimized_op_types(path: str | os.PathLike, threads: int = 1, level: str = "extended") -> dict[str, int]:
    """Op types (with counts) of the graph ONNX Runtime actually runs after its optimizations — shows whether
    QDQ pairs became integer kernels (QLinearConv, QGemm, MatMulInteger, ...) or fell back to float. ``level``:
    ``basic``, ``extended`` (where the QDQ fusions happen; the default) or ``all`` (plus layout changes)."""
    counts: dict[str, int] = {}
    for node in _optimized_graph(path, threads, level).node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


#: Ops that read a tensor's shape, not its values: not float computation even when fed dequantized data.
_SHAPE_OPS = frozenset({"Shape", "Size"})


def float_islands(path: str | os.PathLike, level: str = "extended") -> list[tuple[str, str]]:
    """The float computations inside an int8 graph as ONNX Runtime runs it: ``(op_type, node name)`` of every
    optimized-graph node that is reached from a DequantizeLinear and reaches a QuantizeLinear (through other float
    nodes) — an op the runtime executes in float between integer parts, e.g. ``DQ → Add → Q`` where no QLinearAdd
    was formed. A requantization (``DequantizeLinear → QuantizeLinear`` with nothing between) is listed as
    ``("DequantizeLinear", name)``. Float ops before the first QuantizeLinear or after the last DequantizeLinear
    (a float stem or head) are not islands. An int8 graph with no float island returns ``[]``."""
    graph = _optimized_graph(path, level=level)
    users = _consumers(graph)
    producer = {out: node for node in graph.node for out in node.output}
    boundary = {"QuantizeLinear", "DequantizeLinear"} | _SHAPE_OPS | INT8_KERNELS

    def walk(starts, step) -> set[int]:
        seen: set[int] = set()
        stack = list(starts)
        while stack:
            node = stack.pop()
            if id(node) in seen or node.op_type in boundary:
                continue
            seen.add(id(node))
            stack.extend(step(node))
        return seen

    dqs = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    qs = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    after_dq = walk([u for dq in dqs for u in users.get(dq.output[0], [])],
                    lambda n: [u for out in n.output for u in users.get(out, [])])
    before_q = walk([producer[q.input[0]] for q in qs if q.input[0] in producer],
                    lambda n: [producer[i] for i in n.input if i in producer])
    islands = [(n.op_type, n.name) for n in graph.node if id(n) in after_dq and id(n) in before_q]
    islands += [("DequantizeLinear", dq.name) for dq in dqs
                if any(u.op_type == "QuantizeLinear" for u in users.get(dq.output[0], []))]
    return islands


def int8_kernel_count(path: str | os.PathLike) -> int:
    """How many nodes of the optimized graph are integer kernels."""
    return sum(n for op, n in optimized_op_types(path).items() if op in INT8_KERNELS)


class _Reader:
    """Feeds calibration batches to onnxruntime.quantization (its CalibrationDataReader protocol)."""

    def __init__(self, input_name: str, batches: Iterable[torch.Tensor]) -> None:
        self._it = iter([{input_name: b.detach().cpu().numpy().astype(np.float32)} for b in batches])

    def get_next(self):
        return next(self._it, None)


def _calibration_batches(loader: Iterable, largest: int = 64) -> list[torch.Tensor]:
    """The calibration images in batches of one size (the largest divisor of their number up to ``largest``):
    ONNX Runtime's histogram calibrators stack the outputs of all batches and fail on a short last batch."""
    from slimkit.quantize._ptq import _batches

    batches = list(_batches(loader))
    if not batches:
        raise ExportError("the calibration loader yielded no batches: give it at least one batch of inputs")
    images = torch.cat([b.detach().cpu() for b in batches])
    size = max(d for d in range(1, min(largest, len(images)) + 1) if len(images) % d == 0)
    return list(images.split(size))


def ort_quantize_static(
    fp32_path: str | os.PathLike, calibration_loader: Iterable, path: str | os.PathLike, *,
    method: str = "minmax", per_channel: bool = True, reduce_range: bool | None = None,
) -> Path:
    """ONNX Runtime's own static int8 quantization (QDQ, uint8 activations, int8 weights) of an fp32 ONNX file,
    calibrated on the same batches slimkit uses; ``method`` is ``minmax``, ``entropy`` or ``percentile``.
    ``reduce_range`` (ONNX Runtime's reduced int8 weight range, [-64, 64]) defaults to what its guide advises for
    this CPU: on for x86 without VNNI, off elsewhere — the rule slimkit's own ``QuantConfig(reduce_range=None)``
    follows."""
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
            reduce_range=resolve_reduce_range(reduce_range),
        )
        with atomic_write(target, "wb") as fh:
            fh.write(out.read_bytes())
    return target


def ort_quantize_dynamic(fp32_path: str | os.PathLike, path: str | os.PathLike, *,
                         reduce_range: bool | None = None) -> Path:
    """ONNX Runtime's dynamic quantization (int8 weights, activations quantized at run time; MatMul/Gemm and Conv);
    ``reduce_range`` as in :func:`ort_quantize_static`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slimkit-ortd-") as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_dynamic(str(fp32_path), str(out), weight_type=QuantType.QInt8,
                         reduce_range=resolve_reduce_range(reduce_range))
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
