import pytest
import torch

from slimkit import ConfigError, models
from slimkit.analysis import output_logits
from slimkit.prune import DEPTH_CRITERIA, DepthPruneConfig, block_importance, find_blocks, prune_depth, remove_blocks

TINY = {
    "llama": "hf:llama:hidden_size=32,intermediate_size=48,num_hidden_layers=5,num_attention_heads=4,"
             "num_key_value_heads=2,vocab_size=64",
    "gpt2": "hf:gpt2:n_embd=32,n_layer=5,n_head=4,vocab_size=64",
    "bert": "hf:bert:hidden_size=32,intermediate_size=48,num_hidden_layers=5,num_attention_heads=4,vocab_size=64",
}
BLOCKS = {"llama": "model.layers", "gpt2": "transformer.h", "bert": "bert.encoder.layer"}


def _make_identity_(model, arch: str, index: int) -> None:
    """Zero the block's residual-branch outputs, so the block passes its input through unchanged."""
    block = find_blocks(model)[1][index]
    outputs = {"llama": ("self_attn.o_proj", "mlp.down_proj"), "gpt2": ("attn.c_proj", "mlp.c_proj")}[arch]
    with torch.no_grad():
        for name in outputs:
            for p in block.get_submodule(name).parameters():
                p.zero_()


