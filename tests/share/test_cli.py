import json

import pytest

from slimkit.cli import main


@pytest.mark.slow
def test_cluster_command_writes_container(tmp_path):
    out = tmp_path / "out"
    assert main(["cluster", "lenet300", "--bits", "4", "--data", "mnist", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "model.slim").stat().st_size == metrics["compressed_bytes"]
    assert metrics["spec"] == "lenet300:num_classes=10"
    assert metrics["ratio"] > 6  # 4-bit indices for dense weights: ~32/4.x bits, biases float32
    assert (out / "model.onnx").is_file()
    assert main(["cluster", "lenet300", "--bits", "40", "--data", "mnist", "--out", str(tmp_path / "o2")]) == 2
