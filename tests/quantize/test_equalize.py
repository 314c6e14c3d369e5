import torch
from torch import nn

from slimkit import models
from slimkit.quantize import QuantConfig, equalization_pairs, equalize, fold_bn, quant_report, quantize


def test_pairs_found_through_relu_and_pooling():
    assert equalization_pairs(models.create("lenet5")) == [("conv1", "conv2"), ("fc1", "fc2")]
    pairs = equalization_pairs(fold_bn(models.create("resnet20")))
    assert ("layer1.0.conv1", "layer1.0.conv2") in pairs
    assert not any(a == "layer1.0.conv2" for a, _ in pairs)  # the residual add is not homogeneous per channel


def test_equalization_preserves_outputs_and_equalizes_ranges():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 4, 3)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-2, 1, 8).reshape(8, 1, 1, 1))
    x = torch.randn(2, 3, 12, 12)
    eq = equalize(model)
    with torch.no_grad():
        assert torch.allclose(eq(x), model(x), atol=1e-5)
    r1 = eq[0].weight.abs().amax(dim=(1, 2, 3))
    r2 = eq[3].weight.abs().amax(dim=(0, 2, 3))
    assert torch.allclose(r1, r2, rtol=1e-4)


def test_equalization_helps_per_tensor_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    # The imbalance CLE undoes (e.g. left by BN folding): channel scales c_i in layer 1 compensated by 1/c_i in
    # layer 2, so the function is that of a well-conditioned net but per-tensor grids lose the small channels.
    c = torch.logspace(-2, 1, 8)
    with torch.no_grad():
        model[0].weight.mul_(c.reshape(8, 1, 1, 1))
        model[0].bias.mul_(c)
        model[2].weight.div_(c.reshape(1, 8, 1, 1))
    calib = [torch.randn(16, 3, 10, 10) for _ in range(2)]
    x = torch.randn(32, 3, 10, 10)
    errors = {}
    for flag in (False, True):
        q = quantize(model, calib[0], QuantConfig(per_channel=False, weight_bits=4, equalize=flag), data=calib)
        assert bool(quant_report(q).equalized) is flag
        with torch.no_grad():
            errors[flag] = float((q(x) - model(x)).pow(2).mean())
    assert errors[True] < errors[False] / 2
