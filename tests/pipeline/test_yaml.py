import pytest

from slimkit.pipeline import RecipeError, load_located_yaml

TEXT = """\
version: 1
model:
  spec: lenet5
stages:
  - prune:
      ratio: 0.5
  - finetune: {epochs: 2}
"""


def test_every_key_and_item_has_its_line():
    located = load_located_yaml(TEXT, "r.yaml")
    assert located.data["stages"][0]["prune"]["ratio"] == 0.5
    assert located.lines[("version",)] == 1
    assert located.lines[("model", "spec")] == 3
    assert located.lines[("stages", 0)] == 5
    assert located.lines[("stages", 0, "prune", "ratio")] == 6
    assert located.lines[("stages", 1, "finetune", "epochs")] == 7
    # a missing key points at its nearest ancestor
    assert located.line_of(("stages", 1, "finetune", "lr")) == 7
    assert located.line_of(("nowhere",)) == 1


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("version: 1\nmodel: [a\n", 3, "YAML syntax error"),
        ("version: 1\nversion: 2\n", 2, "appears twice"),
        ("a: &x [*x]\n", 1, "refers to itself"),
        ("? [a, b]\n: 1\n", 1, "plain name"),
        ("", 1, "empty"),
        ("a: 1\n---\nb: 2\n", 2, "single YAML document"),
    ],
)
def test_malformed_yaml_is_a_recipe_error_with_a_line(text, line, message):
    with pytest.raises(RecipeError, match=message) as info:
        load_located_yaml(text, "r.yaml")
    assert f"r.yaml, line {line}" in str(info.value)


def test_merge_keys_and_anchors_are_resolved():
    located = load_located_yaml("base: &b {epochs: 2}\nother:\n  <<: *b\n  lr: 0.1\n")
    assert located.data["other"] == {"epochs": 2, "lr": 0.1}


def _alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\nversion: 1\nmodel: {spec: lenet5}\nstages: [{train: {epochs: 1}}]\n"


@pytest.mark.parametrize("text, message", [
    (_alias_bomb(), "expands to more than"),
    ("[" * 600 + "]" * 600, "nested too deeply"),
    ("a: " + "[" * 80 + "]" * 80, "nested more than"),
    ("version: 1\n" + "x" * 1_200_000, "characters long"),
])
def test_hostile_yaml_is_refused_quickly(text, message):
    import time

    began = time.perf_counter()
    with pytest.raises(RecipeError, match=message):
        load_located_yaml(text, "r.yaml")
    assert time.perf_counter() - began < 5


@pytest.mark.parametrize("key", ["none", "int", "list", "str", "bool"])
def test_a_key_named_like_a_type_is_reported_as_itself(key):
    from slimkit.pipeline import parse_recipe

    with pytest.raises(RecipeError, match=rf"line 3: {key}: Extra inputs"):
        parse_recipe(f"version: 1\nmodel: {{spec: lenet5}}\n{key}: 3\nstages:\n  - train: {{epochs: 1}}\n", "r.yaml")
    with pytest.raises(RecipeError, match=rf"model\.{key}: Extra inputs"):
        parse_recipe(f"version: 1\nmodel: {{spec: lenet5, {key}: 2}}\nstages:\n  - train: {{epochs: 1}}\n", "r.yaml")
