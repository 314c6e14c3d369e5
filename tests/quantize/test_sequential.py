import torch
from torch import nn

from slimkit.quantize._sequential import SequentialRunner, calibration_calls, find_blocks, record_order
from tests.quantize._lm import tiny_llama, token_batches


def test_transformer_blocks_and_groups_of_layers_sharing_an_input():
    model = tiny_llama()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    calls = calibration_calls(token_batches(2))
    groups = record_order(model, calls[0], names)
    assert groups[:4] == [["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                           "model.layers.0.self_attn.v_proj"], ["model.layers.0.self_attn.o_proj"],
                          ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"],
                          ["model.layers.0.mlp.down_proj"]]
    assert find_blocks(model, names) == ["model.layers.0", "model.layers.1"]
    runner = SequentialRunner(model, calls, names)
    stages = list(runner.stages())
    assert [s.name for s in stages] == ["model.layers.0", "model.layers.1", ""]
    assert stages[-1].groups == [["lm_head"]]
    # a block replayed on its cached inputs gives the hidden states the full model computes
    seen = []
    hook = model.model.layers[1].register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple)
                                                                                      else out))
    with torch.no_grad():
        model(calls[0][0][0])
    hook.remove()
    replayed = stages[1].run()[0]
    replayed = replayed[0] if isinstance(replayed, tuple) else replayed
    assert torch.allclose(replayed, seen[0], atol=1e-5)


def test_models_without_blocks_run_whole_and_stop_early():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    calls = calibration_calls([torch.randn(3, 4)])
    runner = SequentialRunner(model, calls, ["0", "2", "3"])
    (stage,) = list(runner.stages())
    assert stage.name == "" and stage.groups == [["0"], ["2"], ["3"]]
    seen = []
    stage.run({"2": seen.append}, stop_after="2", keep_outputs=False)
    assert len(seen) == 1 and seen[0].shape == (3, 4)
