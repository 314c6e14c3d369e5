"""The runtime a run measures latency in (``evaluation.runtime``, ``--runtime``): its rows, its report, a prune
stage's latency target, and the errors when it cannot be used."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from slimkit.cli import main
from slimkit.report import latency_runtime, notes

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")


@needs_openvino
def test_the_runtime_flag_times_a_commands_stages_in_openvino_and_the_report_says_so(tmp_path, capsys):
    assert main(["prune", "lenet5", "--data", "mnist", "--ratio", "0.3", "--runtime", "openvino",
                 "--eval-samples", "100", "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["recipe"]["evaluation"]["runtime"] == "openvino"
    assert [row["latency_runtime"] for row in metrics["stages"]] == ["openvino", "openvino"]
    assert metrics["stages"][1]["latency_status"] in ("ok", "too noisy")  # real timings: no threshold
    report = (tmp_path / "out" / "report.md").read_text()
    assert "in OpenVINO (CPU) at a fixed thread count" in report and "in ONNX Runtime" not in report
    # the run folder reloads with the new fields (a stage's result is checked field by field)
    assert main(["export", str(tmp_path / "out"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0


@needs_openvino
def test_a_prune_latency_target_follows_the_runtime_flag(tmp_path, monkeypatch):
    """``slimkit prune lenet5 --latency 0.6 --runtime openvino``: the table comes from the machine's OpenVINO cache
    (filled by the MAC measurer, so nothing is timed for it) and the pruned model is timed in OpenVINO."""
    from slimkit import models
    from slimkit.analysis import build_latency_table
    from tests.analysis._fake_measurer import MacMeasurer
    from tests.prune.test_latency import _Labelled

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "cache"))
    build_latency_table(models.create("lenet5"), torch.zeros(1, 1, 28, 28), batch=1, backend="openvino",
                        cache_dir=tmp_path / "cache" / "latency",
                        measurer=_Labelled(MacMeasurer(step=16, other=0.05), "openvino"))
    assert main(["prune", "lenet5", "--data", "mnist", "--latency", "0.6", "--runtime", "openvino", "--no-latency",
                 "--eval-samples", "100", "--out", str(tmp_path / "out")]) == 0
    stage = json.loads((tmp_path / "out" / "metrics.json").read_text())["stages"][1]
    assert stage["notes"]["latency_target"]["backend"] == "openvino"
    assert stage["notes"]["latency_target"]["rounds"][0]["predicted"] <= 0.6
    recipe = json.loads((tmp_path / "out" / "run.json").read_text())["recipe"]
    assert "backend" not in recipe["stages"][0]["prune"]["target_latency"]  # it follows evaluation.runtime
    assert recipe["evaluation"]["runtime"] == "openvino"
    assert stage["notes"]["latency_target"]["keeps"]  # the widths chosen, for the folder's replay
    # exporting replays the stage to its saved widths: no search, nothing timed, no OpenVINO needed
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main(["export", str(tmp_path / "out"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    result = tmp_path / "out" / "stages" / "01-prune" / "result.json"
    saved = json.loads(result.read_text())
    saved["notes"]["latency_target"]["keeps"] = {"0": "all"}
    result.write_text(json.dumps(saved))
    assert main(["export", str(tmp_path / "out"), "--format", "onnx", "--out", str(tmp_path / "n.onnx")]) == 2


def test_the_runtime_flag_is_refused_where_nothing_is_timed(tmp_path, capsys):
    assert main(["prune", "lenet5", "--data", "mnist", "--ratio", "0.3", "--runtime", "openvino", "--no-latency",
                 "--out", str(tmp_path / "out")]) == 2
    assert "--runtime sets the latency comparison, which --no-latency skips" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_without_openvino_installed_a_run_that_times_in_it_stops_before_its_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main(["prune", "lenet5", "--data", "mnist", "--ratio", "0.3", "--runtime", "openvino",
                 "--out", str(tmp_path / "out")]) == 2
    assert "evaluation.runtime 'openvino' needs the openvino package: pip install openvino" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["prune", "lenet5", "--data", "mnist", "--latency", "0.6", "--runtime", "openvino", "--no-latency",
                 "--out", str(tmp_path / "out")]) == 2
    assert "evaluation.runtime (--runtime) 'openvino' needs the openvino package" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_report_names_the_runtime_and_says_why_a_stage_has_no_latency():
    rows = [{"stage": "00-input", "latency_runtime": "openvino", "latency_ratio": 1.0},
            {"stage": "01-quantize", "latency_runtime": "openvino",
             "latency_error": "OpenVINO cannot run model.onnx: no converter for MatMulNBits"}]
    assert latency_runtime(rows) == "OpenVINO (CPU)" and latency_runtime([{"stage": "x"}]) == "ONNX Runtime"
    said = notes(rows)
    assert "in OpenVINO (CPU) at a fixed thread count" in said[0]
    assert said[-1] == "No latency for 01-quantize: OpenVINO cannot run model.onnx: no converter for MatMulNBits"


def test_the_console_says_why_a_stage_has_no_latency():
    from rich.console import Console

    from slimkit.cli._common import stage_printer

    console = Console(record=True, width=200)
    row = {"accuracy": 0.9, "params": 10, "macs": 20, "bytes": 2048, "seconds": 1.0, "latency_ratio": None,
           "latency_error": "OpenVINO cannot run /runs/[x]/model.onnx: no conversion rule for MatMulNBits"}
    stage_printer(console)("stage_end", {"result": row})
    assert "no latency: OpenVINO cannot run /runs/[x]/model.onnx: no conversion rule for MatMulNBits" in (
        console.export_text())
