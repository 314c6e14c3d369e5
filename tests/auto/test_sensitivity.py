import pytest
import torch
from torch import nn

from slimkit.auto._folder import Cache
from slimkit.auto._sensitivity import (
    Calibration,
    ShortRecovery,
    channel_analysis,
    channel_groups,
    clustered_bytes,
    container_analysis,
    container_option,
    hessian_traces,
    keep_levels,
    monotone,
)


def test_keep_levels_and_monotone_tables():
    assert keep_levels(12, (0.25, 0.5, 0.75)) == [12, 9, 6, 3]
    assert keep_levels(40, (0.5,), steps=(16,)) == [40, 32, 20, 16]  # kernel steps join the fractions
    assert keep_levels(3, (0.1,)) == [3, 1]  # never fewer than one unit
    # a wide group keeps at most 16 step levels, each still on a multiple of the step: LeNet-5's fc1 (500, step 16)
    assert keep_levels(500, (), steps=(16,)) == [500, *range(480, 0, -32)]
    assert keep_levels(272, (), steps=(16,)) == list(range(272, 0, -16))  # 16 multiples below 272: all kept
    assert keep_levels(960, (0.5,), steps=(8,), max_step_levels=4) == [960, 720, 480, 240]
    with pytest.raises(ValueError, match="max_step_levels=0"):
        keep_levels(960, (0.5,), steps=(8,), max_step_levels=0)
    assert monotone([0.0, -0.01, 0.2, 0.1, 0.5]) == [0.0, 0.0, 0.2, 0.2, 0.5]


@pytest.mark.parametrize("sparsity, bits", [(0.0, 8), (0.5, 3), (0.9, 2)])
def test_container_bytes_per_layer_are_exactly_what_the_file_stores(trained, tmp_path, sparsity, bits):
    from slimkit.share import clustered_layers, save_compressed

    model, _ = trained
    candidate = container_option(model, "fc1", sparsity, bits, seed=0)
    summary = save_compressed(candidate, tmp_path / "m.slim", "auto_digits")
    (stored,) = [layer for layer in summary.layers if layer.name == "fc1"]
    assert clustered_bytes(clustered_layers(candidate)["fc1"]) == stored.total
    weight = clustered_layers(candidate)["fc1"].weight
    assert float((weight == 0).float().mean()) == pytest.approx(sparsity, abs=1e-3)


def test_hutchinson_trace_matches_the_exact_hessian_trace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    x, y = torch.randn(32, 1, 6), torch.randint(0, 3, (32,))
    calib = Calibration(x, y, torch.empty(0), "loss", 0.0)
    weight = model[1].weight

    def loss_of(w):
        return nn.functional.cross_entropy(nn.functional.linear(x.flatten(1), w, model[1].bias), y)

    exact = torch.autograd.functional.hessian(loss_of, weight.detach()).reshape(weight.numel(), -1).trace()
    estimate = hessian_traces(model, calib, ["1"], probes=400, batches=1, seed=0)["1"]
    assert estimate == pytest.approx(float(exact) / weight.numel(), rel=0.1)


def test_channel_analysis_records_which_layers_each_group_reaches(trained, digits, tmp_path):
    model, _ = trained
    example = torch.zeros(1, 1, 8, 8)
    groups = channel_groups(model, example, ())
    assert groups == {"conv1": 12, "conv2": 24, "fc1": 48}
    calib = Calibration.build(model, digits.calibration, 64, "loss")
    out = channel_analysis(model, example, calib, {"conv2": 24}, {"conv2": [24, 12]}, criterion="l1",
                           data=digits.calibration, skip=(), seed=0, cache=Cache(tmp_path / "c.json", "k"))
    level = out["conv2"]["levels"][1]
    # half of conv2's filters: conv2 loses 12 outputs, fc1 (after a 4×4 pooled map) 12·16 inputs
    assert level["widths"] == {"conv2": [12, 12], "fc1": [192, 48]}
    assert level["delta"] >= 0 and out["conv2"]["levels"][0]["delta"] == 0
    assert Cache(tmp_path / "c.json", "k").get("conv2|12")["widths"] == level["widths"]  # cached as measured


def test_short_recovery_holds_pruned_weights_at_zero_and_is_reproducible(trained, digits):
    from slimkit.prune import UnstructuredConfig, attached_masks, magnitude_prune

    model, _ = trained
    recovery = ShortRecovery.build(digits.train, 12, 0.05, seed=0)
    assert len(recovery.batches) == 12 and recovery.label == "recovered12@0.05"
    pruned = magnitude_prune(model, None, UnstructuredConfig(sparsity={"fc1": 0.9}))
    before = pruned.fc1.weight.detach().clone()  # the recovery trains the model it is given
    zeros = before == 0
    first, second = recovery(pruned), recovery(magnitude_prune(model, None, UnstructuredConfig(sparsity={"fc1": 0.9})))
    assert not attached_masks(first)  # finalized: the masks are baked in
    assert torch.equal(first.fc1.weight[zeros], torch.zeros(int(zeros.sum())))
    assert not torch.equal(first.fc1.weight[~zeros], before[~zeros])  # the rest trained
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)  # same batches, same order, same seed


