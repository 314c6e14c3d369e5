"""Random and malformed recipes end in a valid Recipe or one clean SlimkitError, never another exception."""

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimkit import SlimkitError
from slimkit.pipeline import Recipe, parse_recipe

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["lenet5", "mnist", "train", "0.5", "1.5", "inf"]))
keys = st.one_of(st.sampled_from(["version", "model", "spec", "checkpoint", "data", "name", "stages", "train",
                                  "finetune", "epochs", "lr", "ratio", "evaluation", "seed", "export", "format",
                                  "none", "int", "list", "teacher", "student", "file"]),
                 st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=4)), max_leaves=20)


def _outcome(text: str) -> None:
    try:
        result = parse_recipe(text, "fuzz.yaml")
    except SlimkitError as error:
        message = str(error)
        assert message.startswith("fuzz.yaml"), message
        assert "\n" not in message.split(": ", 1)[0]
    else:
        assert isinstance(result, Recipe) and result.stages


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text):
    _outcome(text)


@FUZZ
@given(st.dictionaries(keys, values, max_size=6))
def test_random_mappings(data):
    _outcome(yaml.safe_dump(data, allow_unicode=True))


@FUZZ
@given(
    version=st.one_of(st.just(1), scalars),
    spec=st.one_of(st.just("lenet300"), scalars),
    stages=st.lists(st.one_of(st.dictionaries(st.sampled_from(["train", "finetune", "evaluate", "export", "bogus"]),
                                              st.one_of(st.none(), st.dictionaries(keys, scalars, max_size=3)),
                                              min_size=1, max_size=2), scalars), max_size=4),
)
def test_near_valid_recipes(version, spec, stages):
    _outcome(yaml.safe_dump({"version": version, "model": {"spec": spec}, "stages": stages}, allow_unicode=True))


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 300))
def test_corrupted_valid_recipe(noise, at):
    text = "version: 1\nmodel: {spec: lenet300}\nstages:\n  - train: {epochs: 1}\n  - export: {format: onnx}\n"
    at = min(at, len(text))
    corrupted = text[:at] + noise.decode("utf-8", errors="replace") + text[at:]
    _outcome(corrupted)
