import pytest
import torch
from torch import nn

from slimkit import models
from slimkit.analysis import profile
from slimkit.models._crelu import CReLU, CReLUConv2d
from slimkit.models._shufflenet import ChannelShuffle

ZOO = ["mobilenet_v1", "mobilenet_v2", "shufflenet_v1", "shufflenet_v2", "squeezenet1_0", "squeezenet1_1",
       "resnext50_32x4d", "resnet50", "resnet18", "crelu_net"]

# (model, options, published params, published mult-adds) at 3×224×224 with 1000 classes.
PUBLISHED = [
    ("mobilenet_v1", {}, 4.2e6, 569e6),  # Howard et al. Table 8
    ("mobilenet_v1", {"width": 0.5}, None, 149e6),  # Table 6 (params: see the rounded test below)
    ("mobilenet_v1", {"width": 0.25}, None, 41e6),
    ("mobilenet_v2", {}, 3.504872e6, 300e6),  # Sandler et al. Table 4 (3.4M; 3,504,872 in the reference code)
    ("shufflenet_v1", {"groups": 3}, 1.87e6, 140e6),  # Zhang et al. Table 2/8 (params from the reference model)
    ("shufflenet_v1", {"groups": 1}, None, 143e6),  # Table 2
    ("shufflenet_v1", {"groups": 8}, None, 140e6),  # Table 2
    ("shufflenet_v2", {}, 2.3e6, 146e6),  # Ma et al. Table 5
    ("shufflenet_v2", {"width": 0.5}, None, 41e6),  # (1.4M params: rounded, 1,366,792)
    ("shufflenet_v2", {"width": 2.0}, 7.4e6, 591e6),
    ("squeezenet1_0", {}, 1_248_424, None),  # Iandola et al. Table 1 ("1.24M")
    ("squeezenet1_1", {}, 1_235_496, None),
    ("resnext50_32x4d", {}, 25.0e6, 4.2e9),  # Xie et al. Table 1
    ("resnet50", {}, 25.6e6, 4.1e9),  # He et al. Table 1 (3.8G there counts conv mult-adds of the 2015 model)
    ("resnet18", {}, 11.69e6, 1.82e9),  # He et al. Table 1 (1.8G FLOPs = mult-adds)
]


IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in o.items()) or 'default'}" for n, o, *_ in PUBLISHED]


@pytest.mark.parametrize(("name", "options", "params", "macs"), PUBLISHED, ids=IDS)
def test_imagenet_counts_match_the_papers(name, options, params, macs):
    model = models.create(name, num_classes=1000, in_channels=3, input_size=224, **options)
    total = profile(model, torch.zeros(1, 3, 224, 224)).total
    if params is not None:
        assert abs(total.params - params) / params < 0.02, total.params
    if macs is not None:
        assert abs(total.macs - macs) / macs < 0.02, total.macs


@pytest.mark.parametrize(("width", "published_millions"), [(0.75, 2.6), (0.5, 1.3), (0.25, 0.5)])
def test_mobilenet_width_multiplier_params_round_to_the_papers(width, published_millions):
    # Howard et al. Table 6 gives params to one decimal (millions): compare at that precision
    model = models.create("mobilenet_v1", num_classes=1000, in_channels=3, width=width, input_size=224)
    assert round(profile(model, torch.zeros(1, 3, 224, 224)).total.params / 1e6, 1) == published_millions


def test_mobilenet_resolution_multiplier():
    # Howard et al. Table 7: 1.0 MobileNet-192 has 418M mult-adds
    model = models.create("mobilenet_v1", num_classes=1000, in_channels=3, input_size=192)
    assert abs(profile(model, torch.zeros(1, 3, 192, 192)).total.macs - 418e6) / 418e6 < 0.02


@pytest.mark.parametrize("name", ZOO)
def test_zoo_defaults_fit_mnist_traces_with_fx_and_keeps_a_spatial_map(name):
    assert models.default_input_shape(name) == (1, 28, 28)
    model = models.create(name).eval()
    x = torch.randn(3, 1, 28, 28)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    assert model(x).shape == (3, 10)
    # small inputs reduce early strides: the last conv feature map is still ≥ 4×4 for a 28×28 image
    shapes = [r.output_shape for r in profile(model, x[:1]).rows if r.type == "Conv2d"]
    assert min(s[-1] for s in shapes) >= 4


