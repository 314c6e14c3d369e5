"""A run folder is data: nothing written into its metadata can make slimkit import code or overwrite the run."""

import json

import pytest

from slimkit import CheckpointError
from slimkit.cli import main
from slimkit.pipeline import load_run, parse_recipe, run_recipe
from tests.pipeline.conftest import tiny_recipe


@pytest.fixture
def finished_run(tiny_dir):
    recipe = parse_recipe(tiny_recipe("- train: {epochs: 1}\n"), str(tiny_dir / "r.yaml"), tiny_dir)
    run_recipe(recipe, tiny_dir / "out", progress=False, report=False)
    return tiny_dir / "out"


@pytest.mark.parametrize("spec", ["evil_model.py:factory", "{dir}/evil_model.py:factory"])
def test_run_json_naming_code_never_imports_it(finished_run, spec, capsys):
    marker = finished_run / "ran.txt"
    (finished_run / "evil_model.py").write_text(
        f"open({str(marker)!r}, 'w').write('pwned')\n"
        "from torch import nn\ndef factory(**kw):\n    return nn.Linear(64, 10)\n")
    run = json.loads((finished_run / "run.json").read_text())
    run["recipe"]["model"]["spec"] = spec.format(dir=finished_run)
    (finished_run / "run.json").write_text(json.dumps(run))
    with pytest.raises(Exception, match="never imports code"):
        load_run(finished_run)
    code = main(["export", str(finished_run), "--out", str(finished_run.parent / "m.onnx")])
    assert code == 2 and "--trust-spec" in capsys.readouterr().err
    assert not marker.exists() and not (finished_run.parent / "m.onnx").exists()


def test_a_distill_student_spec_in_run_json_is_not_imported_either(finished_run):
    run = json.loads((finished_run / "run.json").read_text())
    run["recipe"]["stages"].append({"distill": {"student": f"{finished_run}/evil.py:factory", "teacher": "input"}})
    (finished_run / "run.json").write_text(json.dumps(run))
    with pytest.raises(Exception, match=r"evil\.py:factory"):
        load_run(finished_run, trusted_specs=(run["recipe"]["model"]["spec"],))


@pytest.mark.parametrize("link", ["stages", "stages/01-train/model.onnx", ".model.onnx.tmp"])
def test_a_link_planted_in_a_run_folder_stops_the_run_before_it_writes_through_it(finished_run, link):
    victim = finished_run.parent / "victim"
    victim.mkdir()
    (victim / "file").write_text("the user's")
    planted = finished_run / link
    if planted.exists():
        import shutil

        shutil.rmtree(planted) if planted.is_dir() else planted.unlink()
    planted.symlink_to(victim if link == "stages" else victim / "file")
    recipe = parse_recipe(tiny_recipe("- train: {epochs: 1}\n"), str(finished_run.parent / "r.yaml"),
                          finished_run.parent)
    for options in ({"resume": True}, {"force": True}):
        with pytest.raises(Exception, match="symbolic link"):
            run_recipe(recipe, finished_run, progress=False, report=False, **options)
    assert sorted(p.name for p in victim.iterdir()) == ["file"] and (victim / "file").read_text() == "the user's"


def test_a_stage_result_naming_another_stage_is_not_reused(finished_run):
    """A result.json's "stage" is a path when a later stage reuses its files: one that names another stage (here a
    folder outside the run) is not this stage's result, so the stage runs again."""
    result_file = finished_run / "stages" / "01-train" / "result.json"
    result = json.loads(result_file.read_text())
    result["stage"] = "../../elsewhere"
    result_file.write_text(json.dumps(result))
    recipe = parse_recipe(tiny_recipe("- train: {epochs: 1}\n"), str(finished_run.parent / "r.yaml"),
                          finished_run.parent)
    run_recipe(recipe, finished_run, resume=True, progress=False, report=False)
    assert json.loads(result_file.read_text())["stage"] == "01-train"


