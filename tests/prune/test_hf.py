"""Hugging Face config rewrite and slimkit's pruned-model folder: save_pretrained → from_pretrained round-trips
when one config describes the pruning; otherwise save_pruned → load_pruned does, with identical outputs."""

from __future__ import annotations

import json

import pytest
import torch

from slimkit import CheckpointError, ConfigError
from slimkit.prune import PruneConfig, load_pruned, prune_channels, pruning_info, save_pruned

transformers = pytest.importorskip("transformers")

IDS = {"input_ids": torch.tensor([[3, 9, 1, 7, 12, 5]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config).eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**IDS).logits


def test_uniform_pruning_round_trips_through_save_pretrained(tmp_path):
    pruned = prune_channels(_llama(), IDS, PruneConfig(ratio=0.5, criterion="magnitude"))
    info = pruning_info(pruned)["hf_config"]
    assert info["exact"] and info["reason"] is None
    config = pruned.config
    assert (config.hidden_size, config.intermediate_size, config.num_key_value_heads, config.num_attention_heads,
            config.head_dim) == (16, 24, 1, 2, 8)
    pruned.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path, use_safetensors=True, trust_remote_code=False)
    torch.testing.assert_close(_logits(loaded), _logits(pruned), atol=0, rtol=0)


@pytest.mark.parametrize("scope", ["gpt2-heads", "llama-global"])
def test_what_no_config_describes_round_trips_through_slimkit_format(tmp_path, scope):
    if scope == "gpt2-heads":  # GPT-2 derives head size as n_embd / n_head: fewer heads, same width is inexpressible
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=32, n_head=4, n_layer=2,
                                                                     n_positions=16)).eval()
        config = PruneConfig(ratio=0.25, kinds=("heads",))
        reason = "cannot be built from the rewritten config"
    else:  # one ranking across layers: each layer keeps its own MLP width
        model, config, reason = _llama(), PruneConfig(ratio=0.4, scope="global", kinds=("channels",)), "differ"
    pruned = prune_channels(model, IDS, config)
    info = pruning_info(pruned)["hf_config"]
    assert not info["exact"] and reason in info["reason"]
    folder = save_pruned(pruned, tmp_path / "pruned")
    meta = json.loads((folder / "slimkit_pruned.json").read_text())
    assert meta["architecture"] == type(model).__name__ and ".py" not in json.dumps(meta)
    loaded = load_pruned(folder)
    assert type(loaded) is type(model)
    torch.testing.assert_close(_logits(loaded), _logits(pruned), atol=0, rtol=0)
    assert loaded.generate(IDS["input_ids"], max_new_tokens=2).shape == (1, 8)
    with pytest.raises(ConfigError, match="not an empty folder"):
        save_pruned(pruned, folder)


