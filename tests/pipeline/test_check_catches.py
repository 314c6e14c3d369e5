"""``slimkit compress --check`` (parse_recipe) catches every recipe mistake that needs no training (issue #19)."""

import pytest

from slimkit.pipeline import RecipeError, parse_recipe

HEAD = "version: 1\nmodel: {spec: lenet5}\nstages:\n  - train: {epochs: 1}\n"


@pytest.mark.parametrize("stage, message", [
    ("distill: {student: lenet300, teacher: 05-train}", "not an earlier stage"),
    ("distill: {student: lenet300, teacher: 02-distill}", "not an earlier stage"),  # itself
    ("distill: {student: lenet9}", "unknown model 'lenet9'"),
    ("distill: {student: 'resnet20:width=1e9'}", "cannot be built"),
    ("distill: {student: 'lenet300:num_classes=0'}", "at least 1"),
    ("distill: {student: lenet300, student_checkpoint: nope.pt}", "does not exist"),
    ("distill: {student: lenet300, losses: ['kd:T=']}", "KEY=VALUE"),
    ("distill_stagewise: {student: lenet300, stages: []}", "at least one stage pair"),
    ("export: {file: run.json}", "run's own files"),
    ("export: {file: stages/00-input/model.pt}", "plain file name"),
    ("export: {file: ../escape.onnx}", "plain file name"),
    ("export: {file: .hidden}", "plain file name"),
    ("quantize: {method: qat, lr: .nan}", "finite number"),
    ("quantize: {method: qat, epochs: -1}", "greater than or equal to 0"),
    ("quantize: {method: qat, momentum: 5}", "less than 1"),
    ("cluster: {max_iter: -1}", "max_iter -1"),
    ("finetune: {epochs: 1, grad_clip: .inf}", "finite number"),
])
def test_a_mistake_in_a_stage_is_caught_at_its_line(stage, message):
    with pytest.raises(RecipeError, match=message) as caught:
        parse_recipe(HEAD + f"  - {stage}\n", "r.yaml")
    assert "r.yaml, line 5" in str(caught.value)


def test_two_exports_to_one_file_are_refused():
    text = HEAD + "  - export: {file: m.onnx}\n  - export: {file: m.onnx}\n"
    with pytest.raises(RecipeError, match="also written by stage 2"):
        parse_recipe(text, "r.yaml")


@pytest.mark.parametrize("model, data, message", [
    ("'resnet20:width=1e9'", "mnist", "cannot be built"),
    ("'resnet20:width=abc'", "mnist", "finite number"),
    ("lenet5", "digits", "cannot run on the 1×8×8 inputs of 'digits'"),
    ("lenet5", "mnist-seg", "cannot run on the 1×64×64 inputs"),
    ("'lenet300:num_classes=5'", "mnist", "needs one score per class"),
])
@pytest.mark.parametrize("cpu_bytes", [None, 0])  # 0: every model checked on the meta device, as a large one is
def test_model_and_data_that_do_not_fit_are_caught_without_loading_data(model, data, message, cpu_bytes,
                                                                       monkeypatch):
    import slimkit.pipeline._recipe as recipe

    if cpu_bytes is not None:
        monkeypatch.setattr(recipe, "FIT_CHECK_CPU_BYTES", cpu_bytes)
    text = f"version: 1\nmodel: {{spec: {model}}}\ndata: {{name: {data}}}\nstages:\n  - train: {{epochs: 1}}\n"
    with pytest.raises(RecipeError, match=message):
        parse_recipe(text, "r.yaml")


def test_a_model_whose_factory_computes_index_buffers_passes_the_fit_check():
    """Swin's relative-position index is a buffer its constructor computes: a model materialised from the meta
    device (to_empty) holds garbage there and failed with an out-of-bounds index; the check builds it for real."""
    text = ("version: 1\nmodel: {spec: 'hf:swin:num_channels=1,num_labels=10'}\ndata: {name: mnist}\nstages:\n"
            "  - train: {epochs: 1}\n")
    assert parse_recipe(text, "r.yaml").schema.model.spec.startswith("hf:swin")


def test_checking_a_small_models_fit_does_not_import_torch_dynamo():
    """A meta-device forward pass imports torch._dynamo (2 s of every command's start); a small model's fit is
    checked on the CPU instead."""
    import subprocess
    import sys

    code = ("import sys; from slimkit.pipeline import parse_recipe; "
            "parse_recipe('version: 1\\nmodel: {spec: lenet5}\\ndata: {name: mnist}\\nstages:\\n"
            "  - train: {epochs: 1}\\n', 'r.yaml'); print('torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("later, message", [
    ("quantize: {keep_sensitive: 4}", "keeps every one of the 4 layers"),
    ("cluster: {layers: [fc9]}", "'fc9' is not"),
    ("decompose: {rank: 2, layers: [conv9]}", "'conv9' is not"),
    ("prune_unstructured: {sparsity: 0.5, layers: [fc9]}", "'fc9' is not"),
])
def test_a_selection_after_channel_pruning_is_checked_on_the_input_model(later, message, tmp_path, capsys):
    # channel pruning keeps every layer's name and type: a later stage's selection is checked before any work, where
    # it used to fail only when the run reached it
    from slimkit.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: {spec: lenet5}\ndata: {name: mnist}\nstages:\n  - prune: {ratio: 0.5}\n"
                      f"  - {later}\n")
    assert main(["compress", str(recipe), "--check"]) == 2
    assert message in capsys.readouterr().err
