import pytest
import torch

from slimkit import ConfigError
from slimkit.quantize import OBSERVERS, QuantConfig, QuantSpec, create_observer, fake_quantize, qparams_from_range


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_error_is_at_most_half_a_step(bits, symmetric):
    x = torch.randn(64, 33) * 3 + (0 if symmetric else 1)
    spec = QuantSpec(bits, symmetric)
    scale, zp = qparams_from_range(x.min(), x.max(), spec)
    err = (fake_quantize(x, scale, zp, spec) - x).abs().max()
    assert float(err) <= float(scale) / 2 + 1e-6


def test_grid_levels_and_zero_exact():
    spec = QuantSpec(4, symmetric=False)
    assert (spec.qmin, spec.qmax) == (0, 15)
    assert (QuantSpec(4, symmetric=True).qmin, QuantSpec(4, symmetric=True).qmax) == (-7, 7)
    x = torch.tensor([-1.0, 0.0, 0.3, 2.0])
    scale, zp = qparams_from_range(x.min(), x.max(), spec)
    out = fake_quantize(x, scale, zp, spec)
    assert out[1] == 0.0  # zero is representable exactly (padding, ReLU)
    assert len(torch.unique(fake_quantize(torch.linspace(-1, 2, 1000), scale, zp, spec))) == 16


def test_per_channel_beats_per_tensor_on_uneven_channels():
    weight = torch.randn(8, 16, 3, 3) * torch.logspace(-2, 1, 8).reshape(8, 1, 1, 1)
    errors = {}
    for name, axis in (("tensor", None), ("channel", 0)):
        spec = QuantSpec(8, symmetric=True, ch_axis=axis)
        observer = create_observer("minmax", spec)
        observer.update(weight)
        scale, zp = observer.qparams()
        err = (fake_quantize(weight, scale, zp, spec) - weight).pow(2).mean(dim=(1, 2, 3))
        errors[name] = float((err / weight.pow(2).mean(dim=(1, 2, 3))).mean())  # relative error, per channel
    assert errors["channel"] < errors["tensor"] / 10


@pytest.mark.parametrize("name", OBSERVERS.names())
@pytest.mark.parametrize("axis", [None, 0])
def test_every_observer_gives_a_valid_range(name, axis):
    spec = QuantSpec(8, symmetric=False, ch_axis=axis)
    observer = create_observer(name, spec)
    for _ in range(3):
        observer.update(torch.randn(4, 6, 10) * 2)
    lo, hi = observer.range()
    assert lo.shape == hi.shape == ((1,) if axis is None else (4,))
    assert torch.all(lo < 0) and torch.all(hi > 0) and torch.all(hi <= 2 * 6)
    scale, _ = observer.qparams()
    assert torch.all(scale > 0)


@pytest.mark.parametrize("name", ["percentile", "mse", "entropy"])
def test_clipping_observers_clip_a_heavy_tail(name):
    x = torch.cat([torch.rand(100_000), torch.tensor([50.0])])  # one outlier
    spec = QuantSpec(4, symmetric=False)
    clip = create_observer(name, spec)
    plain = create_observer("minmax", spec)
    clip.update(x)
    plain.update(x)
    assert float(clip.range()[1]) < 10.0 < float(plain.range()[1])
    body = x[:-1]
    mse = {}
    for key, obs in (("clip", clip), ("plain", plain)):
        scale, zp = obs.qparams()
        mse[key] = float((fake_quantize(body, scale, zp, spec) - body).pow(2).mean())
    assert mse["clip"] < mse["plain"]


def test_moving_average_follows_slowly():
    observer = create_observer("moving_average_minmax", QuantSpec(8), momentum=0.5)
    observer.update(torch.tensor([0.0, 1.0]))
    observer.update(torch.tensor([0.0, 3.0]))
    assert float(observer.range()[1]) == pytest.approx(2.0)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 8.0])
def test_bad_bits_rejected(bits):
    with pytest.raises(ConfigError, match="bit width"):
        QuantConfig(weight_bits=bits)
    with pytest.raises(ConfigError, match="bit width"):
        QuantConfig(activation_bits=bits)


def test_unknown_observer_lists_choices():
    with pytest.raises(ConfigError, match="minmax"):
        QuantConfig(observer="kl")


def test_ste_gradient_passes_inside_and_stops_outside():
    spec = QuantSpec(8, symmetric=False)
    x = torch.tensor([0.5, 2.0, -3.0], requires_grad=True)
    scale, zp = qparams_from_range(torch.tensor(-1.0), torch.tensor(1.0), spec)
    fake_quantize(x, scale, zp, spec).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 0.0]
