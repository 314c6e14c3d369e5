"""prune_channels: config validation, every criterion, targets, rounding, protection, the whole model zoo, ViT."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from slimkit import ConfigError, models
from slimkit.analysis import profile
from slimkit.prune import CRITERIA, PruneConfig, prune_channels, pruning_info


def _calibration(n: int = 64, shape=(1, 28, 28)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.rand(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen)) for _ in range(2)]


@pytest.mark.parametrize(("options", "message"), [
    ({"ratio": 1.5}, r"prune ratio 1.5 is out of range: use a value in \[0, 1\)"),
    ({"ratio": {"conv2": 1.5}}, r"prune ratio 1.5 for 'conv2' is out of range: use a value in \[0, 1\)"),
    ({"criterion": "l3"}, r"unknown criterion 'l3': choose one of bn_scale, fpgm, l1"),
    ({"scope": "everywhere"}, "scope 'everywhere' is unknown"),
    ({"speedup": 0.5}, "speedup 0.5 must be > 1"),
    ({"round_to": 0}, "round_to 0 must be"),
    ({"kinds": ("heads", "width")}, "kinds .* must be a non-empty subset of heads, channels, residual"),
    ({"gqa": "kv"}, "gqa 'kv' is unknown"),
    ({"timeout": 0}, "timeout 0 must be a positive number"),
])
def test_bad_config_is_rejected_when_made(options, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**options)


def test_data_driven_criterion_without_data_names_the_fix():
    with pytest.raises(ConfigError, match="needs calibration data"):
        prune_channels(models.create("lenet5"), torch.zeros(1, 1, 28, 28), PruneConfig(criterion="thinet"))


@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_every_criterion_halves_lenet5(criterion):
    model = models.create("lenet5")
    x = torch.zeros(1, 1, 28, 28)
    pruned = prune_channels(model, x, PruneConfig(ratio=0.5, criterion=criterion), data=_calibration())
    assert (pruned.conv1.out_channels, pruned.conv2.out_channels, pruned.fc1.out_features) == (10, 25, 250)
    assert pruned.fc2.out_features == 10 and model.conv1.out_channels == 20
    assert profile(pruned, x).total.macs == 646_500
    assert torch.isfinite(pruned(torch.rand(2, 1, 28, 28))).all()


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_per_channel_power_sums_match_the_definition_in_chunks(p, dim):
    from slimkit.prune._criteria import dim_power_sums

    t = torch.randn(7, 5, 3, generator=torch.Generator().manual_seed(0))
    expected = (t.double().abs() ** p).movedim(dim, 0).reshape(t.shape[dim], -1).sum(1)
    for chunk in (1, 4, 1 << 22):  # one row / a few rows / everything per chunk
        torch.testing.assert_close(dim_power_sums(t, dim, p, chunk=chunk), expected, rtol=1e-5, atol=1e-6)


def test_l1_keeps_the_largest_filters_and_copies_their_weights():
    model = models.create("lenet5")
    pruned = prune_channels(model, torch.zeros(1, 1, 28, 28), PruneConfig(ratio=0.5, criterion="l1"))
    norms = model.conv1.weight.abs().sum((1, 2, 3)) + model.conv1.bias.abs()
    kept = sorted(torch.topk(norms, 10).indices.tolist())
    assert pruning_info(pruned)["keep"]["conv1"]["out"] == kept
    torch.testing.assert_close(pruned.conv1.weight, model.conv1.weight[kept])
    torch.testing.assert_close(pruned.conv2.weight, model.conv2.weight[pruning_info(pruned)["keep"]["conv2"]["out"]]
                               [:, kept])


def test_per_layer_ratios_round_to_and_skip():
    model, x = models.create("lenet5"), torch.zeros(1, 1, 28, 28)
    pruned = prune_channels(model, x, PruneConfig(ratio={"conv*": 0.5}, round_to=8))
    assert (pruned.conv1.out_channels, pruned.conv2.out_channels, pruned.fc1.out_features) == (16, 32, 500)
    pruned = prune_channels(model, x, PruneConfig(ratio=0.5, skip=("conv2",), protect_first=True))
    assert (pruned.conv1.out_channels, pruned.conv2.out_channels, pruned.fc1.out_features) == (20, 50, 250)


def test_layer_options_leaving_no_group_are_an_error_not_a_no_op():
    model, x = models.create("lenet5"), torch.zeros(1, 1, 28, 28)
    with pytest.raises(ConfigError, match=r"skip=\['conv\*', 'fc\*'\] leave no channel group"):
        prune_channels(model, x, PruneConfig(ratio=0.5, skip=("conv*", "fc*")))
    with pytest.raises(ConfigError, match=r"kinds=\['heads'\] leave no channel group"):
        prune_channels(model, x, PruneConfig(ratio=0.5, kinds=("heads",)))
    assert prune_channels(model, x, PruneConfig(ratio=0.5, skip=("conv*",))).fc1.out_features == 250
    with pytest.raises(ConfigError, match=r"ratio pattern 'fc2' matches no channel group .*conv1, conv2, fc1"):
        prune_channels(model, x, PruneConfig(ratio={"conv*": 0.5, "fc2": 0.5}))  # the output keeps its units


def test_speedup_target_is_reached_by_search():
    model, x = models.create("resnet20"), torch.zeros(1, 1, 28, 28)
    base = profile(model, x).total.macs
    pruned = prune_channels(model, x, PruneConfig(speedup=2.0, scope="global"))
    macs = profile(pruned, x).total.macs
    assert base / 2.6 < macs <= base / 2


def test_global_scope_prunes_unevenly_but_to_the_total():
    model, x = models.create("lenet5"), torch.zeros(1, 1, 28, 28)
    pruned = prune_channels(model, x, PruneConfig(ratio=0.5, scope="global"))
    kept = [kept for kept, _ in pruning_info(pruned)["groups"].values()]
    assert sum(kept) == 570 - 285


def test_vit_head_pruning_keeps_it_runnable(tmp_path):
    from slimkit.export import export_onnx, onnx_max_abs_diff

    model = models.create("vit_tiny").eval()
    x = torch.zeros(1, 1, 28, 28)
    pruned = prune_channels(model, x, PruneConfig(ratio={"re:.*qkv": 0.5, "re:.*fc1": 0.25})).eval()
    for i in range(4):
        block = pruned.get_submodule(f"blocks.{i}")
        assert block.attn.qkv.out_features == 3 * 2 * 16 and block.attn.proj.in_features == 32  # 2 of 4 heads
        assert block.fc1.out_features == 96
    out = pruned(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    path = export_onnx(pruned, x, tmp_path / "vit.onnx")
    assert onnx_max_abs_diff(pruned, path, torch.rand(4, 1, 28, 28)) < 1e-4


def test_vit_zero_heads_removed_exactly():
    model = models.create("vit_tiny").eval()
    attn = model.blocks[1].attn
    with torch.no_grad():  # head 2's value rows and output columns to zero: the head contributes nothing
        for s in range(3):
            attn.qkv.weight[s * 64 + 32: s * 64 + 48] = 0
            attn.qkv.bias[s * 64 + 32: s * 64 + 48] = 0
        attn.proj.weight[:, 32:48] = 0
    x = torch.rand(2, 1, 28, 28)
    pruned = prune_channels(model, x[:1], PruneConfig(ratio={"blocks.1.attn.qkv": 0.25}, criterion="l1")).eval()
    assert pruned.get_submodule("blocks.1.attn.qkv").out_features == 144
    torch.testing.assert_close(pruned(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in models.names() if not models.input_spec(n).is_tokens])  # image models
def test_every_registered_model_prunes_30_percent_globally(name, tmp_path):
    from slimkit.export import export_onnx, onnx_max_abs_diff

    model = models.create(name).eval()
    x = torch.rand(1, *models.default_input_shape(name))
    pruned = prune_channels(model, x, PruneConfig(ratio=0.3, scope="global")).eval()
    assert profile(pruned, x).total.params < profile(model, x).total.params
    out = pruned(torch.rand(2, *x.shape[1:]))
    assert torch.isfinite(out).all()
    path = export_onnx(pruned, x, tmp_path / f"{name}.onnx")
    assert onnx_max_abs_diff(pruned, path, torch.rand(2, *x.shape[1:])) < 1e-4


def test_pruning_info_survives_deepcopy():
    import copy

    pruned = prune_channels(models.create("lenet5"), torch.zeros(1, 1, 28, 28), PruneConfig(ratio=0.5))
    assert pruning_info(copy.deepcopy(pruned))["keep"]["conv1"]["out"] == pruning_info(pruned)["keep"]["conv1"]["out"]


def test_caller_model_is_untouched_and_result_trains():
    model = models.create("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_channels(model, torch.zeros(1, 1, 28, 28), PruneConfig(ratio=0.5)).train()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    loss = nn.functional.cross_entropy(pruned(torch.rand(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in pruned.parameters())
    assert np.isfinite(loss.item())


class _ConstantView(nn.Module):
    """A classic LeNet: ``x.view(-1, 16 * 4 * 4)`` hard-codes the width pruning changes."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.f1, self.f2 = nn.Linear(16 * 4 * 4, 120), nn.Linear(120, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.f2(torch.relu(self.f1(x.view(-1, 16 * 4 * 4))))


