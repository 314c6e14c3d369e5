import math

import pytest
import torch

from slimkit._errors import ConfigError
from slimkit.data import augment_names, create_augment, create_data, elastic_distortion
from slimkit.data._augment import _gaussian_kernel, _smooth


def _ramps(n: int, h: int = 28, w: int = 28) -> torch.Tensor:
    """Channel 0 holds x + 1, channel 1 holds y + 1: bilinear resampling of a linear ramp is exact, so a warped ramp
    minus the ramp is the displacement itself (in pixels); the +1 tells sampled pixels from zero fill."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack((xs + 1, ys + 1)).expand(n, 2, h, w).contiguous()


def test_registry_names_both_augmentations():
    assert augment_names() == ["elastic", "shift"]


def test_elastic_with_zero_alpha_is_the_identity():
    images = torch.rand(4, 1, 28, 28)
    out = elastic_distortion(alpha=0.0)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_smoothing_keeps_a_constant_field_constant():
    kernel = _gaussian_kernel(4.0)
    assert len(kernel) == 25 and math.isclose(float(kernel.sum()), 1.0, rel_tol=1e-6)
    torch.testing.assert_close(_smooth(torch.full((2, 1, 28, 28), 0.7), kernel), torch.full((2, 1, 28, 28), 0.7))


def test_elastic_displacements_are_in_pixels_with_the_expected_spread():
    """A uniform[-1, 1] field blurred by a normalised Gaussian has variance (1/3)·(Σk²)² (separable kernel), so
    with Simard et al.'s σ=4, α=34 a pixel moves by 34·sqrt(that) ≈ 1.38 px (standard deviation) on each axis."""
    kernel = _gaussian_kernel(4.0)
    expected_std = 34.0 * math.sqrt(float((kernel**2).sum()) ** 2 / 3)
    assert 1.3 < expected_std < 1.45
    images = _ramps(64)
    out = elastic_distortion(34.0, 4.0)(images, torch.Generator().manual_seed(0))
    inner = (slice(None), slice(8, 20), slice(8, 20))  # far enough from the border that nothing samples zero fill
    for axis in (0, 1):
        moved = (out[:, axis] - images[:, axis])[inner]
        assert abs(float(moved.mean())) < 0.25
        assert float(moved.std()) == pytest.approx(expected_std, rel=0.15)
    # Smooth: neighbouring pixels move almost together (an unsmoothed field would make them independent).
    dx = out[:, 0] - images[:, 0]
    neighbour = torch.corrcoef(torch.stack((dx[:, 8:20, 8:19].flatten(), dx[:, 8:20, 9:20].flatten())))[0, 1]
    assert neighbour > 0.95


def test_augmentations_are_deterministic_per_generator():
    images = torch.rand(8, 1, 28, 28)
    augment = create_augment("elastic+shift")
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    c = augment(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_specs_parse_options_and_chains():
    assert create_augment(False) is None and create_augment(None) is None
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 14, 14] = 1.0
    moved = create_augment(True)(image, torch.Generator().manual_seed(0))
    assert moved.sum() == 1.0  # True means the ±2 px shift
    far = create_augment("shift:max_shift=5")
    offsets = set()
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        r, c = (far(image, generator)[0, 0] == 1).nonzero()[0].tolist()
        offsets.add(max(abs(r - 14), abs(c - 14)))
    assert max(offsets) == 5
    out = create_augment("elastic:alpha=20,sigma=5+shift")(torch.rand(2, 1, 28, 28), torch.Generator())
    assert out.shape == (2, 1, 28, 28)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("elstic", "unknown augmentation 'elstic': choose one of elastic, shift"),
        ("elastic:beta=3", "augmentation 'elastic:beta=3' has an unknown option"),
        ("elastic:sigma=0", "sigma must be > 0"),
        ("shift:max_shift=1.5", "whole number of pixels"),
        (3, "augment must be true/false or a name"),
    ],
)
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        create_augment(spec)


def test_elastic_refuses_images_smaller_than_its_kernel():
    with pytest.raises(ConfigError, match="too small"):
        elastic_distortion(sigma=4.0)(torch.rand(1, 1, 8, 8), torch.Generator())


def test_mnist_loader_applies_the_named_augmentation():
    plain = create_data("mnist", batch_size=256)
    warped = create_data("mnist", batch_size=256, augment="elastic")
    x_plain, y_plain = next(iter(plain.train))
    x_warped, y_warped = next(iter(warped.train))
    assert torch.equal(y_plain, y_warped)  # same order: only the images change
    assert not torch.allclose(x_plain, x_warped)
    # A digit keeps its ink on average: the warp stretches some strokes and squeezes others, it does not erase them.
    ratio = x_warped.sum((1, 2, 3)) / x_plain.sum((1, 2, 3))
    assert abs(float(ratio.mean()) - 1) < 0.05 and float(ratio.min()) > 0.5
