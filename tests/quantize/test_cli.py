import json

import pytest
import torch

from slimkit import models
from slimkit.cli import main
from slimkit.export import optimized_op_types
from slimkit.train import save_checkpoint


@pytest.mark.slow
def test_quantize_command_writes_int8_onnx_and_prints_before_after(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_checkpoint(models.create("lenet5").state_dict(), tmp_path / "w.pt")
    out = tmp_path / "out"
    argv = ["quantize", "lenet5", "-c", str(ckpt), "--bits", "8", "--calib", "mnist", "--calib-size", "256",
            "--out", str(out), "--batch-size", "8"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "fp32" in printed and "int8 (w8)" in printed and "latency ratio" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["file_bytes"]["int8"] < 0.3 * metrics["file_bytes"]["fp32"]
    assert abs(metrics["accuracy"]["int8"] - metrics["accuracy"]["fp32"]) < 0.02
    assert metrics["int8_kernels"] == 4
    assert optimized_op_types(out / "model_int8.onnx").get("QLinearConv") == 2


@pytest.mark.parametrize(("extra", "message"), [(["--bits", "9"], "bit width 9"), (["--bits", "1"], "bit width 1")])
def test_quantize_command_rejects_bad_bits(tmp_path, capsys, extra, message):
    assert main(["quantize", "lenet5", "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any work