def test_a_folder_naming_anything_but_a_model_class_is_refused(tmp_path):
    pruned = prune_channels(_llama(), IDS, PruneConfig(ratio=0.5, kinds=("channels",)))
    folder = save_pruned(pruned, tmp_path / "p")
    meta = json.loads((folder / "slimkit_pruned.json").read_text())
    meta["architecture"] = "AutoConfig"  # a transformers name, but not a model class
    (folder / "slimkit_pruned.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="is not a transformers model class"):
        load_pruned(folder)


@pytest.mark.parametrize("section", ["base_config", "config"])
def test_a_pruned_folder_cannot_choose_a_hub_attention_kernel(tmp_path, section):
    from slimkit import ModelSpecError

    pruned = prune_channels(_llama(), IDS, PruneConfig(ratio=0.5, kinds=("channels",)))
    folder = save_pruned(pruned, tmp_path / "p")
    meta = json.loads((folder / "slimkit_pruned.json").read_text())
    meta[section]["attn_implementation"] = "evil-org/evilkernel"
    (folder / "slimkit_pruned.json").write_text(json.dumps(meta))
    with pytest.raises(ModelSpecError, match="attn_implementation='evil-org/evilkernel'"):
        load_pruned(folder)


@pytest.mark.parametrize(("section", "change", "message"), [
    ("attributes", {"": {"use_kernels": True}}, r"'\.use_kernels' = True is not a size attribute"),
    ("attributes", {"model.layers.0.mlp": {"forward": 3}}, "is not a size attribute"),
    ("attributes", {"model.layers.0.self_attn": {"head_dim": "8"}}, "is not a size attribute"),
    ("attributes", {"model.nope": {"head_dim": 8}}, "which the model does not have"),
    ("attributes", {"model.layers.0.self_attn": {"num_key_value_groups": 10**7}}, "no larger"),
    ("model_type", "nope", "cannot be built from its config"),
    ("base_config", {"num_attention_heads": 0}, "cannot be built from its config"),
    ("config", {"hidden_size": "x"}, "rewritten config does not apply"),
    ("shapes", {"model.embed_tokens.weight": [2**40, 32]}, "is not a pruning of the model's"),
    ("shapes", {"model.norm.weight": 5}, "is not a pruning of the model's"),
    ("shapes", {"model.nope.weight": [1]}, "is not a pruning of the model's"),
    ("shapes", [], "wrong type: shapes"),
])
def test_a_pruned_folder_sets_only_size_attributes_and_pruned_shapes(tmp_path, section, change, message):
    """Attributes and shapes come from the file: only whole-number size attributes a module already holds (never a
    property such as transformers' use_kernels, whose setter fetches Hub kernels) and shapes no larger than the
    architecture's are applied; anything else is a CheckpointError before any tensor is allocated."""
    pruned = prune_channels(_llama(), IDS, PruneConfig(ratio=0.5, kinds=("channels",)))
    folder = save_pruned(pruned, tmp_path / "p")
    meta = json.loads((folder / "slimkit_pruned.json").read_text())
    meta[section] = {**meta[section], **change} if isinstance(change, dict) else change
    (folder / "slimkit_pruned.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        load_pruned(folder)


def test_loading_a_pruned_folder_never_allocates_the_unpruned_weights(tmp_path):
    """The unpruned architecture is built with its parameters on the meta device, so a pruned model loads on a
    machine that could not hold the original: here the recorded original has a 2³⁰-wide MLP (~800 GiB of weights),
    its pruned layers keep 24 units, and the folder loads — with the outputs it was saved with — in seconds."""
    pruned = prune_channels(_llama(), IDS, PruneConfig(ratio=0.4, scope="global", kinds=("channels",)))
    folder = save_pruned(pruned, tmp_path / "p")
    meta = json.loads((folder / "slimkit_pruned.json").read_text())
    meta["base_config"]["intermediate_size"] = 2**30
    (folder / "slimkit_pruned.json").write_text(json.dumps(meta))
    loaded = load_pruned(folder)
    torch.testing.assert_close(_logits(loaded), _logits(pruned), atol=0, rtol=0)
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert all(b.device.type == "cpu" for b in loaded.buffers())  # the rotary frequencies were computed, not loaded


def test_parameters_built_on_meta_cost_nothing_while_buffers_stay_real():
    from slimkit.prune._hf import parameters_on_meta

    with parameters_on_meta():
        huge = torch.nn.Linear(2**20, 2**20)  # 4 TiB of weights if allocated
        norm = torch.nn.BatchNorm1d(4)
    assert huge.weight.device.type == "meta" and huge.weight.requires_grad
    assert norm.running_mean.device.type == "cpu" and norm.weight.device.type == "meta"
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"  # outside the context, as before


def test_a_buffer_left_on_the_meta_device_is_refused_even_when_no_weights_file_holds_it():
    """A non-persistent buffer made with ``torch.empty`` while the parameters go to meta has no value, and no
    weights file would give it one: the load says so instead of returning a model that cannot run."""
    from slimkit.prune._hf import _retie_, parameters_on_meta

    class Scratch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scratch", torch.empty(3), persistent=False)

    with parameters_on_meta():
        model = Scratch()
    with pytest.raises(CheckpointError, match="no weights for scratch"):
        _retie_(model, {}, "'folder'")
