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


def test_a_recipe_prunes_channels_then_deep_compresses_into_one_container(tmp_path):
    # the hybrid: channel pruning, then Deep Compression's sparsity + k-means + Huffman, in one .slim file that
    # rebuilds the pruned model exactly (and `slimkit export RUN --format compressed` writes the same)
    import torch

    from slimkit.pipeline import load_run

    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: {spec: lenet300}\ndata: {name: mnist, train_samples: 256, "
                      "eval_samples: 256}\nevaluation: {latency: false}\nstages:\n  - prune: {ratio: 0.5}\n"
                      "  - prune_unstructured: {sparsity: 0.8}\n  - cluster: {bits: 4}\n"
                      "  - export: {format: compressed, file: m.slim}\n")
    out = tmp_path / "run"
    assert main(["compress", str(recipe), "--out", str(out)]) == 0
    run_model = load_run(out)[0].eval()
    slim = load_compressed(out / "m.slim")
    assert slim.layers[1].indices.shape == (150, 784)
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(slim(x), run_model(x))
    assert main(["export", str(out), "--format", "compressed", "--out", str(tmp_path / "again.slim")]) == 0
    assert torch.equal(load_compressed(tmp_path / "again.slim")(x), run_model(x))
