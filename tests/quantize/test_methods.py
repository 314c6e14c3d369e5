"""The method registry (quantize/_methods.py): every registered method is reachable by name from a config and a
recipe; bad specs are refused at the recipe line."""

import pytest

from slimkit import ConfigError
from slimkit.pipeline import RecipeError, parse_recipe
from slimkit.quantize import METHODS, QuantConfig, parse_method

HEAD = "version: 1\nmodel: {spec: lenet5}\nstages:\n  - train: {epochs: 1}\n"


@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_is_reachable_by_name(name):
    weight_only = name != "smoothquant"
    config = QuantConfig(method=name, activation_bits=None if weight_only else 8)
    steps = parse_method(config.method)
    assert steps[-1].method.kind == "rounding" and steps[0].name == name
    assert METHODS.get(name).summary
    recipe = parse_recipe(HEAD + f"  - quantize: {{method: {name}, weight_bits: 4"
                          + (", activation_bits: null, group_size: 32}\n" if weight_only else "}\n"), "r.yaml")
    assert recipe.stages[1].params.method == name


def test_specs_combine_transforms_and_a_rounding_with_options():
    steps = parse_method("smoothquant:alpha=auto+gptq:damp=0.05,act_order=false")
    assert [s.name for s in steps] == ["smoothquant", "gptq"]
    assert steps[0].options.alpha == "auto" and steps[1].options.damp == 0.05 and not steps[1].options.act_order
    assert [s.name for s in parse_method("awq")] == ["awq", "rtn"]  # RTN when no rounding is named
    assert [s.name for s in parse_method("ptq")] == ["rtn"]


@pytest.mark.parametrize("stage, message", [
    ("quantize: {method: gptq:damp=2, activation_bits: null}", "damp"),
    ("quantize: {method: gpt, activation_bits: null}", "unknown quantization method 'gpt'"),
    ("quantize: {method: smoothquant, activation_bits: null}", "activation_bits=8"),
    ("quantize: {method: gptq, group_size: 128}", "weight-only"),
])
def test_a_bad_method_is_caught_at_its_recipe_line(stage, message):
    with pytest.raises(RecipeError, match=message) as caught:
        parse_recipe(HEAD + f"  - {stage}\n", "r.yaml")
    assert "r.yaml, line 5" in str(caught.value)


def test_qat_stays_a_stage_method():
    recipe = parse_recipe(HEAD + "  - quantize: {method: qat, epochs: 1}\n", "r.yaml")
    assert recipe.stages[1].params.quant_config().method == "rtn"
    with pytest.raises(ConfigError):
        QuantConfig(method="qat")
