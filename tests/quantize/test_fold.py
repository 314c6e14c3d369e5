import torch
from torch import nn

from slimkit import models
from slimkit.quantize import analyse, fold_bn, matches


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def test_bn_folding_preserves_outputs_resnet20():
    model = _randomise_bn(models.create("resnet20", width=0.5))
    x = torch.randn(4, 1, 28, 28)
    folded = fold_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # caller's model untouched
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_bn_folding_preserves_outputs_with_conv_bias():
    model = _randomise_bn(nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.ReLU()))
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert torch.allclose(fold_bn(model)(x), model(x), atol=1e-5)


def test_analysis_finds_pairs_and_relus():
    facts = analyse(models.create("resnet20"))
    assert ("conv1", "bn1") in facts.conv_bn and ("layer1.0.conv1", "layer1.0.bn1") in facts.conv_bn
    assert ("layer1.0.conv1", "layer1.0.relu1") in facts.layer_relu
    assert not any(conv == "layer1.0.conv2" for conv, _ in facts.layer_relu)  # its ReLU follows the residual add
    assert ("fc1", "relu") in analyse(models.create("lenet5")).layer_relu


def test_grid_inputs_follow_pooling_and_reshapes_but_not_adds():
    # LeNet-5: conv1 → pool → conv2 → pool → flatten → fc1 (+ReLU) → fc2: every input is the previous layer's output
    assert analyse(models.create("lenet5")).grid_inputs == [("conv2", "conv1"), ("fc1", "conv2"), ("fc2", "fc1")]
    pairs = dict(analyse(models.create("resnet20")).grid_inputs)
    assert pairs["layer1.0.conv2"] == "layer1.0.conv1"  # through the folded BN and the ReLU
    assert "layer1.1.conv1" not in pairs and "fc" not in pairs  # after a residual add / average pooling: own grid


def test_shared_grid_quantizer_is_exact_and_calibrated_once(tmp_path):
    from slimkit.data import create_data
    from slimkit.quantize import QuantConfig, quantize

    data = create_data("mnist", calibration_size=256)
    model = models.create("lenet5").eval()
    q = quantize(model, data.example_input(), QuantConfig(), data=data.calibration)
    assert q.conv2.input_quant is q.conv1.output_quant
    assert q.slimkit_quant_report.shared_input_quant == [("conv2", "conv1"), ("fc1", "conv2"), ("fc2", "fc1")]
    # max pooling a tensor on the grid leaves it on the grid: re-quantizing it with the same quantizer is a no-op
    x = q.conv1.output_quant(torch.randn(2, 20, 24, 24))
    pooled = nn.functional.max_pool2d(x, 2)
    assert torch.equal(q.conv2.input_quant(pooled), pooled)


def test_shared_relu_is_not_fused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.relu = nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU()

        def forward(self, x):
            return self.relu(self.b(self.relu(self.a(x))))

    assert analyse(Shared()).layer_relu == []


def test_matches_names_globs_regex():
    assert matches("layer1.0.conv1", ["layer1.*"])
    assert matches("layer1.0.conv1", ["re:.*conv1$"])
    assert not matches("layer1.0.conv2", ["re:.*conv1$", "fc"])
    assert matches("fc", ["fc"])
