import pytest
import torch
from torch import nn

from slimkit import CheckpointError, ModelSpecError
from slimkit.models import create
from slimkit.prune._unstructured import UnstructuredConfig, finalize, magnitude_prune
from slimkit.share import ClusteredLayer, cluster_weights, load_compressed, save_compressed


def _compressed(name="lenet300", sparsity=0.92):
    torch.manual_seed(0)
    pruned = magnitude_prune(create(name), None, UnstructuredConfig(sparsity=sparsity))
    return cluster_weights(finalize(pruned), None).eval()


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_round_trip_is_exact(tmp_path, name):
    model = _compressed(name)
    summary = save_compressed(model, tmp_path / "m.slim")
    loaded = load_compressed(tmp_path / "m.slim")
    x = torch.randn(16, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))  # bit-identical outputs
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert summary.file_bytes == (tmp_path / "m.slim").stat().st_size
    assert not (tmp_path / "m.slim").read_bytes().startswith(b"\x80")  # not a pickle


def test_compressed_size_much_smaller_than_dense(tmp_path):
    model = _compressed()
    summary = save_compressed(model, tmp_path / "m.slim")
    dense = 266_610 * 4
    # 8% of 266,200 weights at ≤ 5 + 5 bits each plus 410 float32 biases is ≤ 35 KB before Huffman coding
    assert summary.file_bytes < 35_000 and dense / summary.file_bytes > 30
    layer = summary.layers[0]
    assert layer.nonzero == 235_200 - int(0.92 * 235_200)
    assert layer.cluster_stream < layer.stored_entries * 5 / 8  # Huffman beats the fixed 5-bit code


def test_unclustered_model_round_trips(tmp_path):
    model = create("lenet5").eval()
    save_compressed(model, tmp_path / "d.slim")
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(load_compressed(tmp_path / "d.slim")(x), model(x))


def test_spec_resolution_and_errors(tmp_path):
    model = _compressed()
    model.slimkit_spec = "lenet300:num_classes=10"
    save_compressed(model, tmp_path / "a.slim")
    assert load_compressed(tmp_path / "a.slim").slimkit_spec == "lenet300:num_classes=10"
    with pytest.raises(ModelSpecError, match="pass spec="):
        save_compressed(nn.Sequential(nn.Linear(3, 2)), tmp_path / "b.slim")
    (tmp_path / "bad.slim").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a slimkit compressed file"):
        load_compressed(tmp_path / "bad.slim")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_compressed(tmp_path / "missing.slim")
    assert any(isinstance(m, ClusteredLayer) for m in load_compressed(tmp_path / "a.slim").modules())


