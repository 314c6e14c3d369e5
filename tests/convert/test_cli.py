import json

import pytest

from slimkit.cli import main


@pytest.mark.slow
def test_convert_command_reports_every_stage_and_writes_the_model(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["convert", "resnet20:width=0.5", "--to", "depthwise-separable", "--data", "digits", "--out",
                 str(out), "--finetune-epochs", "1", "--calibration-samples", "128", "--skip", "layer3.*"])
    assert code == 0
    report = json.loads((out / "convert.json").read_text())
    stages = [s["stage"] for s in report["stages"]]
    assert stages[0] == "original" and stages[-1].startswith("after fine-tuning")
    assert len(stages) == 4
    assert all(not name.startswith("layer3") for name in report["layers"]) and report["layers"]
    original, *converted = report["stages"]
    assert all(s["macs"] < original["macs"] and s["params"] < original["params"] for s in converted)
    assert float(report["files"]["onnx_max_abs_diff"]) < 1e-4
    assert (out / "model.pt").is_file() and (out / "model.onnx").is_file()
    assert "after reconstruction" in capsys.readouterr().out


def test_convert_command_rejects_a_bad_layer_before_any_work(tmp_path, capsys):
    code = main(["convert", "resnet20", "--to", "crelu", "--data", "digits", "--out", str(tmp_path / "o"),
                 "--layers", "conv9"])
    assert code == 2 and "layer 'conv9' is not a convertible layer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_convert_command_rejects_data_the_model_cannot_run_on(tmp_path, capsys):
    code = main(["convert", "lenet5", "--to", "crelu", "--data", "digits", "--out", str(tmp_path / "o")])
    assert code == 2 and "does not run on example inputs of shape 1×1×8×8" in capsys.readouterr().err
