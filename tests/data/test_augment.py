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


@pytest.mark.parametrize(("spec", "alpha", "sigma"), [("elastic", 34.0, 4.0), ("elastic:alpha=20,sigma=3", 20.0, 3.0)])
def test_elastic_displacements_are_in_pixels_with_the_expected_spread(spec, alpha, sigma):
    """A uniform[-1, 1] field blurred by a normalised Gaussian has variance (1/3)·(Σk²)² (separable kernel), so
    with Simard et al.'s σ=4, α=34 a pixel moves by 34·sqrt(that) ≈ 1.38 px (standard deviation) on each axis."""
    kernel = _gaussian_kernel(sigma)
    expected_std = alpha * math.sqrt(float((kernel**2).sum()) ** 2 / 3)
    if spec == "elastic":
        assert 1.3 < expected_std < 1.45
    images = _ramps(64)
    out = create_augment(spec)(images, torch.Generator().manual_seed(0))
    inner = (slice(None), slice(8, 20), slice(8, 20))  # far enough from the border that nothing samples zero fill
    for axis in (0, 1):
        moved = (out[:, axis] - images[:, axis])[inner]
        assert abs(float(moved.mean())) < 0.25
        assert float(moved.std()) == pytest.approx(expected_std, rel=0.15)
    # Smooth: neighbouring pixels move almost together (an unsmoothed field would make them independent).
    dx = out[:, 0] - images[:, 0]
    neighbour = torch.corrcoef(torch.stack((dx[:, 8:20, 8:19].flatten(), dx[:, 8:20, 9:20].flatten())))[0, 1]
    assert neighbour > 0.9


@pytest.mark.parametrize("name", augment_names())
def test_every_augmentation_keeps_shape_and_dtype_and_follows_its_generator(name):
    images = torch.rand(8, 1, 28, 28, dtype=torch.float64)
    augment = create_augment(name)
    a = augment(images, torch.Generator().manual_seed(3))
    assert a.shape == images.shape and a.dtype == images.dtype
    assert torch.equal(a, augment(images, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, augment(images, torch.Generator().manual_seed(4)))
    assert not torch.equal(a, images)


def test_augmentations_are_deterministic_per_generator():
    images = torch.rand(8, 1, 28, 28)
    augment = create_augment("elastic+shift")
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    c = augment(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _offsets(augment, image: torch.Tensor, draws: int = 200) -> set[tuple[int, int]]:
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(draws):
        r, c = (augment(image, generator)[0, 0] == 1).nonzero()[0].tolist()
        seen.add((r - 14, c - 14))
    return seen


def test_specs_parse_options_and_chains():
    assert create_augment(False) is None and create_augment(None) is None
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 14, 14] = 1.0
    assert _offsets(create_augment(True), image) == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert max(max(abs(dy), abs(dx)) for dy, dx in _offsets(create_augment("shift:max_shift=5"), image)) == 5
    # A chain applies both: the elastic warp alone never moves a whole image by whole pixels, the shift after it does.
    images = _ramps(16)
    chained = create_augment("elastic:alpha=0+shift:max_shift=1")(images, torch.Generator().manual_seed(0))
    moved = (chained - images)[:, :, 4:24, 4:24]
    assert float((moved - moved.round()).abs().max()) < 1e-4  # alpha=0 warps by nothing, up to rounding
    assert set(moved.round().unique().tolist()) <= {-1.0, 0.0, 1.0} and moved.abs().sum() > 0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("elstic", "unknown augmentation 'elstic': choose one of elastic, shift"),
        ("elastic:beta=3", "augmentation 'elastic:beta=3' has an unknown option: 'elastic' takes alpha, sigma"),
        ("elastic:sigma=0", "sigma must be a finite number > 0"),
        ("elastic:sigma=abc", "sigma must be a finite number > 0"),
        ("elastic:sigma=nan", "sigma must be a finite number > 0"),
        ("elastic:alpha=inf", "alpha must be a finite number ≥ 0"),
        ("shift:max_shift=true", "whole number of pixels"),
        ("shift:max_shift=1.5", "whole number of pixels"),
        (3, "augment must be true/false or a name"),
    ],
)
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        create_augment(spec)


def test_elastic_refuses_images_smaller_than_its_kernel_with_the_largest_sigma_that_fits():
    with pytest.raises(ConfigError, match=r"8×8 images are too small for sigma=4.0 .* use sigma ≤ 2.33"):
        elastic_distortion(sigma=4.0)(torch.rand(1, 1, 8, 8), torch.Generator())
    elastic_distortion(sigma=7 / 3)(torch.rand(1, 1, 8, 8), torch.Generator())  # the bound it names works
    with pytest.raises(ConfigError, match="float N×C×H×W"):
        elastic_distortion()(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), torch.Generator())


def test_a_dataset_whose_images_an_augmentation_cannot_take_fails_when_built():
    with pytest.raises(ConfigError, match="too small"):
        create_data("digits", augment="elastic")
    assert create_data("digits", augment="elastic:sigma=2").train.augment is not None


def test_mnist_loader_applies_the_named_augmentation():
    plain = create_data("mnist", batch_size=256)
    warped = create_data("mnist", batch_size=256, augment="elastic")
    x_plain, y_plain = next(iter(plain.train))
    x_warped, y_warped = next(iter(warped.train))
    assert torch.equal(y_plain, y_warped)  # same order: only the images change
    assert float((x_plain - x_warped).abs().amax((1, 2, 3)).min()) > 0.2  # every image changed visibly
    # A digit keeps its ink on average: the warp stretches some strokes and squeezes others, it does not erase them.
    ratio = x_warped.sum((1, 2, 3)) / x_plain.sum((1, 2, 3))
    assert abs(float(ratio.mean()) - 1) < 0.05 and float(ratio.min()) > 0.5
