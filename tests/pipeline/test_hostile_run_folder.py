"""A run folder is data: nothing written into its metadata can make slimkit import code or overwrite the run."""

import json

import pytest

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
