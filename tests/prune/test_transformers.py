"""Structured pruning of Hugging Face transformers built from tiny configs: heads (MHA, GQA as whole groups or as
query heads within groups), gated MLP width, the hidden width across the residual stream, every criterion scoring
whole heads, hand-counted MACs, keyword inputs; the result keeps its class and ``generate``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from slimkit.analysis import profile
from slimkit.prune import CRITERIA, PruneConfig, prune_channels, pruning_info

transformers = pytest.importorskip("transformers")

IDS = {"input_ids": torch.tensor([[3, 9, 1, 7, 12, 5]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}


def llama(kv: int = 2, tie: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=kv, head_dim=8,
                                      max_position_embeddings=32, tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(config).eval()


def bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=48,
                                      num_hidden_layers=2, max_position_embeddings=16)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_head=4, n_layer=2, n_positions=16)
    return transformers.GPT2LMHeadModel(config).eval()


def _out(model, x=IDS):
    with torch.no_grad():
        out = model(**x)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def _zero_(tensor: torch.Tensor, dim: int, index: list[int]) -> None:
    with torch.no_grad():
        tensor.index_fill_(dim, torch.tensor(index), 0.0)


def _heads(lo: int, hi: int, size: int = 8) -> list[int]:
    return list(range(lo * size, hi * size))


# --- heads --------------------------------------------------------------------------------------------------

def _zero_llama_heads_(model, q_heads: list[int], kv_heads: list[int]) -> None:
    attn = model.model.layers[0].self_attn
    q = [i for h in q_heads for i in _heads(h, h + 1)]
    kv = [i for h in kv_heads for i in _heads(h, h + 1)]
    _zero_(attn.q_proj.weight, 0, q)
    _zero_(attn.o_proj.weight, 1, q)
    if kv:
        _zero_(attn.k_proj.weight, 0, kv)
        _zero_(attn.v_proj.weight, 0, kv)


@pytest.mark.parametrize(("kv", "gqa", "q_heads", "kv_heads", "expect"), [
    (4, "groups", [2], [2], (3, 3, 1)),  # MHA: one head and its key/value head
    (2, "groups", [2, 3], [1], (2, 1, 2)),  # GQA: a whole key/value group
    (2, "query", [1, 3], [], (2, 2, 1)),  # GQA: query head 1 of every group, key/value heads stay
])
def test_removing_heads_equals_zeroing_them(kv, gqa, q_heads, kv_heads, expect):
    model = llama(kv)
    _zero_llama_heads_(model, q_heads, kv_heads)
    ratio = len(q_heads) / 4 if gqa == "query" or kv == 4 else len(kv_heads) / kv
    config = PruneConfig(ratio={"model.layers.0.self_attn.q_proj": ratio}, criterion="l1", gqa=gqa)
    pruned = prune_channels(model, IDS, config)
    attn = pruned.model.layers[0].self_attn
    heads, kv_left, groups = expect
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (8 * heads, 8 * kv_left)
    assert attn.num_key_value_groups == groups and attn.o_proj.in_features == 8 * heads
    torch.testing.assert_close(_out(pruned), _out(model), atol=1e-5, rtol=1e-5)
    assert type(pruned) is type(model) and pruned.generate(IDS["input_ids"], max_new_tokens=2).shape == (1, 8)


@pytest.mark.parametrize("make", [bert, gpt2])
def test_removing_a_head_equals_zeroing_it(make):
    model = make()
    if isinstance(model, transformers.BertModel):
        attn = model.encoder.layer[1].attention
        rows = [attn.self.query.weight, attn.self.key.weight, attn.self.value.weight]
        _zero_(attn.output.dense.weight, 1, _heads(1, 2))
        layer = "encoder.layer.1.attention.self.query"
    else:
        attn = model.transformer.h[1].attn
        rows = [attn.c_attn.weight.T[i * 32:(i + 1) * 32] for i in range(3)]  # fused q|k|v columns of Conv1D
        _zero_(attn.c_proj.weight, 0, _heads(1, 2))
        layer = "transformer.h.1.attn.c_attn"
    for w in rows:
        _zero_(w, 0, _heads(1, 2))
    pruned = prune_channels(model, IDS, PruneConfig(ratio={layer: 0.25}, criterion="l1", kinds=("heads",)))
    torch.testing.assert_close(_out(pruned), _out(model), atol=1e-5, rtol=1e-5)
    attn = pruned.get_submodule(layer.rpartition(".")[0])
    heads = getattr(attn, "num_heads", None) or attn.num_attention_heads
    assert heads == 3


# --- MLP and hidden width -----------------------------------------------------------------------------------

def test_gated_mlp_loses_gate_and_up_rows_together():
    model = llama()
    mlp = model.model.layers[1].mlp
    gone = [3, 10, 20, 33, 40, 41]
    for w in (mlp.gate_proj.weight, mlp.up_proj.weight):
        _zero_(w, 0, gone)
    _zero_(mlp.down_proj.weight, 1, gone)
    pruned = prune_channels(model, IDS, PruneConfig(ratio={"re:.*layers.1.mlp.gate_proj": 0.125}, criterion="l1"))
    mlp = pruned.model.layers[1].mlp
    assert (mlp.gate_proj.out_features, mlp.up_proj.out_features, mlp.down_proj.in_features) == (42, 42, 42)
    assert pruning_info(pruned)["keep"]["model.layers.1.mlp.up_proj"]["out"] == [i for i in range(48) if i not in gone]
    torch.testing.assert_close(_out(pruned), _out(model), atol=1e-5, rtol=1e-5)


def test_hidden_width_follows_the_residual_stream_and_the_tied_head():
    model = llama(tie=True)
    pruned = prune_channels(model, IDS, PruneConfig(ratio=0.25, kinds=("residual",), criterion="magnitude"))
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight and pruned.lm_head.weight.shape == (64, 24)
    for layer in pruned.model.layers:
        assert layer.input_layernorm.weight.shape == layer.post_attention_layernorm.weight.shape == (24,)
        assert layer.self_attn.q_proj.in_features == layer.mlp.gate_proj.in_features == 24
        assert layer.self_attn.o_proj.out_features == layer.mlp.down_proj.out_features == 24
    assert pruned.model.norm.weight.shape == (24,) and pruned.config.hidden_size == 24
    assert model.config.hidden_size == 32 and model.lm_head.weight.shape == (64, 32)  # the caller's model untouched
    assert pruned.generate(IDS["input_ids"], max_new_tokens=3).shape == (1, 9)


def test_vit_class_token_and_position_table_follow_the_hidden_width():
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32,
                                    num_attention_heads=4, intermediate_size=48, num_hidden_layers=1, num_labels=5)
    model = transformers.ViTForImageClassification(config).eval()
    x = {"pixel_values": torch.randn(1, 3, 16, 16)}
    pruned = prune_channels(model, x, PruneConfig(ratio=0.25, criterion="magnitude"))
    emb = pruned.vit.embeddings
    assert emb.cls_token.shape == (1, 1, 24) and emb.position_embeddings.shape == (1, 5, 24)
    assert emb.patch_embeddings.projection.out_channels == 24 and pruned.classifier.in_features == 24
    assert pruned(**x).logits.shape == (1, 5)


def test_macs_equal_the_hand_count():
    model = llama(kv=4)
    pruned = prune_channels(model, IDS, PruneConfig(ratio={"re:.*q_proj": 0.25, "re:.*gate_proj": 0.25}))
    n, hidden, vocab, d = 6, 32, 64, 8
    heads, inter = 3, 36
    per_layer = (n * hidden * heads * d * 3  # q, k, v
                 + n * heads * d * hidden  # o
                 + 2 * heads * n * n * d  # scaled-dot-product attention: Q·Kᵀ and P·V
                 + 2 * n * hidden * inter + n * inter * hidden)  # gate, up, down
    expected = 2 * per_layer + n * hidden * vocab  # + the LM head
    assert pruning_info(pruned)["reduction"]["macs"][1] == expected
    assert profile(pruned, (IDS["input_ids"],)).total.macs == expected


# --- criteria -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_every_criterion_prunes_whole_heads_of_a_gqa_llama(criterion):
    model = llama(kv=2)
    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 64, (2, 6), generator=gen)} for _ in range(2)]
    for batch in data:
        batch["labels"] = batch["input_ids"]
    config = PruneConfig(ratio={"re:.*q_proj": 0.5, "re:.*gate_proj": 0.25}, criterion=criterion)
    pruned = prune_channels(model, IDS, config, data=data)
    for layer in pruned.model.layers:
        attn = layer.self_attn
        assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.num_key_value_groups) == (16, 8, 2)
        assert layer.mlp.gate_proj.out_features == 36
    assert torch.isfinite(_out(pruned)).all()


def test_wanda_scores_columns_by_input_norms():
    """Activation-aware score of an MLP channel j: Σ_i |W_down[i, j]| · ‖X_j‖ (Sun et al. 2024, Eq. 1)."""
    from slimkit.graph import dependency_graph
    from slimkit.prune import PruneContext

    model = llama()
    data = [{"input_ids": torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(1))}]
    graph = dependency_graph(model, IDS, kinds=("channels",))
    group = next(g for g in graph.groups if g.name == "model.layers.0.mlp.gate_proj")
    ctx = PruneContext(graph, data=data, batches=1)
    criterion = CRITERIA.get("wanda")()
    criterion.prepare(ctx)
    seen = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(**data[0])
    hook.remove()
    norms = seen[0].reshape(-1, 48).norm(dim=0)
    expected = (model.model.layers[0].mlp.down_proj.weight.detach().abs() * norms).sum(0).double().numpy()
    np.testing.assert_allclose(criterion.scores(ctx, group), expected, rtol=1e-5)


def test_reconstruction_refits_the_next_projection():
    model = llama(kv=4)
    data = [{"input_ids": torch.randint(0, 64, (4, 6), generator=torch.Generator().manual_seed(2))} for _ in range(2)]
    config = PruneConfig(ratio={"re:.*gate_proj": 0.5}, criterion="l1")
    plain = prune_channels(model, IDS, config)
    refit = prune_channels(model, IDS, PruneConfig(ratio={"re:.*gate_proj": 0.5}, criterion="l1", reconstruct=True),
                           data=data)
    target = _out(model, data[1])
    assert (_out(refit, data[1]) - target).pow(2).mean() < (_out(plain, data[1]) - target).pow(2).mean()
    assert copy.deepcopy(refit).model.layers[0].mlp.down_proj.in_features == 24


def test_batch_loss_of_token_blocks_is_the_per_token_loss():
    # (token block, shifted targets) batches, as slimkit.data's text loaders give: data-driven criteria (taylor)
    # score a causal LM on them instead of failing on the N×L×V logits
    from slimkit.analysis import token_cross_entropy
    from slimkit.prune import batch_loss

    model = llama()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(3))
    x, y = ids[:, :-1], ids[:, 1:]
    with torch.no_grad():
        expected = token_cross_entropy(model(input_ids=x).logits, y)
        torch.testing.assert_close(batch_loss(model, x, y), expected)
    pruned = prune_channels(model, x[:1], PruneConfig(ratio={"re:.*gate_proj": 0.5}, criterion="taylor"),
                            data=[(x, y)])
    assert pruned.model.layers[0].mlp.gate_proj.out_features == 24


def test_reconstruction_refits_gpt2_conv1d_projections():
    # GPT-2's MLP is two Hugging Face Conv1D layers (weight stored in × out): c_proj is refitted after c_fc lost units
    model = gpt2()
    data = [{"input_ids": torch.randint(0, 64, (4, 6), generator=torch.Generator().manual_seed(2))} for _ in range(2)]
    config = PruneConfig(ratio={"re:.*c_fc": 0.5}, criterion="l1")
    plain = prune_channels(model, IDS, config)
    refit = prune_channels(model, IDS, PruneConfig(ratio={"re:.*c_fc": 0.5}, criterion="l1", reconstruct=True),
                           data=data)
    widths = [m.weight.shape for m in (plain.transformer.h[0].mlp.c_proj, refit.transformer.h[0].mlp.c_proj)]
    assert widths[0] == widths[1] and widths[0][0] < model.transformer.h[0].mlp.c_proj.weight.shape[0]
    assert not torch.equal(plain.transformer.h[0].mlp.c_proj.weight, refit.transformer.h[0].mlp.c_proj.weight)
    target = _out(model, data[1])
    assert (_out(refit, data[1]) - target).pow(2).mean() < (_out(plain, data[1]) - target).pow(2).mean()
