"""Every shipped recipe validates; each runs end to end (shortened: 1 epoch per training stage, a data subset)."""

import re
from pathlib import Path

import pytest
import torch

from slimkit.pipeline import load_recipe, load_run, parse_recipe, run_recipe, structure_fingerprint

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_the_five_recipes_are_shipped():
    assert {p.stem for p in RECIPES} >= {"deep-compression-lenet300", "deep-compression-lenet5", "thinet-resnet20",
                                         "dws-distill-lenet5", "prune-kd-int8-lenet5"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.schema.version == 1 and recipe.stages and recipe.title


def shortened(path: Path) -> str:
    text = re.sub(r"epochs: \d+", "epochs: 1", path.read_text())
    return text.replace("data: {name: mnist, batch_size: 128}",
                        "data: {name: mnist, batch_size: 128, train_samples: 4000, eval_samples: 500}\n"
                        "evaluation: {repeats: 2, warmup: 1, threads: 1}")


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in RECIPES if "resnet" not in p.stem], ids=lambda p: p.stem)
def test_recipe_runs_and_its_run_folder_reloads(path, tmp_path):
    recipe = parse_recipe(shortened(path), str(path), path.parent)
    assert recipe.schema.data.train_samples == 4000
    result = run_recipe(recipe, tmp_path / "run", progress=False)
    final = result.stages[-1]
    assert len(result.stages) == len(recipe.stages) + 1
    assert final["accuracy"] > 0.5, final
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "model.onnx").is_file()
    assert final["notes"]["export"]["ok"]
    clustered = [row for row in result.stages if row["name"] == "cluster"]
    assert bool(clustered) == ("deep-compression" in path.stem)
    for row in clustered:  # a clustered model's size is its Huffman-coded container file, not the estimate
        slim = tmp_path / "run" / "stages" / row["stage"] / "model.slim"
        assert row["bytes"] == slim.stat().st_size < row["profile_bytes"]
    # the architecture is rebuilt by replaying the structural stages: same layout, same outputs
    model, data, _ = load_run(tmp_path / "run")
    assert structure_fingerprint(model) == structure_fingerprint(result.model)
    x = data.test.inputs[:16]
    torch.testing.assert_close(model(x), result.model.eval()(x), atol=1e-5, rtol=0)
