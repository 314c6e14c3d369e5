import textwrap

import pytest
import torch

from slimkit import models
from slimkit.cli import main
from slimkit.pipeline import STAGES, RecipeError, StageParams, load_recipe, parse_recipe

VALID = """\
version: 1
model:
  spec: lenet300
data: {name: mnist}
stages:
  - train: {epochs: 1}
  - finetune:
      epochs: 1
      lr: 0.01
"""


def test_a_valid_recipe_resolves_defaults_and_lines():
    recipe = parse_recipe(VALID, "r.yaml")
    assert [s.name for s in recipe.stages] == ["train", "finetune"]
    assert [s.line for s in recipe.stages] == [6, 7]
    assert [s.label for s in recipe.stages] == ["01-train", "02-finetune"]
    assert recipe.stages[1].params.lr == 0.01 and recipe.stages[0].params.lr == 0.05
    resolved = recipe.to_dict()
    assert resolved["data"]["batch_size"] == 128 and resolved["evaluation"]["threads"] == 1
    assert recipe.fingerprint() == parse_recipe(VALID, "other.yaml").fingerprint()
    assert recipe.fingerprint() != parse_recipe(VALID.replace("lr: 0.01", "lr: 0.02"), "r.yaml").fingerprint()


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("model:\n", "modle:\n", 2, "modle: Extra inputs are not permitted: remove it or fix its spelling"),
        ("  spec: lenet300\n", "  spec: lenet300\n  shape: 3\n", 4, "allowed keys here: spec, checkpoint"),
        ("lr: 0.01", "lr: 0.01\n      momentum: 1.5", 10, "momentum: Input should be less than 1 (got 1.5)"),
        ("lr: 0.01", "lr: -1", 9, "lr: Input should be greater than 0 (got -1)"),
        ("epochs: 1}", "epochs: one}", 6, "epochs: Input should be a valid integer"),
        ("data:", "torch_threads: 0\ndata:", 4, "torch_threads: Input should be greater than or equal to 1"),
        ("epochs: 1}", "epochs: true}", 6, "epochs: use a whole number, not true"),
        ("data:", "seed: false\ndata:", 4, "seed: use a whole number, not false"),
        ("epochs: 1}", "epochs: 1, lrr: 2}", 6, "lrr: Extra inputs are not permitted"),
        ("  - train:", "  - trian:", 6, "unknown stage 'trian': choose one of"),
        ("  - train: {epochs: 1}\n", "  - [train]\n", 6, "each stage is one 'name: {params}' entry"),
        ("version: 1", "version: 2", 1, "version: Input should be 1"),
        ("spec: lenet300", "spec: lenet301", 3, "unknown model 'lenet301'"),
        ("{name: mnist}", "{name: imagenet}", 4, "unknown dataset 'imagenet'"),
        ("{name: mnist}", "{name: mnist, augment: elstic}", 4,
         "data.augment: unknown augmentation 'elstic': choose one of elastic, shift"),
        ("  spec: lenet300\n", "  spec: lenet300\n  checkpoint: nope.pt\n", 4, "does not exist"),
    ],
)
def test_each_mistake_names_the_file_line_and_fix(old, new, line, message):
    assert old in VALID
    with pytest.raises(RecipeError) as info:
        parse_recipe(VALID.replace(old, new, 1), "recipes/r.yaml")
    text = str(info.value)
    assert text.startswith(f"recipes/r.yaml, line {line}: "), text
    assert message in text


def test_a_missing_checkpoint_is_resolved_against_the_recipe_folder(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"")
    text = VALID.replace("  spec: lenet300\n", "  spec: lenet300\n  checkpoint: w.pt\n")
    (tmp_path / "r.yaml").write_text(text)
    assert load_recipe(tmp_path / "r.yaml").checkpoint == tmp_path / "w.pt"
    (tmp_path / "w.pt").unlink()
    with pytest.raises(RecipeError, match=r"r.yaml, line 4: model.checkpoint: .* does not exist"):
        load_recipe(tmp_path / "r.yaml")


