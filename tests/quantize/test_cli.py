import json

import pytest
import torch

from slimkit import models
from slimkit.cli import main
from slimkit.export import optimized_op_types
from slimkit.train import save_checkpoint


def test_quantize_command_writes_int8_onnx_and_its_run(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_checkpoint(models.create("lenet5").state_dict(), tmp_path / "w.pt")
    out = tmp_path / "out"
    argv = ["quantize", "lenet5", "-c", str(ckpt), "--bits", "8", "--calib", "mnist", "--calib-size", "256",
            "--eval-samples", "500", "--out", str(out), "--latency-batch", "8", "--reduce-range"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "01-quantize" in printed and "latency" in printed
    input_row, int8_row = json.loads((out / "metrics.json").read_text())["stages"]
    assert int8_row["onnx_bytes"] < 0.3 * input_row["onnx_bytes"]
    assert abs(int8_row["accuracy"] - input_row["accuracy"]) < 0.02
    assert optimized_op_types(out / "model.onnx").get("QLinearConv") == 2
    # 7-bit weights, as asked (the recipe keeps the choice, the stage says what it gave the kernels)
    assert "reduce_range: true" in (out / "recipe.yaml").read_text()
    assert int8_row["notes"]["weight_range"] == {"bits": 7, "reduce_range": True, "reason": "set by the config"}


@pytest.mark.parametrize(("extra", "message"), [(["--bits", "9"], "bit width 9"), (["--bits", "1"], "bit width 1"),
                                                (["--calib-size", "-1"], "--calib-size: -1 is out of range")])
def test_quantize_command_rejects_bad_values(tmp_path, capsys, extra, message):
    assert main(["quantize", "lenet5", "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any work
