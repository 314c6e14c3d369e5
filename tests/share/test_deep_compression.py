import pytest
import torch

from slimkit import ConfigError
from slimkit.data import create_data
from slimkit.models import create
from slimkit.share import (
    ClusterConfig,
    ClusteredLayer,
    DeepCompressionConfig,
    deep_compression,
    deep_compression_stages,
    load_compressed,
    save_deep_compression,
)
from slimkit.train import default_optimizer, fit


def test_config_validated_before_work(tmp_path):
    with pytest.raises(ConfigError, match="out of range"):
        DeepCompressionConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match="not a selectable layer"):
        deep_compression(create("lenet300"), None, DeepCompressionConfig(sparsity={"fc9": 0.5}))
    with pytest.raises(ConfigError, match="pass data="):
        deep_compression(create("lenet300"), None, DeepCompressionConfig())
    with pytest.raises(ConfigError, match="save_compressed"):
        save_deep_compression(create("lenet300"), tmp_path / "x.slim")
    assert not (tmp_path / "x.slim").exists()


@pytest.mark.slow
def test_pipeline_on_mnist_lenet300(tmp_path):
    data = create_data("mnist", batch_size=128)
    model = create("lenet300")
    fit(model, data.train, epochs=2, optimizer=lambda p: default_optimizer(p, 0.05), scheduler="cosine",
        progress=False)
    config = DeepCompressionConfig(sparsity={"layers.1": 0.92, "layers.3": 0.91, "layers.5": 0.74},
                                   prune_iterations=2, prune_epochs=1, cluster_epochs=1,
                                   cluster=ClusterConfig(fc_bits=5), lr=0.05, cluster_lr=0.005)
    compressed = deep_compression(model, None, config, data=data)
    assert len(deep_compression_stages(compressed)) == 4 and not (tmp_path / "m.slim").exists()
    result = save_deep_compression(compressed, tmp_path / "m.slim", "lenet300", data=data)
    assert result.model is compressed and result.stages[:4] == deep_compression_stages(compressed)
    stages = {r["stage"].split(" ")[0]: r for r in result.stages}
    assert stages["baseline"]["nonzero"] == 266_200
    assert stages["pruned"]["nonzero"] == 266_200 - (int(0.92 * 235_200) + int(0.91 * 30_000) + int(0.74 * 1000))
    final = result.stages[-1]
    assert final["bytes"] == (tmp_path / "m.slim").stat().st_size
    assert final["ratio"] > 30
    assert final["accuracy"] > 0.95
    assert final["accuracy"] == pytest.approx(result.stages[-2]["accuracy"])  # the file holds the same model
    loaded = load_compressed(tmp_path / "m.slim")
    x = data.test.inputs[:8]
    assert torch.equal(loaded(x), result.model(x))
    assert all(isinstance(loaded.get_submodule(f"layers.{i}"), ClusteredLayer) for i in (1, 3, 5))
    assert [r["kept_pct"] for r in result.layers] == pytest.approx([8.0, 9.0, 26.0], abs=0.01)


def test_layer_rates_are_the_files_bytes_per_layer(tmp_path):
    """The per-layer table is computed from what the container holds: % kept from the stored non-zeros, the P+Q+H
    rate from the coded streams, tables and codebook; Huffman never costs more bits than the fixed width here."""
    from slimkit.prune import UnstructuredConfig, finalize, magnitude_prune
    from slimkit.share import cluster_weights, layer_rates, save_compressed

    torch.manual_seed(0)
    pruned = magnitude_prune(create("lenet300"), None, UnstructuredConfig({"layers.1": 0.9, "layers.3": 0.5}))
    model = cluster_weights(finalize(pruned), None, ClusterConfig(fc_bits=4)).eval()
    summary = save_compressed(model, tmp_path / "m.slim", "lenet300")
    rows = {r["layer"]: r for r in layer_rates(summary)}
    assert set(rows) == {"layers.1", "layers.3", "layers.5"}
    assert rows["layers.1"]["weights"] == 235_200
    assert rows["layers.1"]["kept_pct"] == pytest.approx(100 * (235_200 - int(0.9 * 235_200)) / 235_200)
    assert rows["layers.3"]["kept_pct"] == pytest.approx(50.0) and rows["layers.5"]["kept_pct"] == 100.0
    for lb in summary.layers:
        row = rows[lb.name]
        assert row["weight_bits"] == 4
        assert row["rate_pqh"] * lb.weights * 4 == pytest.approx(lb.codebook + lb.cluster_stream + lb.index_stream
                                                                 + lb.tables)
        assert row["weight_bits_huffman"] <= row["weight_bits"] + 1e-9
    assert rows["layers.1"]["rate_pqh"] < rows["layers.3"]["rate_pqh"] < rows["layers.5"]["rate_pqh"]