@pytest.mark.skipif("prune" not in STAGES, reason="slimkit.prune is not available")
def test_a_prune_ratio_of_1_5_points_at_its_line():
    text = VALID.replace("  - train: {epochs: 1}\n", "  - train: {epochs: 1}\n  - prune:\n      criterion: thinet\n"
                         "      ratio: 1.5\n")
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "r.yaml")
    assert str(info.value).startswith("r.yaml, line 9: stages[1].prune.ratio: ")
    assert "1.5" in str(info.value)
    with pytest.raises(RecipeError, match=r"line 9: stages\[1\]\.prune\.ratio: Input should be a finite number"):
        parse_recipe(text.replace("1.5", ".nan"), "r.yaml")
    with pytest.raises(RecipeError, match=r"line 8: stages\[1\]\.prune\.criterion: unknown criterion 'l3'"):
        parse_recipe(text.replace("thinet", "l3").replace("1.5", "0.5"), "r.yaml")


def test_a_recipe_needs_at_least_one_stage():
    with pytest.raises(RecipeError, match=r"r.yaml, line 5: stages: List should have at least 1 item.*add at least"):
        parse_recipe(VALID.split("stages:")[0] + "stages: []\n", "r.yaml")


def test_a_recipe_must_be_a_mapping():
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        parse_recipe("- 1\n- 2\n", "r.yaml")


@pytest.mark.parametrize("name", STAGES.names())
def test_every_stage_forbids_unknown_parameters_and_documents_itself(name):
    stage = STAGES.get(name)
    assert issubclass(stage.Params, StageParams) and stage.summary
    assert stage.Params.model_config["extra"] == "forbid"
    if stage.structural:
        assert stage.rebuild is not STAGES.get("train").rebuild, f"structural stage {name} must replay itself"