def test_container_costs_after_a_short_recovery_are_read_against_the_recovered_unpruned_model(trained, digits,
                                                                                           tmp_path):
    model, _ = trained
    calib = Calibration.build(model, digits.calibration, 128, "loss")
    recovery = ShortRecovery.build(digits.train, 30, 0.05, seed=0)
    common = {"method": "loss", "traces": None, "seed": 0}
    one_shot = container_analysis(model, calib, ["fc1"], [0.9], [8], cache=Cache(tmp_path / "a.json", "k"), **common)
    recovered = container_analysis(model, calib, ["fc1"], [0.9], [8], cache=Cache(tmp_path / "b.json", "k"),
                                   recovery=recovery, **common)
    cost = {name: {r["sparsity"]: r["delta"] for r in rows} for name, rows in
            (("one-shot", one_shot["fc1"]), ("recovered", recovered["fc1"]))}
    # 8-bit clusters of the unpruned layer cost almost nothing against the reference the steps also trained
    assert cost["recovered"][0.0] < 0.01
    # retraining recovers most of what 90 % sparsity costs one-shot
    assert cost["one-shot"][0.9] > 0.04
    assert cost["recovered"][0.9] < 0.5 * cost["one-shot"][0.9]
    with pytest.raises(ValueError, match="measured losses"):
        container_analysis(model, calib, ["fc1"], [0.9], [8], cache=Cache(tmp_path / "c.json", "k"),
                           recovery=recovery, method="hessian", traces={}, seed=0)


def test_a_cache_entry_read_back_with_another_type_is_measured_again(tmp_path):
    import json

    import numpy as np

    path = tmp_path / "c.json"
    cache = Cache(path, "k")
    cache.put("conv1|8", {"keep": 8, "delta": np.float64(0.25), "widths": {"conv1": (1, 8)}})
    cache.put("fc1", None)
    cache.put("fc2", np.int64(3))
    assert Cache(path, "k").entries == {"conv1|8": {"keep": 8, "delta": 0.25, "widths": {"conv1": [1, 8]}},
                                        "fc1": None, "fc2": 3}
    payload = json.loads(path.read_text())
    payload["entries"]["conv1|8"]["delta"] = "x"  # a number become a string
    payload["entries"]["fc2"] = [3]
    path.write_text(json.dumps(payload))
    assert Cache(path, "k").entries == {"fc1": None}
    del payload["shapes"]  # a file without the shapes (an older slimkit's) is measured again
    path.write_text(json.dumps(payload))
    assert Cache(path, "k").entries == {}


def test_channel_analysis_prices_what_a_pruned_container_stores_besides_its_layers(digits, tmp_path):
    from slimkit import models
    from slimkit.auto._sensitivity import other_state_bytes

    torch.manual_seed(0)
    model = models.from_spec("resnet20:width=0.25,in_channels=1").eval()
    example = torch.zeros(1, 1, 8, 8)
    calib = Calibration.build(model, digits.calibration, 32, "loss")
    cache = Cache(tmp_path / "c.json", "k")
    # an entry kept before the container's fields were recorded: its measured delta stays, the fields are added
    cache.put("layer1.0.conv1|2", {"keep": 2, "ratio": 0.5, "delta": 0.125, "widths": {}})
    out = channel_analysis(model, example, calib, {"layer1.0.conv1": 4, "layer2.0.conv1": 8},
                           {"layer1.0.conv1": [4, 2], "layer2.0.conv1": [8, 4]}, criterion="l1",
                           data=digits.calibration, skip=(), seed=0, cache=cache)
    level = out["layer1.0.conv1"]["levels"][1]
    assert level["delta"] == 0.125 and level["widths"] == {"layer1.0.conv1": [4, 2], "layer1.0.conv2": [2, 4]}
    # two channels of layer1.0.bn1 gone: weight, bias, running mean and variance, float32
    assert level["other_bytes"] == 2 * 4 * 4
    assert out["layer2.0.conv1"]["levels"][1]["other_bytes"] == 4 * 4 * 4
    assert other_state_bytes(model) == sum(t.numel() * t.element_size() for k, t in model.state_dict().items()
                                           if ".bn" in k or k.startswith("bn"))
    # each group's header record, scaled so that the two add up to their joint record (smaller: one key, shared
    # matches); the unpruned level records nothing
    assert level["layout"] > 0 and out["layer1.0.conv1"]["levels"][0]["layout"] == 0
    assert cache.get("joint layout|layer1.0.conv1=2,layer2.0.conv1=4") == pytest.approx(
        level["layout"] + out["layer2.0.conv1"]["levels"][1]["layout"])
    # without the container format none of this is measured, nor an old entry pruned again for it
    fresh = Cache(tmp_path / "d.json", "k")
    fresh.put("layer1.0.conv1|2", {"keep": 2, "ratio": 0.5, "delta": 0.25, "widths": {}})
    plain = channel_analysis(model, example, calib, {"layer1.0.conv1": 4}, {"layer1.0.conv1": [4, 2]},
                             criterion="l1", data=digits.calibration, skip=(), seed=0, cache=fresh, container=False)
    assert plain["layer1.0.conv1"]["levels"][1] == {"keep": 2, "ratio": 0.5, "delta": 0.25, "widths": {}}
