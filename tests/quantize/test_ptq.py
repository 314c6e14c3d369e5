import pytest
import torch
from torch import nn

from slimkit import ConfigError, DataError, models
from slimkit.analysis import evaluate, profile
from slimkit.data import TensorLoader, create_data
from slimkit.quantize import (
    OBSERVERS,
    FakeQuantize,
    QuantConfig,
    QuantWrapper,
    layer_sensitivity,
    quant_report,
    quantize,
    quantize_weights,
    weight_codes,
    wrappers,
)


@pytest.fixture(scope="module")
def mnist():
    return create_data("mnist", batch_size=256, calibration_size=512)


@pytest.fixture(scope="module")
def lenet(mnist):
    from slimkit.train import fit

    torch.manual_seed(0)
    model = models.create("lenet5")
    subset = TensorLoader(mnist.train.inputs[:12000], mnist.train.targets[:12000], batch_size=128, shuffle=True)
    fit(model, subset, epochs=1, progress=False)
    return model.eval()


def test_ptq_int8_keeps_accuracy_and_leaves_caller_untouched(mnist, lenet):
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    q = quantize(lenet, mnist.example_input(), data=mnist.calibration)
    assert all(torch.equal(before[k], v) for k, v in lenet.state_dict().items())
    report = quant_report(q)
    assert report.quantized == ["conv1", "conv2", "fc1", "fc2"] and report.fused_relu == ["fc1"]
    assert report.calibration_batches == len(mnist.calibration) >= 1
    test = TensorLoader(mnist.test.inputs[:4000], mnist.test.targets[:4000], batch_size=500)
    fp32, int8 = evaluate(lenet, test).accuracy, evaluate(q, test).accuracy
    assert fp32 > 0.9 and abs(fp32 - int8) < 0.005


@pytest.mark.parametrize("observer", OBSERVERS.names())
def test_every_observer_quantizes_lenet(mnist, lenet, observer):
    q = quantize(lenet, mnist.example_input(), QuantConfig(observer=observer), data=mnist.calibration)
    sub = TensorLoader(mnist.test.inputs[:2000], mnist.test.targets[:2000], batch_size=500)
    # Clipping observers trade outliers for resolution; entropy (KL) clips hardest and costs ~2 points on this
    # briefly-trained LeNet, so the bound is loose; the benchmark reports each observer on trained models.
    assert evaluate(q, sub).accuracy > evaluate(lenet, sub).accuracy - 0.03


def test_empty_calibration_loader_is_an_error(lenet):
    empty = TensorLoader(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), batch_size=8)
    with pytest.raises(DataError, match="empty"):
        quantize(lenet, torch.zeros(1, 1, 28, 28), data=empty)
    with pytest.raises(DataError, match="no batches"):
        quantize(lenet, torch.zeros(1, 1, 28, 28), data=iter([]))


def test_unsupported_layer_left_in_float_and_listed():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(24, 3)).eval()
    calib = [torch.randn(8, 2, 8) for _ in range(2)]
    q = quantize(model, calib[0], data=calib)
    report = quant_report(q)
    assert report.quantized == ["2"]
    assert report.float_layers == {"0": "unsupported layer type Conv1d"}
    assert isinstance(q[0], nn.Conv1d) and isinstance(q[2], QuantWrapper)
    with torch.no_grad():
        assert torch.allclose(q(calib[0]), model(calib[0]), atol=0.05)


def test_asking_for_an_unsupported_layer_is_an_error_before_work():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(24, 3))
    with pytest.raises(ConfigError, match="Conv1d"):
        quantize(model, torch.randn(1, 2, 8), QuantConfig(layers=("0",)), data=[torch.randn(1, 2, 8)])
    with pytest.raises(ConfigError, match="matches no layer"):
        quantize(model, torch.randn(1, 2, 8), QuantConfig(layers=("conv9",)), data=[torch.randn(1, 2, 8)])


def test_skip_by_glob_and_regex(mnist, lenet):
    q = quantize(lenet, mnist.example_input(), QuantConfig(skip=("conv*", "re:fc2")), data=mnist.calibration)
    assert quant_report(q).quantized == ["fc1"]
    assert set(quant_report(q).float_layers) == {"conv1", "conv2", "fc2"}


def test_bias_correction_reduces_output_bias_at_low_bits(mnist, lenet):
    x = mnist.test.inputs[:2000]
    with torch.no_grad():
        ref = lenet(x)
    shifts = {}
    for corrected in (False, True):
        config = QuantConfig(weight_bits=3, per_channel=False, bias_correction=corrected)
        q = quantize(lenet, mnist.example_input(), config, data=mnist.calibration)
        with torch.no_grad():
            shifts[corrected] = float((q(x) - ref).mean(dim=0).abs().mean())
        assert bool(quant_report(q).bias_corrected) is corrected
    assert shifts[True] < shifts[False]


def test_sensitivity_sweep_keeps_the_worst_layer_in_float(mnist, lenet):
    q = quantize(lenet, mnist.example_input(), QuantConfig(weight_bits=2), data=mnist.calibration)
    scores = layer_sensitivity(q, mnist.calibration)
    assert set(scores) == {"conv1", "conv2", "fc1", "fc2"}
    worst = max(scores, key=scores.get)
    kept = quantize(lenet, mnist.example_input(), QuantConfig(weight_bits=2, keep_sensitive=1), data=mnist.calibration)
    report = quant_report(kept)
    assert worst in report.float_layers and worst not in report.quantized
    assert not wrappers(kept)[worst].enabled
    # keeping every selected layer float would quantize nothing: refused before any calibration
    with pytest.raises(ConfigError, match="use at most 2"):
        quantize(lenet, mnist.example_input(), QuantConfig(keep_sensitive=3, skip=("fc2",)), data=mnist.calibration)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_only_storage_bytes_in_profile(lenet, bits):
    q = quantize_weights(lenet, None, QuantConfig(weight_bits=bits, activation_bits=None))
    assert not any(isinstance(m, FakeQuantize) and m.spec.bits != bits for m in q.modules())
    prof = profile(q, torch.zeros(1, 1, 28, 28))
    w = lenet.fc1.weight
    expected_fc1 = (w.numel() * bits + 7) // 8 + 4 * w.shape[0] + 4 * lenet.fc1.bias.numel()
    assert prof.row("fc1.layer").bytes == expected_fc1  # bytes sit with the parameters, MACs with the wrapper
    assert prof.row("fc1").macs == 400_000
    fp32_bytes = profile(lenet, torch.zeros(1, 1, 28, 28)).total.bytes
    assert prof.total.bytes < fp32_bytes * bits / 32 + 8 * 1100
    assert prof.total.macs == profile(lenet, torch.zeros(1, 1, 28, 28)).total.macs
    codes, scale = weight_codes(q.fc1)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 2 ** (bits - 1) - 1
    with torch.no_grad():
        assert torch.allclose(codes.float() * scale.reshape(-1, 1), q.fc1.quantized_weight(), atol=1e-6)


@pytest.mark.parametrize(("options", "message"), [({"weight_bits": 4}, "activation_bits=None"),
                                                   ({"activation_bits": None, "group_size": 32}, "use slimkit")])
def test_weight_only_config_says_what_it_does(lenet, options, message):
    """No keyword overrides the config: a config that asks for more than weight-only RTN is refused, not rewritten."""
    with pytest.raises(ConfigError, match=message):
        quantize_weights(lenet, None, QuantConfig(**options))
