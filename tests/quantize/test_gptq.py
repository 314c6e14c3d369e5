import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit import ConfigError, DataError
from slimkit.quantize import (
    GPTQOptions,
    QuantConfig,
    QuantizedConv2d,
    QuantizedLinear,
    QuantWrapper,
    WeightGrid,
    gptq_matrix,
    quant_report,
    quantize,
)
from slimkit.quantize._gptq import input_columns
from slimkit.quantize._grid import row_params
from tests.quantize._lm import logits, relative_error, tiny_llama, token_batches


def _direct_gptq(W, H, grid, group_size, damp, act_order, static_groups):
    """The OBQ/GPTQ update equations applied literally (Frantar et al. 2023, Eq. 2-3): quantize column q, spread
    its error over the remaining columns with the explicit inverse Hessian, then remove q from that inverse."""
    W0, W, cols = W, W.clone(), W.shape[1]
    H = H + damp * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype)
    order = torch.argsort(torch.diag(H), descending=True).tolist() if act_order else list(range(cols))
    Hinv = torch.linalg.inv(H)
    codes = torch.zeros_like(W)
    groups = {}
    for position, q in enumerate(order):
        if group_size is None:
            key, members = 0, list(range(cols))
        elif static_groups:
            key = q // group_size
            members = list(range(key * group_size, (key + 1) * group_size))
        else:
            key = position // group_size
            members = order[key * group_size:(key + 1) * group_size]
        if key not in groups:  # static: from the original weights; dynamic: from the current ones
            groups[key] = row_params((W0 if static_groups or group_size is None else W)[:, members], grid)
        scale, zero = groups[key]
        codes[:, q] = torch.clamp(torch.round(W[:, q] / scale) + zero, 0, grid.qmax)
        err = (W[:, q] - (codes[:, q] - zero) * scale) / Hinv[q, q]
        W -= err.unsqueeze(1) * Hinv[q].unsqueeze(0)
        Hinv = Hinv - torch.outer(Hinv[:, q], Hinv[q]) / Hinv[q, q]
    return codes


@pytest.mark.parametrize("group_size, act_order, static_groups", [
    (None, False, True), (None, True, True), (4, False, True), (4, True, True), (4, False, False),
])
def test_gptq_equals_the_update_equations(group_size, act_order, static_groups):
    torch.manual_seed(0)
    rows, cols = 5, 12
    X = torch.randn(40, cols, dtype=torch.float64) @ (torch.eye(cols, dtype=torch.float64)
                                                     + 0.4 * torch.randn(cols, cols, dtype=torch.float64))
    W0 = torch.randn(rows, cols, dtype=torch.float64)
    H = 2 * X.T @ X / X.shape[0]
    grid = WeightGrid(3, symmetric=False)
    got = gptq_matrix(W0, H, lambda w: row_params(w, grid), 0, grid.qmax, group_size=group_size, block_size=5,
                      damp=0.01, act_order=act_order, static_groups=static_groups)
    expected = _direct_gptq(W0, H, grid, group_size, 0.01, act_order, static_groups)
    assert torch.equal(got.codes, expected)
    index = got.group_index
    assert torch.allclose(got.weight, (got.codes - got.zeros[:, index]) * got.scales[:, index])


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_keeps_pruned_weights_at_exactly_zero_and_compensates_on_the_kept_ones(act_order):
    """With ``keep`` (an unstructured-pruning mask), every pruned weight dequantizes to exactly 0 (the error
    compensation moves pruned weights off zero without it) and every code stays on the grid."""
    torch.manual_seed(0)
    rows, cols = 8, 24
    X = torch.randn(200, cols, dtype=torch.float64) @ (torch.eye(cols, dtype=torch.float64)
                                                      + 0.5 * torch.randn(cols, cols, dtype=torch.float64))
    H = 2 * X.T @ X / X.shape[0]
    keep = torch.rand(rows, cols) > 0.7
    W0 = torch.randn(rows, cols, dtype=torch.float64) * keep
    grid = WeightGrid(4, symmetric=False)
    free = gptq_matrix(W0, H, lambda w: row_params(w, grid), 0, grid.qmax, act_order=act_order)
    assert (free.weight[~keep] != 0).any()  # the unmasked algorithm moves pruned weights
    got = gptq_matrix(W0, H, lambda w: row_params(w, grid), 0, grid.qmax, act_order=act_order, keep=keep)
    assert torch.equal(got.weight[~keep], torch.zeros_like(got.weight[~keep]))
    assert torch.equal(got.codes, got.codes.round()) and got.codes.min() >= 0 and got.codes.max() <= grid.qmax
    assert not torch.equal(got.weight, free.weight * keep)  # the kept weights absorbed the pruned ones' error


