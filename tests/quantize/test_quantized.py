"""Group-wise weight grids (quantize/_grid.py) and the weight-only layers holding their codes (_quantized.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit import ConfigError
from slimkit.analysis import profile
from slimkit.quantize import QuantConfig, QuantizedConv2d, QuantizedLinear, WeightGrid, quantize
from slimkit.quantize._grid import quantize_rtn, row_params


def test_symmetric_grid_puts_the_extreme_on_a_code_and_uses_all_levels():
    w = torch.tensor([[0.3, -1.6, 0.8, 1.5], [2.0, -0.5, 0.1, 0.0]])
    scale, zero = row_params(w, WeightGrid(4, symmetric=True))
    assert zero.tolist() == [8.0, 8.0]
    assert torch.allclose(scale, torch.tensor([1.6 / 8, -2.0 / 8]))  # the extreme lands on code 0 either sign
    codes = torch.round(w / scale[:, None]) + zero[:, None]
    assert codes[0, 1] == 0 and codes[1, 0] == 0


def test_asymmetric_grid_and_mse_observer():
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    w[:, 0] = 6.0  # one outlier per row: clipping it pays off
    errors = {}
    for observer in ("minmax", "mse"):
        grid = WeightGrid(3, symmetric=False, group_size=32, observer=observer)
        codes, scales, zeros = quantize_rtn(w, grid)
        assert scales.shape == (8, 2) and codes.min() >= 0 and codes.max() <= 7
        index = torch.arange(64) // 32
        errors[observer] = float(((codes - zeros[:, index]) * scales[:, index] - w).pow(2).sum())
    assert errors["mse"] < errors["minmax"]


@pytest.mark.parametrize("bits, group_size, symmetric", [(4, 16, False), (3, None, True), (8, 32, True)])
def test_weight_only_layers_compute_with_their_dequantized_codes(bits, group_size, symmetric):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.Unflatten(1, (16, 1, 1)), nn.Conv2d(16, 8, 1)).eval()
    q = quantize(model, None, QuantConfig(weight_bits=bits, group_size=group_size, weight_symmetric=symmetric,
                                          activation_bits=None))
    linear, conv = q[0], q[2]
    assert isinstance(linear, QuantizedLinear) and isinstance(conv, QuantizedConv2d)
    x = torch.randn(5, 32)
    assert torch.allclose(linear(x), F.linear(x, linear.weight, linear.bias), atol=1e-6)
    assert linear.codes.dtype == torch.uint8 and int(linear.codes.max()) < 2**bits
    step = linear.scales.detach().abs().repeat_interleave(linear.group_size, dim=1)[:, :32]
    # RTN: within half a step; a symmetric grid clips the far side of its extreme by up to one step
    assert torch.all((linear.weight - model[0].weight).abs() <= step * (1.0 if symmetric else 0.5) + 1e-6)
    report = profile(q, torch.randn(1, 32))
    groups = -(-32 // (group_size or 32))
    expected = -(-16 * 32 * bits // 8) + 4 * 16 * groups + (0 if symmetric else -(-16 * groups * bits // 8)) + 4 * 16
    assert report.row("0").bytes == expected
    assert report.row("0").params == 16 * 32 + 16


def test_weight_only_needs_a_grid_it_can_choose():
    with pytest.raises(ConfigError, match="per-tensor"):
        quantize(nn.Sequential(nn.Linear(4, 4)), None, QuantConfig(activation_bits=None, per_channel=False))
    with pytest.raises(ConfigError, match="group_size"):
        WeightGrid(4, group_size=-1)


def test_weight_only_composes_with_bias_correction_and_mixed_precision():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32, bias=False), nn.ReLU(),
                          nn.Linear(32, 4)).eval()
    data = [torch.randn(64, 16) + 0.5 for _ in range(2)]  # a non-zero input mean makes the rounding shift biased
    grid = dict(weight_bits=3, activation_bits=None)
    plain = quantize(model, None, QuantConfig(**grid))
    corrected = quantize(model, None, QuantConfig(bias_correction=True, **grid), data=data)
    assert corrected[2].bias is not None  # a bias was created to hold the correction
    x = torch.cat(data)
    with torch.no_grad():
        ref = model(x)
        assert (corrected(x) - ref).pow(2).mean() < (plain(x) - ref).pow(2).mean()
    mixed = quantize(model, None, QuantConfig(keep_sensitive=1, **grid), data=data)
    report = mixed.slimkit_quant_report
    (kept,) = [n for n, why in report.float_layers.items() if why.startswith("kept in float")]
    assert isinstance(mixed.get_submodule(kept), nn.Linear) and kept == max(report.sensitivity,
                                                                           key=report.sensitivity.get)
    assert len(report.quantized) == 2


@pytest.mark.parametrize("symmetric", [True, False])
def test_weight_only_layers_count_their_zero_weights(symmetric):
    """A code at its group's zero point dequantizes to exactly 0: profile counts it as a zero, so a pruned model
    quantized weight-only keeps the nonzero count it had (it was counted dense)."""
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    with torch.no_grad():
        linear.weight.mul_(torch.rand_like(linear.weight) > 0.75)
        linear.bias[:4] = 0
    grid = WeightGrid(4, symmetric=symmetric, group_size=16)
    layer = QuantizedLinear(32, 16, grid)
    layer.set_codes_(*quantize_rtn(linear.weight.detach(), grid))
    with torch.no_grad():
        layer.bias.copy_(linear.bias)
    dequantized = layer.weight_matrix()
    expected = int((dequantized == 0).sum()) + int((layer.bias == 0).sum())
    assert expected >= int((linear.weight == 0).sum()) + 4
    assert layer.slimkit_param_count() == (32 * 16 + 16, expected)