def test_a_recipe_slimkit_wrote_imports_only_the_spec_the_user_typed(tiny_dir, monkeypatch):
    """`slimkit auto` runs the recipe.yaml it wrote: read back, it may name only the model spec the user typed."""
    from slimkit.pipeline import load_recipe

    monkeypatch.chdir(tiny_dir)  # where the user typed tiny.py:tiny

    path = tiny_dir / "recipe.yaml"
    path.write_text(tiny_recipe("- train: {epochs: 1}\n"))
    assert load_recipe(path, trusted_specs=("tiny.py:tiny",)).allow_code
    with pytest.raises(Exception, match=r"never imports code.*changed after slimkit wrote it"):
        load_recipe(path, trusted_specs=("lenet5",), confirm="this file was changed after slimkit wrote it")
    with pytest.raises(Exception, match=r"never imports code.*--trust-spec .*tiny\.py:tiny"):  # the default fix
        load_recipe(path, trusted_specs=())
    path.write_text(tiny_recipe(f"- distill: {{student: '{tiny_dir}/evil.py:f', teacher: input}}\n"))
    (tiny_dir / "evil.py").write_text("def f():\n    pass\n")
    with pytest.raises(Exception, match=r"evil\.py:f"):
        load_recipe(path, trusted_specs=("tiny.py:tiny",))


def test_an_export_never_writes_over_a_file_named_like_its_staging_file(finished_run):
    from slimkit.pipeline import export_model

    out = finished_run.parent / "exported"
    out.mkdir()
    theirs = out / ".m.onnx.unchecked.onnx"  # the fixed staging name exports used to write and then delete
    theirs.write_text("the user's")
    spec = json.loads((finished_run / "run.json").read_text())["recipe"]["model"]["spec"]
    model, data, _ = load_run(finished_run, trusted_specs=(spec,))
    export_model(model, data, out / "m.onnx", "onnx")
    assert theirs.read_text() == "the user's" and (out / "m.onnx").is_file()
    assert sorted(p.name for p in out.iterdir()) == [".m.onnx.unchecked.onnx", "m.onnx"]


@pytest.mark.parametrize("field, value", [("accuracy", "abc"), ("params", [1]), ("split", 3), ("notes", "x"),
                                          ("latency_ratio", True)])
def test_a_finished_stage_whose_result_has_the_wrong_types_runs_again(tiny_dir, field, value):
    recipe = parse_recipe(tiny_recipe("- train: {epochs: 1}\n"), str(tiny_dir / "r.yaml"), tiny_dir)
    first = run_recipe(recipe, tiny_dir / "out", progress=False, report=False)
    path = tiny_dir / "out" / "stages" / "01-train" / "result.json"
    damaged = json.loads(path.read_text())
    damaged[field] = value
    path.write_text(json.dumps(damaged))
    again = run_recipe(recipe, tiny_dir / "out", resume=True, progress=False)  # the report reads every row
    assert again.stages[1]["accuracy"] == first.stages[1]["accuracy"]
    assert json.loads(path.read_text())[field] != value


def test_a_damaged_int8_grid_note_is_a_clear_error_on_reload(tiny_dir):
    recipe = parse_recipe(tiny_recipe("- quantize: {method: ptq}\n"), str(tiny_dir / "r.yaml"), tiny_dir)
    run_recipe(recipe, tiny_dir / "out", progress=False, report=False)
    path = tiny_dir / "out" / "stages" / "01-quantize" / "result.json"
    result = json.loads(path.read_text())
    result["notes"]["weight_range"] = "x"
    path.write_text(json.dumps(result))
    with pytest.raises(CheckpointError, match="weight_range note is damaged"):
        load_run(tiny_dir / "out", trusted_specs=(f"{tiny_dir.resolve()}/tiny.py:tiny",))


def test_a_finished_run_missing_a_stage_result_is_not_silently_loaded_at_an_earlier_stage(finished_run):
    spec = f"{finished_run.parent.resolve()}/tiny.py:tiny"
    (finished_run / "stages" / "01-train" / "result.json").unlink()
    with pytest.raises(CheckpointError, match="marked finished but stage 01-train has no readable result"):
        load_run(finished_run, trusted_specs=(spec,))
    assert load_run(finished_run, "00-input", trusted_specs=(spec,))[0] is not None
