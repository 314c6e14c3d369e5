import pytest
import torch

from slimkit import ConfigError
from slimkit.models import create
from slimkit.prune._agp import AGPCallback, AGPConfig, agp_sparsity
from slimkit.prune._unstructured import sparsity_of
from slimkit.train import fit


def test_schedule_hand_computed():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))^3 with s_i=0, s_f=0.8, t0=10, n=4, Δt=5
    args = dict(initial=0.0, final=0.8, start=10, n_steps=4, interval=5)
    assert agp_sparsity(0, **args) == 0.0
    assert agp_sparsity(10, **args) == 0.0
    assert agp_sparsity(14, **args) == 0.0  # constant until the next pruning step
    assert agp_sparsity(15, **args) == pytest.approx(0.8 - 0.8 * 0.75 ** 3)  # 0.4625
    assert agp_sparsity(20, **args) == pytest.approx(0.8 - 0.8 * 0.5 ** 3)  # 0.7
    assert agp_sparsity(25, **args) == pytest.approx(0.8 - 0.8 * 0.25 ** 3)  # 0.7875
    assert agp_sparsity(30, **args) == pytest.approx(0.8)
    assert agp_sparsity(1000, **args) == pytest.approx(0.8)


def test_config_validated():
    with pytest.raises(ConfigError):
        AGPConfig(final=1.2)
    with pytest.raises(ConfigError):
        AGPConfig(initial=0.5, final=0.2)
    with pytest.raises(ConfigError):
        AGPConfig(n_steps=0)


def test_callback_reaches_final_sparsity_during_fit():
    model = create("lenet300")
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    loader = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]  # 8 steps per epoch
    cb = AGPCallback(AGPConfig(final=0.75, n_steps=3, interval=4))
    fit(model, loader, epochs=2, callbacks=[cb], progress=False)
    assert [s for _, s in cb.history] == pytest.approx([0.0, 0.75 - 0.75 * (2 / 3) ** 3,
                                                        0.75 - 0.75 * (1 / 3) ** 3, 0.75])
    for name, s in sparsity_of(model).items():
        w = model.get_submodule(name).weight
        assert s == pytest.approx(int(0.75 * w.numel()) / w.numel())