def test_each_stream_takes_the_smaller_coding(tmp_path):
    # LeNet-5 conv1 (500 weights, 8-bit clusters, 66% kept): its ~330 cluster indices are spread over ~256 values,
    # so a Huffman table costs more than it saves and the stream is packed at a fixed width; fc1's are Huffman-coded.
    torch.manual_seed(0)
    pruned = magnitude_prune(create("lenet5"), None, UnstructuredConfig(sparsity=0.34, layers=["conv1"]))
    model = cluster_weights(finalize(pruned), None).eval()  # conv layers: 8-bit cluster indices, as the paper
    summary = save_compressed(model, tmp_path / "m.slim")
    conv1 = next(layer for layer in summary.layers if layer.name == "conv1")
    assert conv1.cluster_coding == "raw"
    width = conv1.cluster_stream * 8 // conv1.stored_entries  # symbols 0..256 packed at their 8 or 9 bit width
    assert width in (8, 9) and conv1.cluster_stream == -(-conv1.stored_entries * width // 8)
    big = _compressed("lenet300")
    assert {layer.cluster_coding for layer in save_compressed(big, tmp_path / "b.slim").layers} == {"huffman"}
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(load_compressed(tmp_path / "m.slim")(x), model(x))


def test_old_and_future_formats_are_refused_with_the_fix(tmp_path):
    save_compressed(_compressed(), tmp_path / "m.slim")
    raw = bytearray((tmp_path / "m.slim").read_bytes())
    for version, message in [(1, "re-save it"), (99, "upgrade slimkit")]:
        raw[8:12] = version.to_bytes(4, "little")
        (tmp_path / "v.slim").write_bytes(raw)
        with pytest.raises(CheckpointError, match=message):
            load_compressed(tmp_path / "v.slim")


def test_a_model_its_spec_no_longer_builds_is_refused_before_writing(tmp_path):
    from slimkit import ConfigError
    from slimkit.decompose import DecomposeConfig, decompose

    x = torch.randn(1, 1, 28, 28)
    factored = decompose(create("lenet300"), x, DecomposeConfig(method="svd", rank=8, layers="layers.1"))
    factored.slimkit_spec = "lenet300"
    with pytest.raises(ConfigError, match=r"'lenet300' has no 'layers\.1\.0\.weight'.*ONNX"):
        save_compressed(factored, tmp_path / "p.slim")
    assert list(tmp_path.iterdir()) == []
    grown = _compressed()
    grown.extra = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match=r"'lenet300' has no 'extra\.bias'"):
        save_compressed(grown, tmp_path / "g.slim", spec="lenet300")
    wider = create("lenet300")
    wider.layers[1], wider.layers[3] = nn.Linear(784, 400), nn.Linear(400, 100)
    with pytest.raises(ConfigError, match=r"'layers\.1\.weight' is 400×784 where 'lenet300' builds 300×784"):
        save_compressed(wider, tmp_path / "w.slim", spec="lenet300")


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "mobilenet_v2"])
def test_a_channel_pruned_clustered_model_round_trips_exactly(tmp_path, name):
    # Deep Compression after channel pruning: the container records the pruned layout (shapes, and the size
    # attributes pruning set: ResNet-20's shortcut padding, MobileNetV2's depthwise groups) and rebuilds it
    from slimkit.prune import PruneConfig, prune_channels

    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    pruned = prune_channels(create(name).eval(), x[:1], PruneConfig(ratio=0.4))
    model = cluster_weights(finalize(magnitude_prune(pruned, None, UnstructuredConfig(sparsity=0.5))), None).eval()
    save_compressed(model, tmp_path / "m.slim", spec=name)
    loaded = load_compressed(tmp_path / "m.slim")
    assert torch.equal(loaded(x), model(x))
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert (tmp_path / "m.slim").read_bytes()[8] == 4  # the pruned layout's format version
    save_compressed(_compressed(), tmp_path / "plain.slim")
    assert (tmp_path / "plain.slim").read_bytes()[8] == 3  # a spec's own layout: readable by older releases


def test_pruned_models_of_other_dtypes_and_of_the_user_s_code_round_trip(tmp_path):
    from slimkit.prune import PruneConfig, prune_channels

    x = torch.randn(2, 1, 28, 28)
    wide = prune_channels(create("resnet20").eval(), x[:1], PruneConfig(ratio=0.5)).double()
    save_compressed(wide, tmp_path / "d.slim", spec="resnet20")
    # a container's model is built as its spec builds it (float32, as an unpruned one): the weights are the same
    torch.testing.assert_close(load_compressed(tmp_path / "d.slim")(x), wide(x.double()).float())
    (tmp_path / "mine.py").write_text("from torch import nn\n\ndef build():\n    return nn.Sequential("
                                      "nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))\n")
    spec = f"{tmp_path / 'mine.py'}:build"
    from slimkit.models import from_spec

    mine = prune_channels(from_spec(spec, allow_code=True).eval(), x[:1], PruneConfig(ratio=0.5))
    save_compressed(mine, tmp_path / "m.slim", spec=spec)
    assert torch.equal(load_compressed(tmp_path / "m.slim", spec=spec)(x), mine(x))


def test_saving_a_pruned_model_leaves_the_random_state_and_refuses_hugging_face_models(tmp_path):
    from slimkit import ConfigError
    from slimkit.prune import PruneConfig, prune_channels

    pruned = prune_channels(create("lenet5").eval(), torch.zeros(1, 1, 28, 28), PruneConfig(ratio=0.5))
    torch.manual_seed(3)
    save_compressed(pruned, tmp_path / "p.slim", spec="lenet5")
    after = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(1), after)
    lm = create("gpt2_tiny").eval()
    tokens = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(ConfigError, match="save_pruned"):
        save_compressed(prune_channels(lm, {"input_ids": tokens}, PruneConfig(ratio=0.5)), tmp_path / "lm.slim",
                        spec="gpt2_tiny")
