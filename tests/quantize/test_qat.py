import pytest
import torch

from slimkit import models
from slimkit.analysis import evaluate
from slimkit.data import TensorLoader, create_data
from slimkit.quantize import FakeQuantize, QuantConfig, convert_qat, quant_report, quantize, quantize_qat
from slimkit.train import fit


@pytest.mark.slow
@pytest.mark.parametrize("lsq", [False, True])
def test_qat_one_epoch_at_4_bits_beats_ptq(lsq):
    data = create_data("mnist", batch_size=128, calibration_size=512)
    train = TensorLoader(data.train.inputs[:8000], data.train.targets[:8000], batch_size=128, shuffle=True)
    test = TensorLoader(data.test.inputs[:2000], data.test.targets[:2000], batch_size=500)
    torch.manual_seed(0)
    model = models.create("lenet5")
    fit(model, train, epochs=1, progress=False)
    model.eval()
    config = QuantConfig(weight_bits=4, activation_bits=8, per_channel=False, lsq=lsq)
    ptq = evaluate(quantize(model, data.example_input(), config, data=data.calibration), test).accuracy
    qat = quantize_qat(model, data.example_input(), config, data=data.calibration)
    assert qat.training
    fit(qat, train, epochs=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), progress=False)
    converted = convert_qat(qat)
    assert not any(isinstance(m, FakeQuantize) and (m.learnable or m.dynamic) for m in converted.modules())
    assert quant_report(converted).quantized == ["conv1", "conv2", "fc1", "fc2"]
    qat_acc = evaluate(converted, test).accuracy
    assert qat_acc > ptq + 0.002


def test_qat_trains_weights_and_lsq_scales():
    data = create_data("mnist", batch_size=64, calibration_size=128)
    model = models.create("lenet5").eval()
    qat = quantize_qat(model, data.example_input(), QuantConfig(weight_bits=4, lsq=True), data=data.calibration)
    scales = [m.scale for m in qat.modules() if isinstance(m, FakeQuantize)]
    assert all(isinstance(s, torch.nn.Parameter) for s in scales)
    before = [s.detach().clone() for s in scales]
    weight = qat.conv1.layer.weight.detach().clone()
    sub = TensorLoader(data.train.inputs[:256], data.train.targets[:256], batch_size=64)
    fit(qat, sub, epochs=1, progress=False)
    assert not torch.equal(weight, qat.conv1.layer.weight)
    assert any(not torch.equal(b, s.detach()) for b, s in zip(before, scales))
    frozen = convert_qat(qat)
    x = data.test.inputs[:32]
    qat.eval()
    with torch.no_grad():
        assert torch.allclose(frozen(x), qat(x), atol=1e-5)
