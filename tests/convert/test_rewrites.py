import pytest
import torch
from torch import nn

from slimkit import ConfigError, models
from slimkit.analysis import profile
from slimkit.convert import (
    CONVERTERS,
    CReLUConfig,
    DepthwiseSeparableConfig,
    GroupConvConfig,
    RewriteConfig,
    convert,
    converter_name,
    layers_to_convert,
    to_crelu,
    to_depthwise_separable,
    to_group_conv,
)
from slimkit.data import TensorLoader

FUNCTIONS = {"depthwise-separable": to_depthwise_separable, "group": to_group_conv, "crelu": to_crelu}


class TwoConv(nn.Module):
    def __init__(self, c_in=8, c_mid=16, c_out=12, bias=True):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_mid, 3, padding=1, bias=bias)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_mid, c_out, 3, padding=1, bias=bias)

    def forward(self, x):
        return self.conv2(self.relu(self.conv1(x)))


def _calibration(shape=(8, 8, 8), n=96):
    x = torch.randn(n, *shape)
    return TensorLoader(x, torch.zeros(n, dtype=torch.long), 32)


def test_every_converter_has_a_function_and_a_config_that_dispatches_to_it():
    assert set(CONVERTERS.names()) == set(FUNCTIONS)
    for name in CONVERTERS.names():
        assert converter_name(CONVERTERS.meta(name)["config"]()) == name


def test_depthwise_separable_mac_ratio_is_mobilenets_formula():
    # Howard et al. Eq. 5: (Dk²·M·Df² + M·N·Df²) / (Dk²·M·N·Df²) = 1/N + 1/Dk²   (bias-free, stride 1, same padding)
    n_out, k = 32, 3
    model = nn.Sequential(nn.Conv2d(16, n_out, k, padding=1, bias=False))
    x = torch.zeros(1, 16, 14, 14)
    converted = to_depthwise_separable(model, x)
    ratio = profile(converted, x).total.macs / profile(model, x).total.macs
    assert ratio == pytest.approx(1 / n_out + 1 / k**2, abs=1e-12)
    assert converted[0].depthwise.groups == 16 and converted[0].pointwise.kernel_size == (1, 1)


