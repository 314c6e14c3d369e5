"""shared_copy: the copy pruning works on shares the original's parameters and nothing mutable besides them."""

import copy

import torch
from torch import nn

from slimkit.graph._graph import shared_copy
from slimkit.models import create, example_input


class _WithState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight  # tied
        self.alias = self.a  # the same submodule under two names
        self.register_buffer("steps", torch.zeros(3))
        self.sizes = [4, 4]  # a mutable attribute
        self.options = {"k": [1]}
        self.kernel = (3, 3)

    def forward(self, x):
        return self.b(self.a(x)) + self.steps.sum()


def test_copy_shares_parameters_and_copies_everything_mutable():
    model = _WithState()
    twin = shared_copy(model)
    assert twin.a.weight is model.a.weight and twin.b.weight is twin.a.weight  # shared and still tied
    assert twin.alias is twin.a and twin.a is not model.a
    assert twin.steps is not model.steps and torch.equal(twin.steps, model.steps)
    twin.steps.add_(1)
    twin.sizes.append(8)
    twin.options["k"].append(2)
    twin._forward_hooks[0] = lambda *a: None
    assert model.steps.sum() == 0 and model.sizes == [4, 4] and model.options == {"k": [1]}
    assert not model._forward_hooks
    assert twin.kernel == (3, 3)


def test_copy_of_a_zoo_model_and_a_hugging_face_model_computes_the_same():
    for name in ("mobilenet_v2", "llama_tiny"):
        model = create(name).eval()
        twin = shared_copy(model)
        x = example_input(name)
        out, out_twin = model(x), twin(x)
        out, out_twin = getattr(out, "logits", out), getattr(out_twin, "logits", out_twin)
        assert torch.equal(out, out_twin)
        assert [type(m) for m in twin.modules()] == [type(m) for m in model.modules()]
        if hasattr(model, "config"):  # pruning rewrites the copy's config: the original's must not change
            assert twin.config is not model.config
            twin.config.intermediate_size = 1
            assert model.config.intermediate_size != 1


def test_torch_layers_with_compatibility_setstate_are_copied_field_by_field_and_run_alike():
    from slimkit.graph._graph import _plain_module_class

    layers = nn.ModuleDict({"conv": nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
                            "mha": nn.MultiheadAttention(4, 2, batch_first=True),
                            "softmax": nn.Softmax(dim=1), "up": nn.Upsample(scale_factor=2)})
    assert all(_plain_module_class(type(m)) for m in layers.values())
    assert not _plain_module_class(nn.LSTM)  # its __setstate__ rebuilds the flat weight lists: deep-copied
    twin = shared_copy(layers)
    assert twin.conv.weight is layers.conv.weight and twin.conv.padding_mode == "reflect"
    assert twin.mha.in_proj_weight is layers.mha.in_proj_weight and twin.mha._qkv_same_embed_dim
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(twin.up(twin.softmax(twin.conv(x))), layers.up(layers.softmax(layers.conv(x))))
    tokens = torch.randn(1, 3, 4)
    assert torch.equal(twin.mha(tokens, tokens, tokens)[0], layers.mha(tokens, tokens, tokens)[0])


def test_a_class_with_its_own_copy_protocol_is_deep_copied():
    traced = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    twin = shared_copy(traced)
    assert isinstance(twin, torch.fx.GraphModule) and twin.graph is not traced.graph
    assert twin.get_parameter("0.weight") is traced.get_parameter("0.weight")
    x = torch.randn(2, 4)
    assert torch.equal(twin(x), copy.deepcopy(traced)(x))


def test_aliasing_the_copy_must_keep():
    """Found in review: an empty dict shared by two modules, views of one buffer, an expanded (stride-0) buffer
    and a buffer's own attributes all come out of the copy as ``copy.deepcopy`` gives them."""

    class Writer(nn.Module):
        def __init__(self, cache: dict) -> None:
            super().__init__()
            self.cache = cache

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cache: dict = {}
            self.a, self.b = Writer(self.cache), Writer(self.cache)
            self.register_buffer("full", torch.zeros(6))
            self.register_buffer("head", self.full[:2])
            self.register_buffer("pos", torch.arange(4).expand(1000, 4))
            self.flag = nn.Buffer(torch.ones(2), persistent=False)

    twin = shared_copy(Net())
    assert twin.a.cache is twin.b.cache is twin.cache
    twin.full.add_(1)
    assert twin.head.tolist() == [1.0, 1.0]
    assert twin.pos.stride() == (0, 1)
    assert "flag" not in twin.state_dict()


def test_union_find_roots_of_a_scalar_id():
    from slimkit.graph._unionfind import UnionFind

    uf = UnionFind()
    ids = uf.fresh(4)
    uf.union(ids[:1], ids[2:3])
    assert uf.roots(ids[2]).shape == () and int(uf.roots(ids[2])) == int(uf.roots(ids[0]))
