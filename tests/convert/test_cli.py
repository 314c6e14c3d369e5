import json

from slimkit.cli import main


def test_convert_command_runs_rewrite_and_finetune_stages(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["convert", "resnet20:width=0.5", "--to", "depthwise-separable", "--data", "digits", "--out",
                 str(out), "--finetune-epochs", "1", "--calibration-samples", "128", "--skip", "layer3.*",
                 "--no-latency"])
    assert code == 0
    stages = json.loads((out / "metrics.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["00-input", "01-convert", "02-finetune"]
    original, converted, tuned = stages
    assert converted["macs"] < original["macs"] and converted["params"] < original["params"]
    assert tuned["macs"] == converted["macs"]
    assert (out / "model.pt").is_file() and (out / "model.onnx").is_file()
    assert "02-finetune" in capsys.readouterr().out


def test_convert_command_rejects_a_bad_layer_before_any_work(tmp_path, capsys):
    code = main(["convert", "resnet20", "--to", "crelu", "--data", "digits", "--out", str(tmp_path / "o"),
                 "--layers", "conv9"])
    assert code == 2 and "layer 'conv9' is not a convertible layer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_convert_command_rejects_data_the_model_cannot_run_on(tmp_path, capsys):
    code = main(["convert", "lenet5", "--to", "crelu", "--data", "digits", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot run on the 1×8×8 inputs of 'digits'" in err and "resnet20" in err
    assert not (tmp_path / "o").exists()