def test_a_constant_size_in_the_code_falls_back_to_a_graph_module_and_says_so():
    model, x = _ConstantView().eval(), torch.rand(1, 1, 28, 28)
    pruned = prune_channels(model, x, PruneConfig(ratio=0.5))
    assert isinstance(pruned, torch.fx.GraphModule) and "view(-1, 128)" in pruned.code
    assert "op 'Tensor.view' in module '<root>'" in pruning_info(pruned)["graph_module"]
    assert pruned(torch.rand(3, 1, 28, 28)).shape == (3, 10) and pruned.f1.in_features == 128
    assert set(pruned.state_dict()) == set(model.state_dict())  # same parameter names
    assert type(prune_channels(models.create("lenet5"), x, PruneConfig(ratio=0.5))).__name__ == "LeNet5"


class _FixedHeadAttention(nn.Module):
    """Attention whose code hard-codes its head layout (as torchvision's Swin derives it from the input width):
    pruning its projections cannot be followed, so it must be kept whole."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return self.proj(((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(b, n, 16))


class _Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.ModuleList([_FixedHeadAttention(), _FixedHeadAttention()])
        self.mlp = nn.ModuleList([nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16)) for _ in range(2)])
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        for attn, mlp in zip(self.attn, self.mlp):
            x = x + attn(x)
            x = x + mlp(x)
        return self.head(x.mean(1))


def test_a_module_whose_sizes_cannot_be_rewritten_is_kept_whole_and_the_rest_pruned():
    torch.manual_seed(0)
    model, x = _Blocks().eval(), torch.randn(1, 5, 16)
    pruned = prune_channels(model, x, PruneConfig(ratio=0.5))
    assert type(pruned) is _Blocks  # the user's class, not a torch.fx fallback
    info = pruning_info(pruned)
    assert info["kept_whole"] == ["attn.0", "attn.1"] and info["graph_module"] is None
    assert [m.qkv.out_features for m in pruned.attn] == [48, 48]  # every instance of the class, kept whole
    assert [m[0].out_features for m in pruned.mlp] == [32, 32]  # the MLP widths still lose half their units
    # what is kept computes exactly what it did: the removed hidden units' contributions are all that changed
    reference = copy.deepcopy(model)
    for mlp, kept in zip(reference.mlp, (info["keep"]["mlp.0.0"]["out"], info["keep"]["mlp.1.0"]["out"])):
        mask = torch.zeros(64, dtype=torch.bool)
        mask[kept] = True
        mlp[2].weight.data[:, ~mask] = 0
    batch = torch.randn(3, 5, 16)
    assert torch.allclose(pruned(batch), reference(batch), atol=1e-5)