def test_depthwise_separable_is_exact_for_rank_one_filters_and_keeps_the_caller_model():
    model = TwoConv()
    with torch.no_grad():  # W[:, c] = p[:, c] ⊗ d[c]: exactly depthwise-separable
        p, d = torch.randn(12, 16), torch.randn(16, 9)
        model.conv2.weight.copy_((p[:, :, None] * d[None]).reshape(12, 16, 3, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 8, 8, 8)
    converted = to_depthwise_separable(model, x, DepthwiseSeparableConfig(layers="conv2"))
    torch.testing.assert_close(converted(x), model(x), atol=1e-5, rtol=1e-5)
    assert isinstance(model.conv2, nn.Conv2d)  # caller's model untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_depthwise_reconstruction_beats_the_weight_fit_on_data():
    model = TwoConv().eval()  # eval: the inserted BN starts as the identity of its running statistics
    x = torch.randn(4, 8, 8, 8)
    calib = _calibration()
    config = DepthwiseSeparableConfig(layers="conv2", activation=True, norm=True)
    plain = to_depthwise_separable(model, x, config)
    refit = to_depthwise_separable(model, x, config, data=calib)
    target = model(x)
    assert (refit(x) - target).pow(2).mean() < 0.9 * (plain(x) - target).pow(2).mean()


@pytest.mark.parametrize("shuffle", [True, False])
def test_group_conv_with_one_group_is_identical(shuffle):
    model = TwoConv()
    x = torch.randn(2, 8, 8, 8)
    converted = to_group_conv(model, x, GroupConvConfig(groups=1, shuffle=shuffle))
    torch.testing.assert_close(converted(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shuffle", [True, False])
def test_group_conv_is_exact_when_the_old_weights_have_the_shuffled_block_pattern(shuffle):
    g, model = 4, TwoConv()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():  # old channel k may only see input group (k % g) with shuffle, (k // 3) without
        mask = torch.zeros(12, 16, 1, 1)
        for k in range(12):
            group = k % g if shuffle else k // (12 // g)
            mask[k, group * 4:(group + 1) * 4] = 1
        model.conv2.weight.mul_(mask)
    converted = to_group_conv(model, x, GroupConvConfig(groups=g, shuffle=shuffle, layers=("conv2",)))
    assert converted.conv2.conv.groups == g
    torch.testing.assert_close(converted(x), model(x), atol=1e-5, rtol=1e-5)
    # the least-squares refit on data recovers the same exact weights
    refit = to_group_conv(model, x, GroupConvConfig(groups=g, shuffle=shuffle, layers="conv2", ridge=0),
                          data=_calibration())
    torch.testing.assert_close(refit(x), model(x), atol=1e-4, rtol=1e-4)


def test_group_conv_divides_macs_by_g_and_skips_indivisible_layers():
    model = models.create("lenet5")
    x = torch.zeros(1, 1, 28, 28)
    assert layers_to_convert(model, x, GroupConvConfig(groups=2)) == ["conv2"]  # conv1 has 1 input
    converted = to_group_conv(model, x, GroupConvConfig(groups=2))
    assert profile(converted, x).row("conv2.conv").macs * 2 == profile(model, x).row("conv2").macs


def test_crelu_is_exact_for_negated_filter_pairs():
    model = TwoConv()
    with torch.no_grad():
        half = torch.randn(8, 8, 3, 3)
        order = torch.randperm(16)
        model.conv1.weight.copy_(torch.cat([half, -half])[order])
        bias = torch.randn(8)
        model.conv1.bias.copy_(torch.cat([bias, -bias])[order])
    x = torch.randn(2, 8, 8, 8)
    converted = to_crelu(model, x, CReLUConfig(layers=("conv1",)))
    assert converted.conv1.conv.out_channels == 8
    torch.testing.assert_close(converted(x), model(x), atol=1e-5, rtol=1e-5)
    assert profile(converted, x).row("conv1.conv").macs * 2 == profile(model, x).row("conv1").macs


def test_layer_selection_by_glob_regex_and_errors():
    model = models.create("resnet20")
    x = torch.zeros(1, 1, 28, 28)
    names = layers_to_convert(model, x, DepthwiseSeparableConfig(layers="layer1.*"))
    assert names == [f"layer1.{b}.conv{i}" for b in range(3) for i in (1, 2)]
    names = layers_to_convert(model, x, CReLUConfig(layers="re:layer3\\.2\\.conv\\d"))
    assert names == ["layer3.2.conv1", "layer3.2.conv2"]
    with pytest.raises(ConfigError, match="not a convertible layer"):
        to_crelu(model, x, CReLUConfig(layers="layer9.conv1"))
    with pytest.raises(ConfigError, match="cannot be converted"):
        to_depthwise_separable(model, x, DepthwiseSeparableConfig(layers="conv1"))  # 1 input channel
    with pytest.raises(ConfigError, match="groups must be"):
        GroupConvConfig(groups=0)
    with pytest.raises(ConfigError, match="no rewrite takes a RewriteConfig"):
        convert(model, x, RewriteConfig())
    with pytest.raises(ConfigError, match="found no layer"):
        to_group_conv(model, x, GroupConvConfig(groups=7))


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
@pytest.mark.parametrize("converter", sorted(FUNCTIONS))
def test_rewritten_models_export_to_onnx_and_match_onnxruntime(tmp_path, name, converter):
    from slimkit.export import export_onnx, onnx_max_abs_diff

    model = models.create(name).eval()
    x = torch.randn(3, 1, 28, 28)
    converted = FUNCTIONS[converter](model, x[:1]).eval()
    path = export_onnx(converted, x[:1], tmp_path / "m.onnx")
    assert onnx_max_abs_diff(converted, path, x) < 1e-4
