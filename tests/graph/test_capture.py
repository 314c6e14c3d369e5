"""Capture: one recorded forward with module scopes, keyword inputs, leaf modules, and the time bound."""

from __future__ import annotations

import time
import weakref

import pytest
import torch
from torch import nn

from slimkit import TraceError
from slimkit.graph import Deadline, TimeBoundExceeded, capture, dependency_graph
from slimkit.prune import PruneConfig, prune_channels


class KeywordNet(nn.Module):
    """Takes keyword inputs and returns a dict, like a Hugging Face model."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return {"logits": self.head(h + self.mlp(h))}


def test_calls_know_their_module_and_keyword_inputs_work():
    inputs = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3)}
    cap = capture(KeywordNet(), inputs)
    assert [c.scope for c in cap.calls if c.name == "linear"] == ["mlp.0", "mlp.2", "head"]
    assert set(cap.inputs[1]) == {"input_ids", "attention_mask"} and "logits" in cap.output
    pruned = prune_channels(KeywordNet(), inputs, PruneConfig(ratio=0.5))
    assert (pruned.embed.embedding_dim, pruned.mlp[0].out_features) == (4, 8)  # residual width and MLP width
    assert pruned(**inputs)["logits"].shape == (1, 3, 3)


def test_leaf_modules_are_one_call_and_keep_their_channels():
    cap = capture(KeywordNet(), torch.tensor([[1, 2]]), leaf_modules=["mlp"])
    assert [c.module_name for c in cap.calls if c.module is not None] == ["mlp"]
    assert not [c for c in cap.calls if c.scope.startswith("mlp")]
    graph = dependency_graph(KeywordNet(), torch.tensor([[1, 2]]), leaf_modules=["mlp"])
    assert graph.groups == [] and graph.opaque_ops()[0]["froze"] == ["embed"]


def test_a_shapes_only_capture_records_the_same_ops_and_shapes_without_arguments_or_live_tensors():
    """The pruned model's check runs this capture first: it must see what the full one sees, op by op."""
    inputs = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3)}
    model = KeywordNet()
    full = capture(model, inputs, leaf_modules=["mlp"])
    light = capture(model, inputs, leaf_modules=["mlp"], record_args=False)
    assert [(c.target, c.scope, c.module_name) for c in light.calls] == [
        (c.target, c.scope, c.module_name) for c in full.calls]
    assert [[light.values[r.key].shape for r in c.outs()] for c in light.calls] == [
        [full.values[r.key].shape for r in c.outs()] for c in full.calls]
    assert all(c.args == () and c.kwargs == {} for c in light.calls)
    assert not light.params and all(v.origin != "param" for v in light.values)
    assert light.values[light.output["logits"].key].shape == (1, 3, 3)


class _Chain(nn.Module):
    """Drops an intermediate tensor mid-forward and looks whether it was freed, as a plain forward frees it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

    def forward(self, x):
        a = self.conv1(x)
        seen = weakref.ref(a)
        b = torch.relu(a)
        del a
        self.freed = seen() is None
        return self.conv2(b)


def test_capture_frees_intermediates_and_a_reused_id_is_a_new_value():
    model = _Chain()
    cap = capture(model, torch.randn(1, 3, 12, 12))
    assert model.freed  # the capture's peak memory is a plain forward's, not every activation at once
    relu = next(c for c in cap.calls if c.name == "relu")
    assert cap.values[relu.args[0].key].producer == 0  # relu's input is conv1's result
    conv2 = next(c for c in cap.calls if c.scope == "conv2")
    assert cap.values[conv2.args[0].key].producer == relu.index  # not a dead tensor that had the same address
    pruned = prune_channels(_Chain(), torch.randn(1, 3, 12, 12), PruneConfig(ratio=0.5))
    assert (pruned.conv1.out_channels, pruned.conv2.in_channels) == (4, 4)


class _Router(nn.Module):
    def forward(self, x):
        return x.argmax(-1)


class _Routed(nn.Module):
    """A leaf module returning integer indices: the recorder copies them, and that copy is not one of the model's
    ops (it made the pruned model's shapes-only check differ from the graph, so every check ran twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.router = nn.Linear(4, 16), nn.Linear(16, 4), _Router()

    def forward(self, x):
        h = self.b(torch.relu(self.a(x)))
        return h.gather(-1, self.router(h)[..., None])


def test_a_leaf_returning_indices_records_only_the_models_ops_and_the_check_runs_once(monkeypatch):
    import slimkit.graph._verify as verify

    cap = capture(_Routed(), torch.randn(2, 4), leaf_modules=["router"])
    assert [c.name for c in cap.calls] == ["linear", "relu", "linear", "_Router", "Tensor.__getitem__",
                                           "Tensor.gather"]
    results: list[bool] = []
    shapes_follow = verify._shapes_follow
    monkeypatch.setattr(verify, "_shapes_follow", lambda *a, **k: results.append(shapes_follow(*a, **k)) or results[-1])
    pruned = prune_channels(_Routed(), torch.randn(2, 4), PruneConfig(ratio=0.5, leaf_modules=["router"]))
    assert pruned.a.out_features == 8 and results == [True]


class _OpLoop(nn.Module):
    def forward(self, x):
        while True:  # keeps calling torch: stopped by the per-op check
            x = x + 1


class _Spin(nn.Module):
    def forward(self, x):
        while True:  # pure Python: stopped by the watchdog
            pass


@pytest.mark.parametrize("model", [_OpLoop(), _Spin()], ids=["torch-loop", "python-spin"])
def test_capture_never_hangs(model):
    start = time.perf_counter()
    with pytest.raises(TimeBoundExceeded, match=r"exceeded its time bound of 0\.5 s"), Deadline(0.5, "capture") as d:
        dependency_graph(model, torch.zeros(1, 4), deadline=d)
    assert time.perf_counter() - start < 5
    assert issubclass(TimeBoundExceeded, TraceError)


def test_pruning_is_bounded_by_the_config_timeout():
    with pytest.raises(TimeBoundExceeded, match=r"pruning exceeded its time bound of 0\.3 s"):
        prune_channels(_Spin(), torch.zeros(1, 4), PruneConfig(timeout=0.3))


class CountsTrain(nn.Module):
    """A module with its own ``train``: capture must call it, not set the flag behind its back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls: list[bool] = []

    def train(self, mode: bool = True):
        self.calls.append(mode)
        return super().train(mode)

    def forward(self, x):
        return self.conv(x)


def test_capture_and_pruning_run_in_eval_mode_and_give_every_module_its_own_mode_back():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Dropout(0.5), nn.Conv2d(8, 4, 3))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a model being trained
    seen = []
    model[2].register_forward_hook(lambda m, args, out: seen.append(m.training))
    x = torch.randn(1, 3, 12, 12)
    graph = dependency_graph(model, x)
    assert seen == [False]  # the capture ran in eval mode (dropout off, BN statistics untouched)
    assert [m.training for m in graph.model] == [True, False, True, True]
    assert [m.training for m in model] == [True, False, True, True]  # the caller's model is not touched
    custom = nn.Sequential(CountsTrain(), nn.ReLU()).train()
    custom[0].calls.clear()
    copy_of_custom = dependency_graph(custom, x).model
    assert custom[0].calls == []  # the graph's copy is put in eval mode, never the caller's model
    assert copy_of_custom[0].calls == [False]  # through the class's own train()
    assert [m.training for m in copy_of_custom.modules()] == [True, True, True, True]
