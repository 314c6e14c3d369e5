import json

from slimkit.cli import main
from slimkit.share import load_compressed


def test_cluster_command_writes_container(tmp_path):
    out = tmp_path / "out"
    assert main(["cluster", "lenet300", "--bits", "4", "--data", "mnist", "--eval-samples", "500", "--no-latency",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    dense, clustered = metrics["stages"][0], metrics["stages"][1]
    assert clustered["bytes"] == (out / "stages" / "01-cluster" / "model.slim").stat().st_size
    assert (out / "model.slim").stat().st_size == clustered["bytes"]
    assert dense["bytes"] / clustered["bytes"] > 6  # 4-bit indices for dense weights: ~32/4.x bits, float biases
    assert load_compressed(out / "model.slim").slimkit_spec == "lenet300"
    assert (out / "model.onnx").is_file()
    assert main(["cluster", "lenet300", "--bits", "40", "--data", "mnist", "--out", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()


def test_cluster_command_passes_the_centroid_gradient_to_its_recipe(tmp_path):
    out = tmp_path / "out"
    assert main(["cluster", "lenet300", "--bits", "3", "--centroid-gradient", "mean", "--epochs", "1",
                 "--train-samples", "512", "--data", "mnist", "--eval-samples", "200", "--no-latency",
                 "--out", str(out)]) == 0
    assert "centroid_gradient: mean" in (out / "recipe.yaml").read_text()  # the recipe that reproduces the run
    assert main(["cluster", "lenet300", "--centroid-gradient", "median", "--out", str(tmp_path / "o2")]) == 2
    # without fine-tuning the setting does nothing: said before any work, not written into a recipe
    assert main(["cluster", "lenet300", "--centroid-gradient", "mean", "--out", str(tmp_path / "o3")]) == 2
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