def test_gptq_output_error_between_brute_force_optimum_and_rounding():
    torch.manual_seed(1)
    layer = nn.Linear(6, 3, bias=False)
    mix = torch.eye(6) + 0.6 * torch.randn(6, 6)
    data = [torch.randn(32, 6) @ mix for _ in range(2)]
    X = torch.cat(data)
    config = QuantConfig(weight_bits=2, activation_bits=None, weight_symmetric=False, method="gptq")
    gptq = quantize(nn.Sequential(layer), None, config, data=data)[0]
    rtn = quantize(nn.Sequential(layer), None, QuantConfig(weight_bits=2, activation_bits=None,
                                                           weight_symmetric=False))[0]
    ref = X @ layer.weight.detach().T
    err_gptq = (X @ gptq.weight.T - ref).pow(2).sum(dim=0)
    err_rtn = (X @ rtn.weight.T - ref).pow(2).sum(dim=0)
    for row in range(3):
        scale, zero = gptq.scales[row, 0].detach(), float(gptq.zero_points[row, 0])
        best = min(float((X @ ((torch.tensor(c) - zero) * scale) - ref[:, row]).pow(2).sum())
                   for c in itertools.product(range(4), repeat=6))
        assert best <= err_gptq[row] + 1e-4 <= err_rtn[row] + 2e-4
    assert err_gptq.sum() < 0.8 * err_rtn.sum()


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def test_gptq_on_a_language_model(llama):
    data, test = token_batches(4), token_batches(1, seed=9)[0]
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    grid = dict(weight_bits=3, group_size=16, activation_bits=None, weight_symmetric=False)
    gptq = quantize(llama, None, QuantConfig(method="gptq", **grid), data=data)
    rtn = quantize(llama, None, QuantConfig(**grid), data=data)
    assert all(torch.equal(v, llama.state_dict()[k]) for k, v in before.items())
    assert type(gptq) is type(llama)
    layers = [m for m in gptq.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 15 and all(m.group_index is None and m.group_size == 16 for m in layers)
    ref = logits(llama, test)
    assert relative_error(logits(gptq, test), ref) < 0.8 * relative_error(logits(rtn, test), ref)
    losses = quant_report(gptq).details["gptq"]["proxy_loss"]
    assert all(v["gptq"] <= v["rtn"] for v in losses.values())
    assert gptq.generate(test[:1, :4], max_new_tokens=2, do_sample=False).shape == (1, 6)


def test_act_order_without_static_groups_stores_a_group_index(llama):
    q = quantize(llama, None, QuantConfig(method="gptq:static_groups=false", weight_bits=4, group_size=16,
                                          activation_bits=None), data=token_batches(2))
    layer = q.model.layers[0].mlp.down_proj
    assert layer.group_index is not None
    counts = torch.bincount(layer.group_index)
    assert torch.equal(counts, torch.full_like(counts, 16))  # groups of 16 columns, not consecutive ones


def test_conv_im2col_layout_and_grouped_convs():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=2)
    x = torch.randn(2, 4, 9, 9)
    cols = input_columns(conv, x)  # groups × samples × (in/groups)·kh·kw
    w = conv.weight.detach().reshape(2, 3, -1)
    out = torch.cat([cols[g] @ w[g].T for g in range(2)], dim=1)
    expected = F.conv2d(x, conv.weight, None, 2, 1, groups=2).permute(0, 2, 3, 1).reshape(-1, 6)
    assert torch.allclose(out, expected, atol=1e-5)


