"""``slimkit prune`` writes the pruned state dict + ONNX + JSON and prints before/after."""

from __future__ import annotations

import json

import pytest

from slimkit.cli import main


@pytest.mark.slow
def test_prune_command_writes_model_and_summary(tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(["prune", "lenet5", "--ratio", "0.5", "--criterion", "l1", "--data", "mnist", "--out", str(out)])
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"model.pt", "model.onnx", "pruning.json"}
    summary = json.loads((out / "pruning.json").read_text())
    assert summary["before"]["macs"] == 2_293_000 and summary["after"]["macs"] == 646_500
    assert float(summary["files"]["onnx_max_abs_diff"]) < 1e-4
    assert "after" in capsys.readouterr().out


def test_bad_ratio_is_one_line_error(tmp_path, capsys):
    code = main(["prune", "lenet5", "--ratio", "1.5", "--data", "mnist", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "use a value in [0, 1)" in capsys.readouterr().err
