import pytest
import torch
from torch import nn

from slimkit import ConfigError
from slimkit.quantize import AdaRoundOptions, QuantConfig, QuantizedConv2d, QuantWrapper, quant_report, quantize
from slimkit.quantize._adaround import initial_v, rectified_sigmoid
from tests.quantize._lm import relative_error


def test_rectified_sigmoid_starts_at_the_float_weight():
    rest = torch.linspace(0.0, 0.99, 12)
    assert torch.allclose(rectified_sigmoid(initial_v(rest)), rest, atol=1e-5)
    assert rectified_sigmoid(torch.tensor([-50.0, 50.0])).tolist() == [0.0, 1.0]


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 36, 5)).eval()
    data = [torch.randn(16, 3, 6, 6) for _ in range(2)]
    return model, data


@pytest.mark.parametrize("activation_bits, kind", [(8, QuantWrapper), (None, QuantizedConv2d)])
def test_adaround_rounds_within_one_step_and_beats_nearest(cnn, activation_bits, kind):
    model, data = cnn
    config = dict(weight_bits=3, activation_bits=activation_bits)
    method = "adaround:iterations=200,batch_size=16,lr=0.01"  # the paper's lr 1e-3 wants 10k iterations
    ada = quantize(model, data[0], QuantConfig(method=method, **config), data=data)
    rtn = quantize(model, data[0], QuantConfig(**config), data=data)
    errors = quant_report(ada).details["adaround"]["reconstruction_error"]
    assert set(errors) == {"0", "2", "5"}
    assert all(e["adaround"] < e["rtn"] for e in errors.values())
    for name in ("0", "2"):
        assert isinstance(ada.get_submodule(name), kind)
        float_w = model.get_submodule(name).weight.detach()
        if kind is QuantWrapper:
            wrapper = ada.get_submodule(name)
            scale = wrapper.weight_quant.scale.reshape(-1, 1, 1, 1)
            step = wrapper.layer.weight.detach() / scale
        else:
            layer = ada.get_submodule(name)
            scale = layer.scales.detach().reshape(-1, 1, 1, 1)
            step = layer.weight / scale
        assert torch.all((step - float_w / scale).abs() < 1 + 1e-4)  # within one grid step of the float weight
        assert torch.allclose(step, step.round(), atol=1e-4)  # and on the grid
    test = torch.randn(32, 3, 6, 6)
    with torch.no_grad():
        ref = model(test)
        assert relative_error(ada(test), ref) < relative_error(rtn(test), ref)


@pytest.mark.parametrize("options, fix", [
    (dict(iterations=0), "iterations"), (dict(reg=-1.0), "reg"), (dict(warmup=1.0), "warmup"),
    (dict(beta_start=1.0, beta_end=2.0), "beta_start"),
])
def test_bad_adaround_options(options, fix):
    with pytest.raises(ConfigError, match=fix):
        AdaRoundOptions(**options)
