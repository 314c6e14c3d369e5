import pytest
import torch

from slimkit import models
from slimkit.analysis import evaluate
from slimkit.convert import DepthwiseSeparableConfig, fine_tune_, to_depthwise_separable
from slimkit.data import TensorLoader, create_data
from slimkit.train import default_optimizer, fit


@pytest.mark.slow
def test_trained_lenet5_survives_a_depthwise_separable_rewrite_on_real_mnist():
    data = create_data("mnist", batch_size=128)
    train = TensorLoader(data.train.inputs[:12000], data.train.targets[:12000], 128, shuffle=True)
    test = TensorLoader(data.test.inputs[:2000], data.test.targets[:2000], 1000)
    model = models.create("lenet5")
    fit(model, train, epochs=1, optimizer=lambda p: default_optimizer(p, 0.05), progress=False)
    base = evaluate(model, test).accuracy
    assert base > 0.9
    x = data.example_input()
    plain = to_depthwise_separable(model, x)
    refit = to_depthwise_separable(model, x, DepthwiseSeparableConfig(calibration_samples=256), data=data.calibration)
    after_rewrite, after_refit = evaluate(plain, test).accuracy, evaluate(refit, test).accuracy
    assert after_refit >= after_rewrite - 0.005 and after_refit > base - 0.05
    fine_tune_(refit, TensorLoader(data.train.inputs[:5000], data.train.targets[:5000], 128, shuffle=True))
    assert evaluate(refit, test).accuracy > base - 0.02
    assert isinstance(model.conv2, torch.nn.Conv2d)