def test_compress_reports_a_bad_recipe_in_one_line_with_exit_code_2(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(textwrap.dedent(VALID).replace("lr: 0.01", "lr: 0.01\n      momentum: 1.5"))
    assert main(["compress", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{recipe}, line 10: stages[1].finetune.momentum" in err
    assert not (tmp_path / "out").exists(), "nothing may run before the recipe is valid"


def test_compress_check_loads_the_checkpoint_and_runs_the_stage_checks(tmp_path, capsys):
    # --check is every check a run makes before its folder: a checkpoint of another model fails it, writing nothing
    torch.save(models.create("lenet5").state_dict(), tmp_path / "other.pt")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(VALID.replace("spec: lenet300", f"spec: lenet300\n  checkpoint: {tmp_path / 'other.pt'}"))
    assert main(["compress", str(recipe), "--check"]) == 2
    assert "does not fit" in capsys.readouterr().err
    recipe.write_text("version: 1\nmodel: {spec: lenet300}\ndata: {name: mnist}\n"
                      "stages:\n  - prune: {ratio: 0.5, skip: ['layers.*']}\n")
    assert main(["compress", str(recipe), "--check"]) == 2
    assert "leave no channel group" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt", "r.yaml"]


def test_compress_check_and_list_stages(tmp_path, capsys):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text(VALID)
    assert main(["compress", str(recipe), "--check"]) == 0
    assert "valid recipe with 2 stage(s): train, finetune" in " ".join(capsys.readouterr().out.split())
    assert main(["compress", "--list-stages"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in STAGES.names())


@pytest.mark.skipif("distill" not in STAGES, reason="slimkit.distill is not available")
def test_cached_teacher_outputs_with_augmented_data_are_refused_at_the_stage_line():
    text = VALID.replace("{name: mnist}", "{name: mnist, augment: elastic+shift}").replace(
        "  - finetune:\n      epochs: 1\n      lr: 0.01\n",
        "  - distill: {teacher: 01-train, losses: [kd], cache_teacher: true}\n")
    with pytest.raises(RecipeError, match=r"r.yaml, line 7: stages\[1\]\.distill\.cache_teacher: .*remove"):
        parse_recipe(text, "r.yaml")
    parse_recipe(text.replace(", cache_teacher: true", ""), "r.yaml")  # the same recipe without the cache is fine



@pytest.mark.skipif("distill" not in STAGES, reason="slimkit.distill is not available")
def test_a_distill_stage_takes_a_weight_decay_and_refuses_a_negative_one():
    text = VALID.replace("  - finetune:\n      epochs: 1\n      lr: 0.01\n",
                         "  - distill: {teacher: 01-train, losses: [kd], weight_decay: 0}\n")
    parse_recipe(text, "r.yaml")
    with pytest.raises(RecipeError, match=r"r.yaml, line 7: stages\[1\]\.distill.*weight_decay=-0.1: use a value in"):
        parse_recipe(text.replace("weight_decay: 0", "weight_decay: -0.1"), "r.yaml")


def test_a_setting_added_later_leaves_its_default_out_of_the_recipe_dictionary():
    # the dictionary is a run folder's fingerprint: a cluster recipe run before centroid_gradient existed must
    # still resume, and a recipe that sets it must not
    def cluster(extra=""):
        return parse_recipe(textwrap.dedent(f"""\
            version: 1
            model: {{spec: lenet5}}
            data: {{name: mnist}}
            stages:
              - cluster: {{bits: 4{extra}}}
            """))

    plain, summed, mean = cluster(), cluster(", centroid_gradient: sum"), cluster(", centroid_gradient: mean")
    assert "centroid_gradient" not in plain.to_dict()["stages"][0]["cluster"]
    assert plain.to_dict() == summed.to_dict() and plain.fingerprint() == summed.fingerprint()
    assert mean.to_dict()["stages"][0]["cluster"]["centroid_gradient"] == "mean"
    assert mean.stages[0].params.config().centroid_gradient == "mean"
    bad = ("version: 1\nmodel: {spec: lenet5}\ndata: {name: mnist}\nstages:\n"
           "  - cluster: {bits: 4, centroid_gradient: median}\n")
    with pytest.raises(RecipeError, match=r"line 5.*centroid_gradient 'median'"):
        parse_recipe(bad)


@pytest.mark.parametrize(("stages", "message"), [
    ("- quantize: {method: ptq}\n- cluster: {fc_bits: 4}\n", r"line 7: stages\[1\]: 'cluster' cannot follow stage "
                                                             r"01-quantize: quantize replaced the float layers"),
    ("- quantize: {method: qat, epochs: 1}\n- decompose: {ratio: 0.5}\n", "'decompose' cannot follow stage 01-"),
    ("- quantize: {method: ptq}\n- quantize: {method: ptq, weight_bits: 4}\n", "'quantize' cannot follow"),
    ("- cluster: {fc_bits: 4}\n- prune: {ratio: 0.5}\n", "'prune' cannot follow stage 01-cluster: cluster replaced"),
    ("- cluster: {fc_bits: 4}\n- finetune: {epochs: 1}\n- quantize: {method: ptq}\n", r"stages\[2\]: 'quantize'"),
    ("- cluster: {fc_bits: 4}\n- export: {format: torchscript, file: m.ts}\n", "a TorchScript export cannot follow"),
])
def test_a_stage_that_cannot_follow_a_quantize_or_cluster_stage_is_refused_before_the_run(stages, message):
    """Each of these did nothing or failed mid-run with a raw error (a chain of every pair of stages on a small
    model): now a RecipeError naming the line and the order that works."""
    text = VALID.split("stages:")[0] + "stages:\n" + textwrap.indent(stages, "  ")
    with pytest.raises(RecipeError, match=message):
        parse_recipe(text, "r.yaml")


def test_a_named_student_starts_again_from_a_float_model():
    text = VALID.split("stages:")[0] + "stages:\n" + textwrap.indent(
        "- quantize: {method: ptq}\n- distill: {student: lenet300, teacher: previous, epochs: 1}\n"
        "- cluster: {fc_bits: 4}\n- quantize: {method: ptq}\n", "  ")
    with pytest.raises(RecipeError, match=r"stages\[3\]: 'quantize' cannot follow stage 03-cluster"):
        parse_recipe(text, "r.yaml")
    parse_recipe(text.replace("  - quantize: {method: ptq}\n", "", 2).replace(
        "  - distill", "  - quantize: {method: ptq}\n  - distill", 1), "r.yaml")


@pytest.mark.parametrize("first", ["prune_depth: {n_blocks: 1}", "quantize: {method: ptq}", "decompose: {ratio: 0.5}"])
def test_a_compressed_container_after_a_stage_that_changes_the_architecture_is_refused(first):
    """A container rebuilds its model from the spec: after depth pruning, decomposition or quantization the
    export failed at the end of the run; now the recipe is refused at the export's line (channel pruning's layout
    the container records: tests/share/test_container.py)."""
    text = VALID.split("stages:")[0] + "stages:\n" + textwrap.indent(
        f"- {first}\n- export: {{format: compressed, file: m.slim}}\n", "  ")
    with pytest.raises(RecipeError, match=r"line 7: stages\[1\]: a compressed container cannot follow stage 01-"):
        parse_recipe(text, "r.yaml")
    parse_recipe(text.replace("compressed, file: m.slim", "onnx, file: m.onnx"), "r.yaml")


def test_a_compressed_container_after_channel_pruning_is_refused_only_for_hugging_face_models():
    stages = "stages:\n  - prune: {ratio: 0.3}\n  - export: {format: compressed, file: m.slim}\n"
    parse_recipe(f"version: 1\nmodel: {{spec: lenet300}}\n{stages}", "r.yaml")  # the container records the layout
    with pytest.raises(RecipeError, match=r"line 6: .*a pruned Hugging Face model keeps its sizes in its config"):
        parse_recipe(f"version: 1\nmodel: {{spec: gpt2_tiny}}\ndata: {{name: stdlib}}\n{stages}", "r.yaml")


def test_two_quantize_stages_naming_their_layers_may_follow_each_other():
    """Mixed bit widths in a recipe: 4-bit weights on one layer, 8-bit on another, in two stages that each name
    their layers (the one way QuantConfig allows it)."""
    text = VALID.split("stages:")[0] + "stages:\n" + textwrap.indent(
        "- quantize: {method: ptq, activation_bits: null, weight_bits: 4, layers: ['layers.1']}\n"
        "- quantize: {method: ptq, activation_bits: null, weight_bits: 8, layers: ['layers.3']}\n", "  ")
    parse_recipe(text, "r.yaml")
    with pytest.raises(RecipeError, match="'quantize' cannot follow"):
        parse_recipe(text.replace(", layers: ['layers.3']", ""), "r.yaml")


def test_the_latency_runtime_at_its_default_leaves_a_recipes_fingerprint_as_before():
    # evaluation.runtime and a latency target's backend came after runs were made: the same recipe with them at
    # their defaults must resume those runs, and naming another runtime is another recipe
    def recipe(evaluation="", backend=""):
        return parse_recipe(textwrap.dedent(f"""\
            version: 1
            model: {{spec: lenet5}}
            data: {{name: mnist}}
            evaluation: {{latency_batch: 8{evaluation}}}
            stages:
              - prune: {{target_latency: {{ratio: 0.6, batch: 8{backend}}}}}
            """))

    plain = recipe()
    assert "runtime" not in plain.to_dict()["evaluation"]
    assert "backend" not in plain.to_dict()["stages"][0]["prune"]["target_latency"]
    explicit = recipe(evaluation=", runtime: onnxruntime")
    assert explicit.fingerprint() == plain.fingerprint() and explicit.to_dict() == plain.to_dict()
    other = recipe(evaluation=", runtime: openvino", backend=", backend: openvino")
    assert other.fingerprint() != plain.fingerprint()
    assert other.to_dict()["evaluation"]["runtime"] == "openvino"
    assert other.to_dict()["stages"][0]["prune"]["target_latency"]["backend"] == "openvino"
    with pytest.raises(RecipeError, match=r"line 4.*runtime"):
        recipe(evaluation=", runtime: tvm")
