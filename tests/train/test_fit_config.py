"""FitConfig: one declaration of the training options, validated on construction, shared by every training config."""

import dataclasses

import pytest
import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit.data import TensorLoader
from slimkit.distill import DistillConfig, ReconstructConfig
from slimkit.pipeline._stages import TrainParams
from slimkit.train import FitConfig, default_optimizer, fit


@pytest.mark.parametrize("bad, word", [
    ({"epochs": -1}, "epochs"), ({"epochs": 1.5}, "epochs"), ({"lr": 0}, "lr"), ({"lr": float("nan")}, "lr"),
    ({"weight_decay": 1}, "weight_decay"), ({"momentum": 1}, "momentum"), ({"optimizer": "adam"}, "optimizer"),
    ({"scheduler": "step"}, "scheduler"), ({"grad_clip": 0}, "grad_clip"), ({"seed": -2}, "seed"),
])
def test_bad_values_fail_on_construction_naming_the_field(bad, word):
    for config_cls, extra in ((FitConfig, {}), (DistillConfig, {}), (ReconstructConfig, {"stages": ("a=a",)})):
        with pytest.raises(ConfigError, match=word):
            config_cls(**extra, **bad)


def test_training_configs_extend_fit_config_and_the_recipe_schema_matches_it():
    assert issubclass(DistillConfig, FitConfig) and issubclass(ReconstructConfig, FitConfig)
    fit_fields = {f.name for f in dataclasses.fields(FitConfig)}
    # the recipe's training options are FitConfig's minus what the recipe / command line decide
    assert set(TrainParams.model_fields) == fit_fields - {"seed", "progress"}
    params = TrainParams(epochs=3, lr=0.2, optimizer="adamw", grad_clip=1.0)
    assert params.fit_config(seed=7, progress=False) == FitConfig(epochs=3, lr=0.2, optimizer="adamw",
                                                                   grad_clip=1.0, seed=7)


def test_make_optimizer_builds_the_named_optimizer():
    params = [nn.Parameter(torch.zeros(3))]
    sgd = FitConfig(lr=0.1, weight_decay=0.0, momentum=0.8).make_optimizer(params)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    adamw = FitConfig(optimizer="adamw", lr=1e-3).make_optimizer(params)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.95)


def test_fit_options_train_exactly_as_the_explicit_arguments():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    loader = TensorLoader(x, y, 16, shuffle=True)
    first, second = nn.Linear(5, 3), nn.Linear(5, 3)
    second.load_state_dict(first.state_dict())
    fit(first, loader, **FitConfig(epochs=2, lr=0.1, seed=3).fit_options())
    fit(second, loader, epochs=2, optimizer=lambda p: default_optimizer(p, 0.1), scheduler="cosine", seed=3,
        progress=False)
    assert torch.equal(first.weight, second.weight) and not torch.equal(first.weight, nn.Linear(5, 3).weight)