def test_imagenet_models_end_on_7x7():
    model = models.create("shufflenet_v2", num_classes=1000, in_channels=3, input_size=224)
    rows = [r for r in profile(model, torch.zeros(1, 3, 224, 224)).rows if r.name == "conv5.0"]
    assert rows[0].output_shape[-2:] == (7, 7)


def test_width_and_cardinality_options_change_the_layers():
    assert models.create("resnext50_32x4d", groups=16, width_per_group=8).layer1[0].conv2.groups == 16
    assert models.create("resnext50_32x4d").layer1[0].conv2.out_channels == 128  # 32 × 4d
    assert models.create("mobilenet_v1", width=0.5).stem[0].out_channels == 16
    unit = models.create("shufflenet_v1", groups=8).stage2[1]
    assert unit.branch[0].groups == 8 and unit.branch[3].groups == 8
    assert models.create("squeezenet1_1", width=0.5).features[2].squeeze.out_channels == 8


def test_channel_shuffle_matches_torch_and_is_a_permutation():
    x = torch.arange(2 * 12 * 2 * 2, dtype=torch.float32).reshape(2, 12, 2, 2)
    torch.testing.assert_close(ChannelShuffle(3)(x), nn.functional.channel_shuffle(x, 3))
    assert ChannelShuffle(3)(x)[0, :, 0, 0].tolist() == [0, 16, 32, 4, 20, 36, 8, 24, 40, 12, 28, 44]


def test_crelu_concatenates_the_negation():
    x = torch.randn(2, 3, 4, 4)
    out = CReLU(activation=False)(x)
    assert out.shape == (2, 6, 4, 4)
    torch.testing.assert_close(out[:, 3:], -x)
    torch.testing.assert_close(CReLU()(x), torch.cat([x.relu(), (-x).relu()], 1))
    block = CReLUConv2d(8, 16, 3)
    assert block.conv.out_channels == 8 and block(torch.randn(1, 8, 5, 5)).shape == (1, 16, 5, 5)
    full = profile(nn.Conv2d(8, 16, 3, padding=1, bias=False), torch.zeros(1, 8, 5, 5)).total.macs
    assert profile(block, torch.zeros(1, 8, 5, 5)).total.macs * 2 == full


@pytest.mark.parametrize("options", [{}, {"crelu": True, "width": 0.5}])
def test_segnet_output_has_the_input_size_and_crelu_halves_pointwise(options):
    model = models.create("mobile_segnet", **options).eval()
    x = torch.randn(2, 1, 64, 64)
    assert model(x).shape == (2, 11, 64, 64)
    torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x), rtol=0, atol=0)
    assert model(torch.randn(1, 1, 96, 96)).shape == (1, 11, 96, 96)


def test_segnet_crelu_halves_the_pointwise_macs():
    x = torch.zeros(1, 1, 64, 64)
    plain, crelu = (profile(models.create("mobile_segnet", crelu=c), x) for c in (False, True))

    def pointwise_macs(prof):
        return sum(r.macs for r in prof.rows
                   if r.type == "Conv2d" and (".pointwise.0" in r.name or ".fuse.0" in r.name))

    assert pointwise_macs(crelu) * 2 == pointwise_macs(plain)


@pytest.mark.parametrize(("name", "options"), [("shufflenet_v1", {}), ("shufflenet_v2", {}),
                                               ("mobile_segnet", {"crelu": True, "width": 0.25})])
def test_shuffle_and_crelu_models_export_to_onnx(tmp_path, name, options):
    from slimkit.export import export_onnx, onnx_max_abs_diff

    model = models.create(name, **options).eval()
    x = torch.randn(2, *models.default_input_shape(name))
    path = export_onnx(model, x[:1], tmp_path / "m.onnx")
    assert onnx_max_abs_diff(model, path, x) < 1e-4
