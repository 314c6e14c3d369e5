import json
import subprocess
import sys

import pytest

from slimkit.cli import main


def test_profile_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", "lenet5", "--json", str(out)]) == 0
    assert "2,293,000" in capsys.readouterr().out
    assert json.loads(out.read_text())["total"]["params"] == 431_080


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", "lenet7"], "unknown model 'lenet7'"),
        (["profile", "lenet5", "-c", "/no/such.pt"], "does not exist"),
        (["train", "lenet5", "--data", "imagenet", "--out", "x"], "unknown dataset 'imagenet'"),
        (["train", "lenet5", "--weight-decay", "-1", "--out", "x"], "weight_decay=-1.0: use a value in [0, 1)"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_train_refuses_a_non_empty_output_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["train", "lenet300", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_slimkit_train_lenet5_reaches_99_percent_on_mnist(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "slimkit.cli", "train", "lenet5", "--data", "mnist", "--out",
                           str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.990
    assert float(metrics["files"]["onnx_max_abs_diff"]) < 1e-4
    assert (out / "model.onnx").is_file() and (out / "model.pt").is_file()