def test_gptq_on_convolutions_weight_only_and_with_int8_activations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 36, 5)).eval()
    data = [torch.randn(16, 3, 6, 6) for _ in range(3)]
    test = torch.randn(32, 3, 6, 6)
    with torch.no_grad():
        ref = model(test)
    for extra, kind in ((dict(activation_bits=None), QuantizedConv2d), ({}, QuantWrapper)):
        config = dict(weight_bits=3, **extra)
        rtn = quantize(model, data[0], QuantConfig(**config), data=data)
        gptq = quantize(model, data[0], QuantConfig(method="gptq", **config), data=data)
        assert isinstance(gptq[2], kind) and isinstance(gptq[0], kind)
        with torch.no_grad():
            assert relative_error(gptq(test), ref) < relative_error(rtn(test), ref)
    wrapper = gptq[2]  # the weights GPTQ wrote back lie on the wrapper's own grid
    assert torch.allclose(wrapper.quantized_weight(), wrapper.layer.weight, atol=1e-6)


@pytest.mark.parametrize("method, fix", [
    ("gptq:damp=0", "damp"), ("gptq:damp=2", "damp"), ("gptq:block_size=0", "block_size"),
    ("gptq:act_order=1", "act_order"), ("gptq:bogus=1", "has no option bogus"), ("gptq+awq", "must come last"),
    ("gptq+adaround", "roundings"), ("sparsegpt", "unknown quantization method"), ("awq+awq", "twice"),
])
def test_bad_gptq_configs_are_rejected(method, fix):
    with pytest.raises(ConfigError, match=fix):
        QuantConfig(method=method, activation_bits=None)


def test_config_combinations_and_missing_data_are_rejected():
    with pytest.raises(ConfigError, match="weight-only"):
        QuantConfig(group_size=128)  # int8 activations take per-channel weights
    with pytest.raises(ConfigError, match="group_size"):
        QuantConfig(group_size=0, activation_bits=None)
    with pytest.raises(ConfigError, match="activation_bits=8"):
        QuantConfig(method="smoothquant", activation_bits=None)
    with pytest.raises(ConfigError, match="minmax"):
        quantize(nn.Sequential(nn.Linear(4, 4)), None, QuantConfig(activation_bits=None, weight_observer="entropy"))
    with pytest.raises(DataError, match="calibration"):
        quantize(nn.Sequential(nn.Linear(4, 4)), None, QuantConfig(method="gptq", activation_bits=None))
    assert GPTQOptions().act_order and GPTQOptions().static_groups


@pytest.mark.parametrize("grid", [dict(weight_bits=4, group_size=16, activation_bits=None, weight_symmetric=False),
                                  dict(weight_bits=4, activation_bits=None, weight_symmetric=True)])
def test_gptq_after_unstructured_pruning_keeps_every_zero(grid):
    """prune_unstructured → quantize(method="gptq") on a net with a grouped conv and a linear layer: every pruned
    weight dequantizes to exactly 0 (the compensation had moved some off zero), the layers' masks read from their
    weight_mask buffers."""
    from slimkit.prune._unstructured import UnstructuredConfig, attached_masks, magnitude_prune

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    pruned = magnitude_prune(net, None, UnstructuredConfig(sparsity=0.7))
    masks = {name: mask.clone() for name, mask in attached_masks(pruned).items()}
    data = [(torch.randn(16, 4, 6, 6), torch.zeros(16, dtype=torch.long)) for _ in range(4)]
    gptq = quantize(pruned, None, QuantConfig(method="gptq", **grid), data=data)
    layers = dict(gptq.named_modules())
    for name, mask in masks.items():
        weight = layers[name].weight_matrix().reshape(mask.shape)
        assert torch.equal(weight[~mask], torch.zeros_like(weight[~mask])), name
