"""``slimkit demo``: the baseline step, then one recipe per family through the pipeline runner."""

import json
import os
import subprocess
import sys

import pytest

from slimkit.cli import main
from slimkit.cli.demo import FAMILIES, available_families, family_recipe
from slimkit.pipeline import parse_recipe
from tests.test_readme import readme_demo_command


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_each_family_recipe_is_valid(family, tmp_path):
    checkpoint = tmp_path / "baseline.pt"
    checkpoint.write_bytes(b"")
    if family not in available_families():
        pytest.skip(f"stages {family.stages} are not all available")
    for quick in (True, False):
        recipe = parse_recipe(family_recipe(family, checkpoint, quick), f"<demo:{family.name}>")
        assert [s.name for s in recipe.stages][: len(family.stages)] == list(family.stages)
        assert (recipe.schema.data.train_samples is not None) == quick


def test_all_seven_families_are_wired():
    assert {f.name for f in available_families()} == {"prune", "quantize", "decompose", "cluster", "convert",
                                                      "distill", "hybrid"}


def test_demo_refuses_a_foreign_non_empty_folder(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert "not an earlier demo's folder" in capsys.readouterr().err
    assert main(["demo", "--only", "nothing", "--out", str(tmp_path / "new")]) == 2


@pytest.mark.slow
def test_the_readme_demo_runs_every_family_and_writes_one_report(tmp_path):
    """The README's demo line as written (``slimkit demo --quick``, no data subsets: it has its own), in a fresh
    folder with an empty cache."""
    env = {**os.environ, "SLIMKIT_CACHE": str(tmp_path / "cache")}
    argv = readme_demo_command()
    assert "--out" not in argv, "the README's demo line writes to the default folder"
    done = subprocess.run([sys.executable, "-m", "slimkit.cli", *argv[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    out = tmp_path / "slimkit-demo"
    assert (tmp_path / "cache" / "lenet5-mnist-e2-n20000.pt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    labels = [r["label"] for r in metrics["stages"]]
    assert labels[0] == "baseline" and len(labels) == 1 + len(available_families())
    base = metrics["stages"][0]
    assert base["accuracy"] > 0.95
    by_family = dict(zip(metrics["families"], metrics["stages"][1:]))
    assert by_family["prune"]["macs"] < base["macs"] and by_family["decompose"]["params"] < base["params"]
    assert by_family["quantize"]["bytes"] < base["bytes"] / 3  # int8 weights
    assert by_family["distill"]["params"] == 266_610  # LeNet-300-100 student
    # a few thousand samples: the fine-tuned variants stay near the baseline, the from-scratch student is weaker
    accuracies = {name: r["accuracy"] for name, r in by_family.items()}
    assert all(acc > 0.9 for name, acc in accuracies.items() if name != "distill"), accuracies
    assert accuracies["distill"] > 0.88, accuracies
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "report:" in done.stdout and "compressed LeNet-5 variants" in " ".join(done.stdout.split())
