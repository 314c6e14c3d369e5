import numpy as np
import pytest
import torch
from torch import nn

from slimkit import ConfigError, models
from slimkit.analysis import profile
from slimkit.data import TensorLoader, create_data
from slimkit.decompose import DECOMPOSITIONS, DecomposeConfig, decompose, decompose_report, layers_to_decompose


@pytest.fixture
def lenet():
    return models.create("lenet5").eval()


@pytest.fixture
def x():
    return torch.randn(4, 1, 28, 28)


def test_full_rank_lenet5_reproduces_outputs_and_leaves_the_caller_untouched(lenet, x):
    state = {k: v.clone() for k, v in lenet.state_dict().items()}
    result = decompose(lenet, x, DecomposeConfig(rank=10_000, allow_growth=True))
    assert all(torch.equal(v, state[k]) for k, v in lenet.state_dict().items())
    assert isinstance(lenet.conv2, nn.Conv2d) and isinstance(result.conv2, nn.Sequential)
    with torch.no_grad():
        torch.testing.assert_close(result(x), lenet(x), atol=1e-4, rtol=0)
    report = decompose_report(result)
    assert [(r.name, r.method, r.ranks) for r in report.layers] == [
        ("conv1", "tucker2", (20, 1)), ("conv2", "tucker2", (50, 20)), ("fc1", "svd", (500,)), ("fc2", "svd", (10,))]
    assert max(r.relative_error for r in report.layers) < 1e-5


@pytest.mark.parametrize("bad", [
    {"rank": 0}, {"rank": -3}, {"rank": (4, 0)}, {"rank": (1, 2, 3)}, {"energy": 1.5}, {"energy": 0.0},
    {"ratio": 1.0}, {"ratio": -0.5}, {"method": "qr", "rank": 2}, {"method": (), "rank": 2},
    {}, {"rank": 2, "energy": 0.9}, {"vbmf": True, "ratio": 0.5}, {"method": "svd", "rank": (2, 2)},
])
def test_bad_config_raises_config_error(bad):
    with pytest.raises(ConfigError):
        DecomposeConfig(**bad)


def test_unknown_layer_name_fails_before_any_work(lenet, x):
    with pytest.raises(ConfigError, match="conv9"):
        decompose(lenet, x, DecomposeConfig(rank=2, layers=("conv9",)))
    with pytest.raises(ConfigError, match="pool1"):  # exists, but is not a Conv2d/Linear
        layers_to_decompose(lenet, DecomposeConfig(rank=2, layers="pool1"))


def test_a_skip_covering_every_selected_layer_is_an_error_not_a_no_op(lenet, x):
    with pytest.raises(ConfigError, match=r"skips every layer that layers=\['fc\*'\] selects \(fc1, fc2\)"):
        decompose(lenet, x, DecomposeConfig(method="svd", rank=4, layers="fc*", skip=("fc1", "re:fc\\d")))
    with pytest.raises(ConfigError, match=r"skip=\['\*'\] skips every selectable layer \(conv1"):
        decompose(lenet, x, DecomposeConfig(method="svd", rank=4, skip="*"))


def test_layer_selection_by_regex_glob_and_skip(lenet, x):
    convs = decompose_report(decompose(lenet, x, DecomposeConfig(rank=4, layers="re:conv\\d")))
    assert [r.name for r in convs.decomposed] == ["conv1", "conv2"]
    fcs = decompose_report(decompose(lenet, x, DecomposeConfig(method="svd", rank=4, layers="fc*", skip="fc2")))
    assert [r.name for r in fcs.layers] == ["fc1"]


def test_methods_are_tried_in_order_and_reasons_reported(lenet, x):
    report = decompose_report(decompose(lenet, x, DecomposeConfig(method="cp", rank=4)))
    assert [r.name for r in report.decomposed] == ["conv1", "conv2"]
    assert "not a Conv2d" in report.skipped["fc1"]
    grown = decompose_report(decompose(lenet, x, DecomposeConfig(method="svd", rank=400, layers="fc2")))
    assert "allow_growth" in grown.skipped["fc2"]


def test_energy_rank_matches_a_hand_computation(lenet, x):
    w = lenet.fc1.weight.detach().double().numpy()
    s2 = np.linalg.svd(w, compute_uv=False) ** 2
    expected = int(np.argmax(np.cumsum(s2) / s2.sum() >= 0.5) + 1)
    report = decompose_report(decompose(lenet, x, DecomposeConfig(method="svd", energy=0.5, layers="fc1")))
    assert report.layers[0].ranks == (expected,)


