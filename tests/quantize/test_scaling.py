"""AWQ and SmoothQuant (quantize/_awq.py, _smoothquant.py, and the shared folding in _scaling.py)."""

import copy

import pytest
import torch

from slimkit import ConfigError
from slimkit.quantize import (
    AWQOptions,
    QuantConfig,
    SmoothQuantOptions,
    linearize_,
    parse_method,
    quant_report,
    quantize,
)
from slimkit.quantize._sequential import calibration_calls
from slimkit.quantize._smoothquant import smoothing_scales
from tests.quantize._lm import logits, relative_error, tiny_gpt2, tiny_llama, token_batches


@pytest.fixture(scope="module")
def lms():
    return {"llama": tiny_llama(), "gpt2": tiny_gpt2()}


def _transform(model, method, config):
    work = copy.deepcopy(model)
    linearize_(work)
    step = parse_method(method)[0]
    details = {}
    step.method.run(work, config, step.options, calibration_calls(token_batches(2)), details)
    return work, details[step.name]


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["awq:clip=false,grid=4", "smoothquant:alpha=0.5,linear_pairs=true",
                                    "smoothquant:alpha=auto"])
def test_scales_fold_exactly_into_the_previous_op(lms, name, method):
    model = lms[name]
    config = QuantConfig(method=method, activation_bits=8 if "smooth" in method else None, weight_bits=4)
    scaled, details = _transform(model, method, config)
    pairs = details["scales" if "awq" in method else "pairs"]
    norms = [p for p in pairs if "ln" in p or "layernorm" in p]
    assert len(norms) == 4  # two norms per block, two blocks
    if name == "llama" and ("linear_pairs" in method or "awq" in method):
        assert any(p.endswith("up_proj") for p in pairs)  # a gated MLP's up → down pair
        assert not any(p.endswith("v_proj") for p in pairs)  # 2 kv heads: v_proj (16) cannot scale o_proj (32)
    test = token_batches(1, seed=7)[0]
    ref = logits(model, test)
    assert (logits(scaled, test) - ref).abs().max() <= 1e-5 * ref.abs().max()
    original = dict(model.named_parameters())
    for norm in norms:  # the scales really moved magnitude out of the norms
        assert not torch.allclose(scaled.get_submodule(norm).weight, original[f"{norm}.weight"])


def test_smoothing_scale_formula():
    act, weight = torch.tensor([8.0, 1.0, 0.0]), torch.tensor([2.0, 4.0, 1.0])
    s = smoothing_scales(act, weight, 0.5)
    assert torch.allclose(s, torch.tensor([2.0, 0.5, 1.0]))  # sqrt(8/2), sqrt(1/4), inactive channel kept


def test_smoothquant_improves_w8a8_with_outliers(lms):
    model, data, test = lms["llama"], token_batches(4), token_batches(1, seed=5)[0]
    ref = logits(model, test)
    # W8A8 as in the paper: full-range 8-bit weights on every CPU (reduce_range=None would give 7 bits on x86
    # without VNNI, where this tiny model's margin between the two is within a few percent)
    w8a8 = dict(skip=("lm_head",), reduce_range=False)
    plain = quantize(model, test, QuantConfig(**w8a8), data=data)
    smooth = quantize(model, test, QuantConfig(method="smoothquant:alpha=auto", **w8a8), data=data)
    assert relative_error(logits(smooth, test), ref) < relative_error(logits(plain, test), ref)
    alphas = [p["alpha"] for p in quant_report(smooth).details["smoothquant"]["pairs"].values()]
    assert len(alphas) == 4 and all(0 <= a <= 1 for a in alphas)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_awq_beats_rounding_at_3_bits(lms, name):
    model, data, test = lms[name], token_batches(4), token_batches(1, seed=5)[0]
    ref = logits(model, test)
    grid = dict(weight_bits=3, group_size=16, activation_bits=None, weight_symmetric=False)
    rtn = quantize(model, None, QuantConfig(**grid))
    awq = quantize(model, None, QuantConfig(method="awq:grid=8", **grid), data=data)
    assert relative_error(logits(awq, test), ref) < relative_error(logits(rtn, test), ref)
    assert quant_report(awq).details["awq"]["clipped"]


@pytest.mark.parametrize("options, fix", [
    (dict(grid=0), "grid"), (dict(max_shrink=1.0), "max_shrink"), (dict(clip="yes"), "clip"),
])
def test_bad_awq_options(options, fix):
    with pytest.raises(ConfigError, match=fix):
        AWQOptions(**options)


@pytest.mark.parametrize("options, fix", [(dict(alpha=1.5), "alpha"), (dict(alpha="best"), "alpha"),
                                          (dict(tokens=0), "tokens")])
def test_bad_smoothquant_options(options, fix):
    with pytest.raises(ConfigError, match=fix):
        SmoothQuantOptions(**options)
