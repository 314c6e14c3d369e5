"""Activation quantizers placed over the traced graph: int8 graphs that ONNX Runtime runs with no float islands.

The models are untrained but get BatchNorm statistics from a few MNIST batches, which gives them realistic activation
ranges; accuracy is checked on a briefly trained ResNet-20 (cached for the module)."""

import operator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit import models
from slimkit.data import TensorLoader, create_data
from slimkit.export import export_qdq, float_islands, onnx_accuracy, optimized_op_types, run_onnx
from slimkit.quantize import QuantConfig, quant_report, quantize, wrappers


@pytest.fixture(scope="module")
def mnist():
    return create_data("mnist", batch_size=64, calibration_size=128)


def _with_bn_statistics(model: nn.Module, data) -> nn.Module:
    """Running BatchNorm statistics from the calibration images (no training): activations of realistic scale."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for x, _ in data.calibration:
            model(x)
    return model.eval()


def _count(model: nn.Module, *targets) -> int:
    """How many times the traced model calls one of ``targets`` (``operator.add``, ``torch.cat``)."""
    return sum(node.target in targets for node in torch.fx.symbolic_trace(model).graph.nodes)


def _int8(tmp_path, model, data, name="q", **config):
    q = quantize(model, data.example_input(), QuantConfig(**config), data=data.calibration)
    return q, export_qdq(q, data.example_input(), tmp_path / f"{name}.onnx")


def _agrees(q, path, x, argmax=0.97, rel=0.02):
    """ONNX Runtime's integer kernels compute what the fake-quant model simulates: the same integer arithmetic,
    except that float evaluation order can move a value by one step at a rounding tie (which then propagates)."""
    with torch.no_grad():
        expected = q(x).numpy()
    got = run_onnx(path, x)
    agreement, diff = np.mean(got.argmax(1) == expected.argmax(1)), np.abs(got - expected).mean()
    assert agreement >= argmax and diff <= rel * np.abs(expected).mean(), (agreement, diff / np.abs(expected).mean())


def test_resnet20_int8_graph_has_no_float_add(tmp_path, mnist):
    model = _with_bn_statistics(models.create("resnet20", width=0.25), mnist)
    q, path = _int8(tmp_path, model, mnist)
    assert quant_report(q).placement == "graph" and not quant_report(q).float_ops
    ops = optimized_op_types(path)
    assert "Add" not in ops and "Relu" not in ops and "Pad" in ops
    assert (ops["QLinearConv"], ops["QLinearAdd"], ops["QLinearGlobalAveragePool"], ops["QGemm"]) == (19, 9, 1, 1)
    assert ops["QuantizeLinear"] == 1 and "DequantizeLinear" not in ops  # quantize the input once, never leave int8
    assert float_islands(path) == []
    _agrees(q, path, mnist.test.inputs[:64])
    # Quantizing only around the layers leaves every residual add in float between DQ and Q: the check sees them.
    _, around = _int8(tmp_path, model, mnist, "layers", placement="layers")
    islands = [op for op, _ in float_islands(around)]
    assert islands.count("Add") == 9 and "QLinearAdd" not in optimized_op_types(around)


COMPACT = {"mobilenet_v2": {"width": 0.35}, "shufflenet_v1": {"width": 0.25}, "shufflenet_v2": {"width": 0.5}}


@pytest.fixture(scope="module")
def compact(mnist, tmp_path_factory):
    """name → (float model, int8 model, its QDQ file), each made once for the module, when a test first asks for it
    (xdist spreads the module's tests over its workers: each makes only the models its own tests use)."""
    made = {}

    def get(name):
        if name not in made:
            torch.manual_seed(0)
            model = _with_bn_statistics(models.create(name, **COMPACT[name]), mnist)
            made[name] = (model, *_int8(tmp_path_factory.mktemp(name), model, mnist))
        return made[name]
    return get


@pytest.mark.parametrize("name", list(COMPACT))
def test_compact_int8_graphs_have_no_float_islands(mnist, compact, name):
    model, q, path = compact(name)
    adds, concats = _count(model, operator.add), _count(model, torch.cat)
    assert adds + concats >= 10
    ops = optimized_op_types(path)
    assert float_islands(path) == [], ops
    assert ops.get("QLinearConcat", 0) == concats and ops.get("QLinearAdd", 0) == adds
    assert ops["QuantizeLinear"] == 1 and "DequantizeLinear" not in ops and "Conv" not in ops
    _agrees(q, path, mnist.test.inputs[:64], argmax=0.95, rel=0.04)  # untrained, 50 layers deep: ties propagate


def test_concat_inputs_share_the_output_grid(compact):
    # ShuffleNetV2: the untouched half of every unit passes through concat and shuffle, so a stage is one grid.
    _, q, _ = compact("shufflenet_v2")
    shared = quant_report(q).shared_scales
    cats = [members for members in shared.values() if any(m.startswith("cat") for m in members)]
    assert len(cats) == 3  # one per stage
    stage2 = [layer for layer in wrappers(q) if layer.startswith("stage2.") and layer.endswith("right.5")]
    grids = {id(q.get_submodule(layer).output_quant) for layer in stage2}
    assert len(grids) == 1 and len(stage2) == 4  # every unit's branch output lands on the stage's grid


class _Functional(nn.Module):
    """The functional spellings of the ops graph placement handles."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c, self.fc = nn.Conv2d(4, 4, 1), nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.a(x))
        x = F.relu(x.add(self.b(x)))
        left, right = x.chunk(2, dim=1)
        x = torch.cat([left, F.relu6(self.c(right))], 1)
        x = F.avg_pool2d(F.pad(F.max_pool2d(x, 2), (1, 1, 1, 1)), 2)
        x = F.adaptive_avg_pool2d(x.permute(0, 1, 3, 2).contiguous(), 1).flatten(1)
        return self.fc(torch.cat([x, x * torch.sigmoid(x)], 1))


def test_functional_ops_run_in_int8(tmp_path, mnist):
    torch.manual_seed(0)
    q, path = _int8(tmp_path, _Functional().eval(), mnist)
    ops = optimized_op_types(path)
    assert float_islands(path) == [], ops
    for op in ("QLinearAdd", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearMul",
               "QLinearSigmoid"):
        assert op in ops, op
    assert not {"Relu", "Clip", "Sigmoid", "DequantizeLinear"} & set(ops), ops  # fused, or run on uint8
    _agrees(q, path, mnist.test.inputs[:64], argmax=0.9)


class _PoolThenRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool, self.relu, self.fc = nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Linear(676, 3)

    def forward(self, x):
        return self.fc(self.relu(self.pool(self.conv(x))).flatten(1))


def test_relu_after_pooling_is_moved_next_to_its_conv(tmp_path, mnist):
    model = _PoolThenRelu().eval()
    q, path = _int8(tmp_path, model, mnist)
    # relu(maxpool(y)) == maxpool(relu(y)): the activation now follows the conv, and its grid starts at 0
    assert "self.relu(conv)" in q.slimkit_graph_code.replace(" ", "")
    assert float(q.slimkit_act_quant["relu"].zero_point) == 0.0
    ops = optimized_op_types(path)
    assert "Relu" not in ops and float_islands(path) == []
    _agrees(q, path, mnist.test.inputs[:64], argmax=0.9)


class _Hardswish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.b = nn.Conv2d(1, 4, 3), nn.Hardswish(), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.b(self.act(self.a(x))).mean((2, 3))


def test_an_op_without_integer_kernel_stays_float_and_is_reported(tmp_path, mnist):
    q, path = _int8(tmp_path, _Hardswish().eval(), mnist)
    # ONNX Runtime has no QDQ rule for HardSwish (an island between two int8 convs) nor ReduceMean (the float head)
    assert quant_report(q).float_ops == {"act": "Hardswish", "mean": "mean"}
    assert sorted(op for op, _ in float_islands(path)) == ["HardSigmoid", "Mul"]  # x · hardsigmoid(x) at opset 17


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return self.conv(x).flatten(1)


def test_untraceable_model_falls_back_to_layer_placement(mnist):
    q = quantize(_Branchy().eval(), mnist.example_input(), data=mnist.calibration)
    report = quant_report(q)
    assert report.placement == "layers" and "could not trace" in report.float_layers["<graph>"]
    assert report.quantized == ["conv"] and q.conv.input_quant is not None and not q.conv.graph_quantized


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(1, 4, 1)

    def forward(self, x):
        x = self.head(x)
        return self.conv(F.relu(self.conv(x))).mean((2, 3))


def test_a_layer_called_twice_reads_one_input_grid(tmp_path, mnist):
    q, path = _int8(tmp_path, _Shared().eval(), mnist)
    inputs = [n for n in q.slimkit_graph_code.splitlines() if "self.conv(" in n]
    assert len(inputs) == 2
    shared = quant_report(q).shared_scales
    assert any({"head", "relu"} <= set(members) for members in shared.values()), shared
    _agrees(q, path, mnist.test.inputs[:32], argmax=0.9)


def test_placement_is_validated():
    from slimkit import ConfigError

    with pytest.raises(ConfigError, match="placement 'everywhere' is unknown: use one of graph, layers"):
        QuantConfig(placement="everywhere")


@pytest.fixture(scope="module")
def trained_resnet(mnist, request):
    """ResNet-20 at a quarter width, one epoch (Adam) on 8,000 MNIST images: 89–91 % by CPU — kept in pytest's cache."""
    from slimkit.train import fit, load_weights_, save_checkpoint

    torch.manual_seed(0)  # before creating the model: its initialization must not depend on the tests run before
    model = models.create("resnet20", width=0.25)
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider: then trained every run
    path = cache.mkdir("slimkit-int8") / "resnet20-w0.25-n8000-adam2e-3-b32.pt" if cache is not None else None
    if path is not None and path.is_file():
        return load_weights_(model, path).eval()
    subset = TensorLoader(mnist.train.inputs[:8000], mnist.train.targets[:8000], batch_size=32, shuffle=True)
    fit(model, subset, epochs=1, optimizer=lambda p: torch.optim.Adam(p, 2e-3), progress=False)
    if path is not None:
        save_checkpoint(model.state_dict(), path)
    return model.eval()


def test_int8_graph_keeps_accuracy_on_mnist(tmp_path, mnist, trained_resnet):
    from slimkit.export import export_onnx

    test = TensorLoader(mnist.test.inputs[:2000], mnist.test.targets[:2000], batch_size=500)
    fp32 = onnx_accuracy(export_onnx(trained_resnet, mnist.example_input(), tmp_path / "fp32.onnx"), test)
    q, path = _int8(tmp_path, trained_resnet, mnist)
    int8 = onnx_accuracy(path, test)
    assert fp32 > 0.85 and int8 > fp32 - 0.01, (fp32, int8)  # a trained model (89–91 % by CPU), not chance
    _agrees(q, path, mnist.test.inputs[:500], argmax=0.99, rel=0.03)
