import math

import pytest

from slimkit import ConfigError
from slimkit.auto import AutoConfig, Budget, parse_budget


@pytest.mark.parametrize("text, expected", [
    ("latency=0.4", {"latency": 0.4}),
    ("size=0.05", {"size": 0.05}),
    ("latency=0.5,size=0.1,macs=0.3", {"latency": 0.5, "size": 0.1, "macs": 0.3}),
    (" latency = 0.5 , size=1 ", {"latency": 0.5, "size": 1.0}),
    ("latency=0.5,batch=64,threads=2", {"latency": 0.5}),
])
def test_budgets_parse(text, expected):
    budget = parse_budget(text)
    assert dict(budget.items()) == expected
    assert parse_budget(budget.text()) == budget  # the text form round-trips


def test_batch_and_threads_come_from_the_text_or_the_defaults():
    assert parse_budget("latency=0.5,batch=64", batch=8, threads=2) == Budget(latency=0.5, batch=64, threads=2)
    assert parse_budget({"size": 0.1}).size == 0.1


@pytest.mark.parametrize("text, message", [
    ("latency=2", "out of range"),
    ("latency=1.0001", "allows a larger model"),
    ("size=0", "out of range"),
    ("size=-0.1", "out of range"),
    ("latency=nan", "out of range"),
    ("macs=inf", "out of range"),
    ("latency=abc", "is not a number"),
    ("speed=0.5", "unknown budget key 'speed'"),
    ("latncy=0.5", "did you mean 'latency'"),
    ("latency", "is not key=value"),
    ("latency=", "is not key=value"),
    ("", "the budget is empty"),
    ("batch=8", "the budget is empty"),
    ("latency=0.5,latency=0.4", "given twice"),
    ("latency=0.5,batch=0", "batch=0"),
    ("latency=0.5,threads=1.5", "threads=1.5"),
])
def test_bad_budgets_are_one_clear_error(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_budget(text)


@pytest.mark.parametrize("field, value, message", [
    ("max_drop", -1, "max_drop"), ("max_drop", math.nan, "max_drop"), ("formats", ("tflite",), "tflite"),
    ("formats", (), "formats is empty"), ("knobs", ("depth",), "knob 'depth'"), ("keep_fractions", (1.0,), "1"),
    ("cluster_bits", (9,), "cluster_bits"), ("criterion", "l3", "l3"), ("sensitivity", "fisher", "fisher"),
    ("recovery", "none", "none"), ("recovery_epochs", -1, "recovery_epochs"), ("max_candidates", 0, "max_candidates"),
    ("time_limit", 0, "time_limit"), ("recovery_lr", 0, "recovery_lr"), ("min_accuracy", 0, "min_accuracy"),
    ("min_accuracy", 100.5, "min_accuracy"), ("min_accuracy", math.inf, "min_accuracy"),
    ("min_accuracy", True, "min_accuracy"), ("min_accuracy", 0.985, "not 0.985"), ("min_accuracy", 1.5, None),
])
def test_config_values_are_checked_when_made(field, value, message):
    if message is None:  # a valid value near the range's edge
        assert AutoConfig(budget="latency=0.5", **{field: value}).to_dict()[field] == value
        return
    with pytest.raises(ConfigError, match=message):
        AutoConfig(budget="latency=0.5", **{field: value})


def test_a_config_normalises_and_serialises():
    config = AutoConfig(budget="size=0.1", formats=["container", "container"], skip="fc2", cluster_bits=(4, 2, 4))
    assert config.formats == ("container",) and config.skip == ("fc2",) and config.cluster_bits == (2, 4)
    assert config.to_dict()["budget"]["size"] == 0.1
