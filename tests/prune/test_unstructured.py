import pytest
import torch
from torch import nn

from slimkit import ConfigError
from slimkit.models import create
from slimkit.prune._unstructured import (
    MaskCallback,
    UnstructuredConfig,
    apply_masks_,
    attached_masks,
    finalize,
    magnitude_prune,
    relative_index_bytes,
    sparse_storage,
    sparsity_of,
)
from slimkit.train import fit


def _loader(n=64):
    x = torch.randn(n, 1, 28, 28)
    y = torch.randint(0, 10, (n,))
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def test_layerwise_sparsity_exact_and_smallest_removed():
    model = create("lenet300")
    pruned = magnitude_prune(model, None, UnstructuredConfig(sparsity=0.75))
    masks = attached_masks(pruned)
    for name, s in sparsity_of(pruned).items():
        w = pruned.get_submodule(name).weight
        assert s == pytest.approx(int(0.75 * w.numel()) / w.numel())
        orig = model.get_submodule(name).weight.abs()
        assert orig[~masks[name]].max() <= orig[masks[name]].min()
    assert (model.layers[1].weight != 0).all()  # caller's model untouched


def test_global_scope_one_threshold():
    model = create("lenet300")
    pruned = magnitude_prune(model, None, UnstructuredConfig(sparsity=0.9, scope="global"))
    masks = attached_masks(pruned)
    kept = torch.cat([model.get_submodule(n).weight.abs()[m] for n, m in masks.items()])
    dropped = torch.cat([model.get_submodule(n).weight.abs()[~m] for n, m in masks.items()])
    assert dropped.max() <= kept.min()
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == int(0.9 * total)


def test_selection_by_pattern_and_regex():
    model = create("lenet5")
    pruned = magnitude_prune(model, None, UnstructuredConfig(sparsity={"re:conv.*": 0.5}, layers="*"))
    masks = attached_masks(pruned)
    assert set(masks) == {"conv1", "conv2"}
    assert (pruned.fc1.weight != 0).all()


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_ratio_validated(bad):
    with pytest.raises(ConfigError, match="out of range"):
        UnstructuredConfig(sparsity=bad)


def test_unknown_layer_name_fails_before_work():
    with pytest.raises(ConfigError, match="not a selectable layer"):
        magnitude_prune(create("lenet5"), None, UnstructuredConfig(sparsity=0.5, layers=["conv9"]))


def test_masks_keep_zeros_through_fit():
    model = create("lenet300")
    pruned = magnitude_prune(model, None, UnstructuredConfig(sparsity=0.8))
    masks = attached_masks(pruned)
    before = {n: pruned.get_submodule(n).weight.detach().clone() for n in masks}
    fit(pruned, _loader(), epochs=2, callbacks=[MaskCallback()], progress=False)
    for name, mask in masks.items():
        w = pruned.get_submodule(name).weight
        assert (w[~mask] == 0).all()
        assert not torch.equal(w[mask], before[name][mask])  # the kept weights did train
    final = finalize(pruned)
    assert not any("weight_mask" in dict(m.named_buffers()) for m in final.modules())
    assert set(final.state_dict()) == set(model.state_dict())
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(final(x), pruned(x))


def test_apply_masks_explicit():
    lin = nn.Sequential(nn.Linear(4, 4))
    mask = torch.eye(4, dtype=torch.bool)
    apply_masks_(lin, {"0": mask})
    assert int((lin[0].weight != 0).sum()) == 4


def test_relative_index_bytes_counts_fillers():
    mask = torch.zeros(100, dtype=torch.bool)
    mask[[0, 1, 50]] = True  # gap 49 with 3-bit indices (span 8) needs 6 fillers
    assert relative_index_bytes(mask, value_bits=5, index_bits=3) == (9 * 8 + 7) // 8
    rows = sparse_storage(create("lenet300"))
    assert rows[0].dense_bytes == 784 * 300 * 4 and rows[0].nonzero == 784 * 300


def test_channel_pruning_a_masked_model_slices_its_masks_with_its_weights():
    """prune_unstructured then prune (channels): each layer's weight_mask (a buffer the forward never reads) loses
    the rows and columns its weight loses, so the fine-tune after it keeps the zeros instead of failing on a
    300×784 mask over a 150×784 weight; the input model keeps its own masks."""
    from slimkit.data import TensorLoader, mnist_tensors
    from slimkit.prune import PruneConfig, prune_channels, pruning_info

    torch.manual_seed(0)
    masked = magnitude_prune(create("lenet300"), None, UnstructuredConfig(sparsity=0.9))
    before = {name: mask.clone() for name, mask in attached_masks(masked).items()}
    pruned = prune_channels(masked, torch.zeros(1, 1, 28, 28), PruneConfig(ratio=0.5))
    layers = dict(pruned.named_modules())
    keep = pruning_info(pruned)["keep"]
    for name, mask in attached_masks(pruned).items():
        weight = layers[name].weight
        assert mask.shape == weight.shape and torch.equal(weight[~mask], torch.zeros_like(weight[~mask]))
        rows = keep.get(name, {}).get("out", list(range(before[name].shape[0])))
        cols = keep.get(name, {}).get("in", list(range(before[name].shape[1])))
        assert torch.equal(mask, before[name][rows][:, cols])
    assert all(torch.equal(attached_masks(masked)[n], m) for n, m in before.items())
    x, y = mnist_tensors("train")
    fit(pruned, TensorLoader(x[:256], y[:256], 128), epochs=1, progress=False, callbacks=[MaskCallback()])
    assert all(torch.equal(layers[n].weight[~m], torch.zeros_like(layers[n].weight[~m]))
               for n, m in attached_masks(pruned).items())
