import numpy as np
import pytest
import torch

from slimkit import models
from slimkit.data import TensorLoader, create_data
from slimkit.export import (
    ExportError,
    export_onnx,
    export_qdq,
    onnx_accuracy,
    optimized_op_types,
    ort_quantize_dynamic,
    ort_quantize_static,
    run_onnx,
)
from slimkit.quantize import QuantConfig, quantize, quantize_weights


@pytest.fixture(scope="module")
def data():
    return create_data("mnist", batch_size=256, calibration_size=256)


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
@pytest.mark.parametrize("weight_bits", [8, 4])
def test_qdq_runs_int8_kernels_and_matches_fake_quant(tmp_path, data, name, weight_bits):
    torch.manual_seed(0)
    model = models.create(name, **({"width": 0.5} if name == "resnet20" else {})).eval()
    q = quantize(model, data.example_input(), QuantConfig(weight_bits=weight_bits), data=data.calibration)
    path = export_qdq(q, data.example_input(), tmp_path / "q.onnx")
    ops = optimized_op_types(path)
    assert ops.get("QLinearConv", 0) >= 2 and "Conv" not in ops
    if name == "lenet5":  # a pool's input and the next layer's input share one grid: ORT pools in int8, no DQ/Q
        assert ops.get("QuantizeLinear") == 1 and "DequantizeLinear" not in ops, ops  # only the input is quantized
    x = data.test.inputs[:128]
    with torch.no_grad():
        expected = q(x).numpy()
    got = run_onnx(path, x)
    # Identical integer arithmetic; differences come from float rounding at exact .5 ties only.
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.99
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    fp32 = export_onnx(model, data.example_input(), tmp_path / "fp32.onnx")
    assert path.stat().st_size < 0.5 * fp32.stat().st_size  # graph text (names, qparams) dominates tiny models


def test_ort_paths_and_accuracy(tmp_path, data):
    model = models.create("lenet5").eval()
    fp32 = export_onnx(model, data.example_input(), tmp_path / "fp32.onnx")
    static = ort_quantize_static(fp32, data.calibration, tmp_path / "static.onnx")
    dynamic = ort_quantize_dynamic(fp32, tmp_path / "dynamic.onnx")
    assert optimized_op_types(static).get("QLinearConv", 0) == 2
    assert static.stat().st_size < 0.4 * fp32.stat().st_size and dynamic.stat().st_size < 0.4 * fp32.stat().st_size
    sub = TensorLoader(data.test.inputs[:500], data.test.targets[:500], batch_size=250)
    x = sub.inputs
    with torch.no_grad():
        ref = model(x).argmax(1).numpy()
    for path in (static, dynamic):
        assert np.mean(run_onnx(path, x).argmax(1) == ref) > 0.9
    assert onnx_accuracy(fp32, sub) == pytest.approx(float(np.mean(ref == sub.targets.numpy())))


def test_weight_only_model_is_refused(tmp_path, data):
    q = quantize_weights(models.create("lenet5").eval(), None, QuantConfig(weight_bits=4, activation_bits=None))
    with pytest.raises(ExportError, match="no int8 layer"):
        export_qdq(q, data.example_input(), tmp_path / "q.onnx")


def _qdq_pad_graph(zero_point: int):
    """x → Q → DQ → Pad(channels, 0) → Q → DQ → y, every Q/DQ on one grid (a padded shortcut in an int8 ResNet)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, np.uint8), "z"),
             numpy_helper.from_array(np.array([0, 1, 0, 0, 0, 2, 0, 0], np.int64), "pads")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q0"]),
             helper.make_node("DequantizeLinear", ["q0", "s", "z"], ["d0"]),
             helper.make_node("Pad", ["d0", "pads"], ["p"], name="pad"),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_padding_runs_on_the_integers_with_the_zero_point():
    from onnx.reference import ReferenceEvaluator

    from slimkit.export._qdq import _integer_pads

    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    model = _qdq_pad_graph(zero_point=100)
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    _integer_pads(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["QuantizeLinear", "Pad", "DequantizeLinear"]  # no float Pad between DQ and Q any more
    got = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert got.shape == (2, 6, 4, 4) and np.array_equal(got, expected)  # padded with the zero point: exact zeros
    # Padding with another value is not on the grid's zero: that Pad is left as it is.
    other = _qdq_pad_graph(zero_point=100)
    from onnx import numpy_helper

    other.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    other.graph.node[2].input.append("one")
    _integer_pads(other)
    assert [n.op_type for n in other.graph.node].count("Pad") == 1 and len(other.graph.node) == 5