def _strong_(model) -> None:
    """Random weights large enough that every real block moves the hidden states (HF's 0.02 init barely does)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _batches(model, spec: str):
    """Inputs, and targets the model itself predicts (so skipping a block that does something raises the loss)."""
    x = models.example_input(spec, 3)
    with torch.no_grad():
        targets = output_logits(model(x)).argmax(-1)
    return x, [(x, targets)]


@pytest.mark.parametrize("arch", sorted(TINY))
def test_depth_pruning_keeps_the_class_and_the_kept_weights_and_round_trips(arch, tmp_path):
    model = models.from_spec(TINY[arch]).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, data = _batches(model, TINY[arch])
    config = DepthPruneConfig(n_blocks=2, criterion="angular")
    importance = block_importance(model, x, config, data=data)
    pruned = prune_depth(model, x, config, data=data).eval()
    assert type(pruned) is type(model) and importance.blocks_name == BLOCKS[arch]
    assert len(importance.removed) == 2 and len(importance.scores) == 5
    assert importance.removed == tuple(sorted(sorted(range(5), key=lambda i: importance.scores[i])[:2]))
    new_blocks = find_blocks(pruned)[1]
    assert len(new_blocks) == 3 and pruned.config.num_hidden_layers == 3
    old_blocks = find_blocks(model)[1]
    for new, old in zip(new_blocks, importance.kept):
        for (_, p), (_, q) in zip(new.named_parameters(), old_blocks[old].named_parameters()):
            assert torch.equal(p, q)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the caller's model untouched
    assert len(find_blocks(model)[1]) == 5

    pruned.save_pretrained(tmp_path / "m", safe_serialization=True)
    reloaded = models.from_spec(str(tmp_path / "m")).eval()
    assert type(reloaded) is type(model) and reloaded.config.num_hidden_layers == 3
    with torch.no_grad():
        torch.testing.assert_close(output_logits(reloaded(x)), output_logits(pruned(x)), rtol=0, atol=0)
    if hasattr(pruned, "generate"):  # renumbered layer_idx: the KV cache gives what a full recompute gives
        prompt = x[:1, :4]
        cached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        full = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
        assert cached.shape == (1, 10) and torch.equal(cached, full)


@pytest.mark.parametrize("criterion", DEPTH_CRITERIA.names())
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_every_criterion_removes_a_block_that_does_nothing_and_outputs_are_unchanged(arch, criterion):
    model = models.from_spec(TINY[arch]).eval()
    _strong_(model)
    _make_identity_(model, arch, 2)
    x, data = _batches(model, TINY[arch])
    importance = block_importance(model, x, DepthPruneConfig(n_blocks=1, criterion=criterion), data=data)
    assert importance.removed == (2,) and importance.scores[2] == pytest.approx(0.0, abs=1e-6)
    pruned = prune_depth(model, x, DepthPruneConfig(n_blocks=1, criterion=criterion), data=data).eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)


def test_contiguous_removes_the_run_and_param_ratio_picks_the_closest_count():
    model = models.from_spec(TINY["llama"]).eval()
    _strong_(model)
    _make_identity_(model, "llama", 1)
    _make_identity_(model, "llama", 2)
    x = models.example_input(TINY["llama"], 3)
    run = block_importance(model, x, DepthPruneConfig(n_blocks=2, contiguous=True, keep=(0,)))
    assert run.removed == (1, 2) and run.runs == [(1, 2), (2, 3), (3, 4)]
    total = sum(p.numel() for p in model.parameters())
    per_block = sum(p.numel() for p in find_blocks(model)[1][0].parameters())
    target = 2.4 * per_block / total  # closest whole number of blocks: 2
    chosen = block_importance(model, x, DepthPruneConfig(param_ratio=target))
    assert len(chosen.removed) == 2 and chosen.removed_params == 2 * per_block
    assert chosen.param_reduction == pytest.approx(2 * per_block / total)


def test_bad_depth_configs_name_the_fix():
    with pytest.raises(ConfigError, match="exactly one"):
        DepthPruneConfig()
    with pytest.raises(ConfigError, match="param_ratio"):
        DepthPruneConfig(param_ratio=1.2)
    with pytest.raises(ConfigError, match="criterion 'cosine' is unknown"):
        DepthPruneConfig(n_blocks=1, criterion="cosine")
    model = models.from_spec(TINY["gpt2"])
    x = models.example_input(TINY["gpt2"])
    with pytest.raises(ConfigError, match="pass data="):
        prune_depth(model, x, DepthPruneConfig(n_blocks=1, criterion="loss"))
    with pytest.raises(ConfigError, match="only 4 of the model's blocks"):
        prune_depth(model, x, DepthPruneConfig(n_blocks=5))
    with pytest.raises(ConfigError, match="blocks='nothing'"):
        prune_depth(model, x, DepthPruneConfig(n_blocks=1, blocks="nothing"))
    swin = models.from_spec("hf:swin")
    with pytest.raises(ConfigError, match="change the hidden states' shape"):
        prune_depth(swin, models.example_input("hf:swin"), DepthPruneConfig(n_blocks=1))


RESNET20_CANDIDATES = ("layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2")


def _resnet20_with_identity_block(name: str):
    """A ResNet-20 with real BatchNorm statistics whose block ``name`` passes its input through: its last BN's scale
    and shift are zero, so the residual branch adds nothing and the block's ReLU sees the (already non-negative)
    input."""
    torch.manual_seed(0)
    model = models.create("resnet20")
    x = torch.randn(16, 1, 28, 28)
    model.train()
    with torch.no_grad():
        model(x)  # BatchNorm statistics of real activations, so no block is a near no-op by accident
        bn = model.get_submodule(name).bn2
        bn.weight.zero_()
        bn.bias.zero_()
    model.eval()
    with torch.no_grad():
        targets = model(x).argmax(1)
    return model, x, [(x, targets)]


@pytest.mark.parametrize("criterion", DEPTH_CRITERIA.names())
def test_cnn_residual_blocks_across_stages_are_candidates_and_a_no_op_block_goes(criterion):
    model, x, data = _resnet20_with_identity_block("layer2.2")
    importance = block_importance(model, x, DepthPruneConfig(n_blocks=1, criterion=criterion), data=data)
    # the down-sampling first blocks of stages 2 and 3 change the shape: not candidates
    assert importance.names == RESNET20_CANDIDATES and importance.blocks_name == "layer1, layer2, layer3"
    assert importance.removed_names == ("layer2.2",) and importance.scores[4] == pytest.approx(0.0, abs=1e-6)
    assert min(s for i, s in enumerate(importance.scores) if i != 4) > 1e-3
    pruned = prune_depth(model, x, DepthPruneConfig(n_blocks=1, criterion=criterion), data=data).eval()
    assert type(pruned) is type(model) and [len(pruned.get_submodule(f"layer{k}")) for k in (1, 2, 3)] == [3, 2, 3]
    for name, p in pruned.layer2[1].named_parameters():
        assert torch.equal(p, model.layer2[1].get_parameter(name))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)
    # one 3×3 conv pair of stage 2 (32 → 32 channels on 14×14) is gone: 2 · 32·32·9·14·14 MACs, plus its two BNs
    from slimkit.analysis import profile

    convs = 2 * 32 * 32 * 9 * 14 * 14
    removed = profile(model, x[:1]).total.macs - profile(pruned, x[:1]).total.macs
    assert convs <= removed <= convs + 2 * 2 * 32 * 14 * 14


def test_cnn_depth_by_names_contiguous_runs_stay_in_a_stage_and_bad_names_are_refused():
    model, x, data = _resnet20_with_identity_block("layer3.1")
    run = block_importance(model, x, DepthPruneConfig(n_blocks=2, contiguous=True, criterion="loss"), data=data)
    assert [tuple(run.names[i] for i in r) for r in run.runs] == [
        ("layer1.0", "layer1.1"), ("layer1.1", "layer1.2"), ("layer2.1", "layer2.2"), ("layer3.1", "layer3.2")]
    emptied = remove_blocks(model, ["layer1.0", "layer1.1", "layer1.2", "layer3.2"])
    assert len(emptied.layer1) == 0 and len(emptied.layer3) == 2 and emptied(x).shape == (16, 10)
    assert len(model.layer1) == 3  # the caller's model untouched
    with pytest.raises(ConfigError, match=r"cannot remove block 'layer4\.0'"):
        remove_blocks(model, ["layer4.0"])
    with pytest.raises(ConfigError, match=r"only 7 of the model's blocks.*2 more change the hidden states' shape"):
        block_importance(model, x, DepthPruneConfig(n_blocks=8))
    with pytest.raises(ConfigError, match="no ModuleList/Sequential"):
        block_importance(models.create("lenet5"), x, DepthPruneConfig(n_blocks=1))
    only_stage3 = block_importance(model, x, DepthPruneConfig(n_blocks=1, blocks="layer3"))
    assert only_stage3.names == ("layer3.1", "layer3.2")
