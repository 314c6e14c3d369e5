"""``slimkit prune`` runs a prune recipe into a run folder and prints before/after."""

from __future__ import annotations

import json

import yaml

from slimkit.cli import main


def test_prune_command_writes_a_run_folder_with_its_recipe(tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(["prune", "lenet5", "--ratio", "0.5", "--criterion", "l1", "--data", "mnist", "--eval-samples",
                 "200", "--no-latency", "--out", str(out)])
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"model.pt", "model.onnx", "metrics.json", "recipe.yaml", "run.json",
                                              "report.html"}
    stages = json.loads((out / "metrics.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["00-input", "01-prune"]
    assert stages[0]["macs"] == 2_293_000 and stages[1]["macs"] == 646_500  # hand count in tests/prune
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["stages"] == [{"prune": {"ratio": 0.5, "criterion": "l1", "scope": "layer", "speedup": None,
                                           "round_to": 1, "skip": [], "protect_first": False, "seed": 0,
                                           "schedule": "oneshot"}}]
    printed = capsys.readouterr().out
    assert "01-prune" in printed and "646,500" in printed and "recipe.yaml" in printed


def test_bad_ratio_is_one_line_error(tmp_path, capsys):
    code = main(["prune", "lenet5", "--ratio", "1.5", "--data", "mnist", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "use a value in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_input_checkpoint_is_never_overwritten(tmp_path, capsys):
    import torch

    from slimkit import models

    folder = tmp_path / "d"
    folder.mkdir()
    torch.save(models.create("lenet5").state_dict(), folder / "model.pt")
    before = (folder / "model.pt").read_bytes()
    for extra in ([], ["--force"], ["--resume"]):
        assert main(["prune", "lenet5", "-c", str(folder / "model.pt"), "--data", "mnist", "--out", str(folder),
                     *extra]) == 2
        assert "inside the output folder" in capsys.readouterr().err
    assert (folder / "model.pt").read_bytes() == before and [p.name for p in folder.iterdir()] == ["model.pt"]