@pytest.mark.parametrize("method_name", ["svd", "tucker2", "cp"])
def test_ratio_rule_meets_the_params_budget(lenet, x, method_name):
    result = decompose(lenet, x, DecomposeConfig(method=method_name, ratio=0.15, layers="conv2"))
    (row,) = decompose_report(result).decomposed
    assert row.params_after <= 0.15 * row.params_before
    assert row.params_after > 0.1 * row.params_before  # the largest ranks that fit, not rank 1
    if len(row.ranks) == 1:
        (rank,) = row.ranks
        assert DECOMPOSITIONS.get(method_name).params(lenet.conv2, (rank + 1,)) > 0.15 * row.params_before
    assert profile(result.conv2, torch.randn(1, 20, 12, 12)).total.params == row.params_after


@pytest.mark.parametrize("rank", [3, 12])
def test_vbmf_rule_finds_a_planted_rank_in_a_model(rank):
    torch.manual_seed(rank)
    model = nn.Sequential(nn.Linear(120, 200), nn.ReLU(), nn.Linear(200, 10))
    model[0].weight.data = torch.randn(200, rank) @ torch.randn(rank, 120) / 10 + 0.01 * torch.randn(200, 120)
    result = decompose(model, torch.randn(2, 120), DecomposeConfig(method="svd", vbmf=True, layers="0"))
    assert decompose_report(result).layers[0].ranks == (rank,)
    assert result[0][0].out_features == rank


def test_cp_ratio_rank_may_exceed_the_channel_counts():
    conv = nn.Sequential(nn.Conv2d(4, 6, 5))
    result = decompose(conv, torch.randn(1, 4, 9, 9), DecomposeConfig(method="cp", ratio=0.9, layers="0"))
    # 0.9 × (4·6·25 + 6) = 545.4 ≥ R (4 + 5 + 5 + 6) + 6 → R = 26 > max(4, 6).
    assert decompose_report(result).layers[0].ranks == (26,)


def test_report_totals_equal_profiles(lenet, x):
    result = decompose(lenet, x, DecomposeConfig(vbmf=True))
    report = decompose_report(result)
    assert report.params_after == profile(result, x).total.params == sum(p.numel() for p in result.parameters())
    assert report.macs_after == profile(result, x).total.macs
    assert report.params_before == 431_080 and report.macs_before == 2_293_000
    assert report.params_after == report.params_before - sum(r.params_before - r.params_after for r in report.layers)


def test_decompose_report_needs_a_decomposed_model(lenet):
    with pytest.raises(ConfigError):
        decompose_report(lenet)


@pytest.mark.parametrize("method_name", DECOMPOSITIONS.names())
def test_onnx_export_of_decomposed_lenet5_matches_pytorch(tmp_path, lenet, x, method_name):
    from slimkit.export import export_onnx, onnx_max_abs_diff

    result = decompose(lenet, x, DecomposeConfig(method=(method_name, "svd"), rank=12))
    path = export_onnx(result, x[:1], tmp_path / "m.onnx")
    assert onnx_max_abs_diff(result, path, x) < 1e-4


def test_fine_tuning_with_fit_lowers_the_loss():
    from slimkit.train import default_optimizer, fit

    data = create_data("mnist", batch_size=64)
    inputs, targets = data.train.inputs[:4096], data.train.targets[:4096]
    torch.manual_seed(0)
    trained = models.create("lenet300")
    fit(trained, TensorLoader(inputs, targets, batch_size=64, shuffle=True), epochs=1, progress=False)
    model = decompose(trained, inputs[:2], DecomposeConfig(method="svd", rank=3, layers="layers.1"))

    def loss(net: nn.Module) -> float:
        with torch.no_grad():
            return float(nn.functional.cross_entropy(net.eval()(inputs), targets))

    original, before = loss(trained), loss(model)
    assert before > original + 0.1  # rank 3 of 300 really hurts
    fit(model, TensorLoader(inputs[:1024], targets[:1024], batch_size=64, shuffle=True), epochs=1,
        optimizer=lambda p: default_optimizer(p, 0.02), progress=False)
    assert loss(model) < before - 0.05
    assert isinstance(model.layers[1], nn.Sequential)  # still factorised after training
