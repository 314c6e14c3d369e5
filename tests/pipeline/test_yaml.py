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
