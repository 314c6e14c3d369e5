"""Batch augmentations for in-memory image tensors, registered by name so a recipe or the CLI can say
``augment: elastic`` or ``--augment shift``.

An augmentation is a function ``(images N×C×H×W, generator) -> images``: it draws all its randomness from the
generator the :class:`~slimkit.data.TensorLoader` seeds per ``(seed, epoch)``, so an interrupted run resumes with
the same augmented batches. Each works on a whole batch at once (no per-sample Python loop).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from slimkit._errors import ConfigError
from slimkit._registry import Registry
from slimkit._spec import parse_spec

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

AUGMENTS: Registry[Callable[..., Augment]] = Registry("augmentation")


@AUGMENTS.register("shift")
def random_shift(max_shift: int = 2) -> Augment:
    """Translate each image by a random whole number of pixels in [-max_shift, max_shift] on both axes, zero fill.

    Hinton et al. (2015) and Srivastava et al. (2014) jitter MNIST inputs by up to 2 pixels this way.
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ConfigError(f"shift: max_shift must be a whole number of pixels ≥ 0, got {max_shift!r}")

    def shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = images.shape
        offsets = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
        padded = F.pad(images, (max_shift,) * 4)
        out = torch.empty_like(images)
        # Group samples by offset: at most (2k+1)² slices instead of one per sample.
        keys = (offsets[:, 0] + max_shift) * (2 * max_shift + 1) + (offsets[:, 1] + max_shift)
        for key in keys.unique().tolist():
            dy, dx = divmod(key, 2 * max_shift + 1)
            idx = (keys == key).nonzero(as_tuple=True)[0]
            out[idx] = padded[idx, :, dy : dy + h, dx : dx + w]
        return out

    return shift


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian cut at ⌈3σ⌉ pixels each side (its radius is ``(len(kernel) - 1) // 2``)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _finite(name: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else "≥ 0"
        raise ConfigError(f"elastic: {name} must be a finite number {bound} (pixels), got {value!r}")
    return float(value)


def _smooth(fields: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of N×1×H×W fields (reflected borders), two 1-D passes instead of one 2-D one."""
    radius = (len(kernel) - 1) // 2
    fields = F.conv2d(F.pad(fields, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(fields, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))


@AUGMENTS.register("elastic")
def elastic_distortion(alpha: float = 34.0, sigma: float = 4.0) -> Augment:
    """Elastic distortion (Simard, Steinkraus & Platt 2003, §2): every pixel moves by a random displacement field,
    uniform in [-1, 1] per pixel and axis, smoothed by a Gaussian of width ``sigma`` pixels and scaled by ``alpha``
    pixels; the image is resampled bilinearly. Defaults are the paper's for 28×28 MNIST (σ=4, α=34), where it took
    a 2-layer MLP from 1.6% to 0.7% test error. The Gaussian is cut at ⌈3σ⌉ pixels, which must be less than the
    image's side (σ ≤ 9 for 28×28).
    """
    alpha, sigma = _finite("alpha", alpha, positive=False), _finite("sigma", sigma, positive=True)
    kernel = _gaussian_kernel(sigma)
    radius = (len(kernel) - 1) // 2

    def distort(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if images.dim() != 4 or not images.is_floating_point():
            raise ConfigError(f"elastic distortion needs float N×C×H×W images, got {images.dtype} of shape "
                              f"{tuple(images.shape)}")
        n, _, h, w = images.shape
        if min(h, w) <= radius:
            raise ConfigError(f"elastic: {h}×{w} images are too small for sigma={sigma} (the blur reaches "
                              f"{radius} px): use sigma ≤ {(min(h, w) - 1) / 3:.3g}")
        raw = torch.rand(n * 2, 1, h, w, generator=generator, dtype=images.dtype) * 2 - 1
        dx, dy = (alpha * _smooth(raw, kernel.to(images.dtype))).view(n, 2, h, w).unbind(1)
        # grid_sample works in [-1, 1] coordinates (align_corners=True: the outermost pixel centres are ±1).
        ys = torch.linspace(-1, 1, h, dtype=images.dtype).view(1, h, 1)
        xs = torch.linspace(-1, 1, w, dtype=images.dtype).view(1, 1, w)
        grid = torch.stack((xs + dx * (2 / max(w - 1, 1)), ys + dy * (2 / max(h - 1, 1))), dim=-1)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    return distort


def compose(*augments: Augment) -> Augment:
    """Apply ``augments`` in order, drawing from the same generator."""

    def composed(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for augment in augments:
            images = augment(images, generator)
        return images

    return composed


def create_augment(spec: bool | str | None) -> Augment | None:
    """An augmentation from a spec: ``True`` / ``"shift"`` (±2 px), ``"elastic"``, options as
    ``"elastic:alpha=34,sigma=4"``, several in order joined by ``+`` (``"elastic+shift"``); ``False``/``None``: none."""
    if spec is None or spec is False or spec == "":
        return None
    if spec is True:
        spec = "shift"
    if not isinstance(spec, str):
        raise ConfigError(f"augment must be true/false or a name like 'shift' or 'elastic+shift', got {spec!r}")
    parts: list[Augment] = []
    for item in spec.split("+"):
        name, options = parse_spec(item.strip())
        factory = AUGMENTS.get(name)
        signature = inspect.signature(factory)
        try:
            signature.bind(**options)
        except TypeError:
            accepted = list(signature.parameters)
            raise ConfigError(f"augmentation '{item.strip()}' has an unknown option: '{name}' takes "
                              f"{', '.join(accepted)} (e.g. '{name}:{accepted[0]}=...')") from None
        parts.append(factory(**options))
    return parts[0] if len(parts) == 1 else compose(*parts)


def augment_names() -> list[str]:
    """Registered augmentation names."""
    return AUGMENTS.names()

