"""A semantic-segmentation dataset derived from real MNIST digits ("mnist-seg").

Each sample is a ``canvas×canvas`` image with a few MNIST digits pasted at random positions (pixel-wise maximum where
they overlap) and a per-pixel label map: 0 for background, ``k + 1`` for pixels of a digit of class ``k`` whose
stroke intensity is > 0.5. Faint anti-aliased edge pixels (0.1 < intensity ≤ 0.5) are labelled ``IGNORE_INDEX``
(255) so the metric scores neither class there. Where digits overlap, the one pasted last owns the stroke pixels.
Canvases are generated from MNIST's train / valid / test digits respectively, so no test digit is seen in training,
and are fully determined by ``seed``. Scored by mIoU: ``evaluate(model, loader, metric="miou")``.
"""

from __future__ import annotations

import numpy as np
import torch

from slimkit._errors import ConfigError
from slimkit.data._mnist import mnist_tensors
from slimkit.data._registry import DATASETS, DataBundle, _bundle

IGNORE_INDEX = 255
NUM_SEG_CLASSES = 11  # background + 10 digits
STROKE_THRESHOLD = 0.5
FAINT_THRESHOLD = 0.1


def make_segmentation_canvases(
    images: torch.Tensor, labels: torch.Tensor, count: int, *, canvas: int = 64, digits: tuple[int, int] = (2, 4),
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste random digits from ``images`` (N×1×28×28 in [0, 1]) into ``count`` canvases.

    Returns ``(inputs count×1×canvas×canvas float32, targets count×canvas×canvas int64)``; deterministic in ``seed``.
    """
    size = images.shape[-1]
    if canvas < size:
        raise ConfigError(f"canvas {canvas} is smaller than a digit ({size} pixels): use canvas ≥ {size}")
    low, high = digits
    if not 1 <= low <= high:
        raise ConfigError(f"digits must be (min, max) with 1 ≤ min ≤ max, got {digits}")
    rng = np.random.default_rng(seed)
    pixels = images[:, 0].numpy()
    classes = labels.numpy()
    inputs = np.zeros((count, canvas, canvas), np.float32)
    targets = np.zeros((count, canvas, canvas), np.uint8)
    for i in range(count):
        for _ in range(int(rng.integers(low, high + 1))):
            j = int(rng.integers(len(pixels)))
            top, left = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
            digit = pixels[j]
            window = (slice(top, top + size), slice(left, left + size))
            np.maximum(inputs[i][window], digit, out=inputs[i][window])
            target = targets[i][window]
            faint = (digit > FAINT_THRESHOLD) & (digit <= STROKE_THRESHOLD) & (target == 0)
            target[faint] = IGNORE_INDEX
            target[digit > STROKE_THRESHOLD] = classes[j] + 1
    return torch.from_numpy(inputs).unsqueeze(1), torch.from_numpy(targets).long()


@DATASETS.register("mnist-seg", input_shape=(1, 64, 64), num_classes=NUM_SEG_CLASSES, task="segmentation")
def mnist_segmentation(
    batch_size: int = 32,
    *,
    eval_batch_size: int = 200,
    canvas: int = 64,
    digits: tuple[int, int] = (2, 4),
    train_size: int = 5000,
    test_size: int = 1000,
    seed: int = 0,
    calibration_size: int = 256,
    augment: bool = False,
) -> DataBundle:
    """MNIST segmentation canvases: ``train_size`` from MNIST-train digits, ``test_size`` each for valid and test
    (from MNIST's valid and test digits). 11 classes (background + 10 digits), ignore label 255."""
    if augment:
        raise ConfigError("mnist-seg has no augmentation (a shift would have to move the label map too): "
                          "drop --augment; every canvas is already a random placement")
    splits = []
    for offset, (split, count) in enumerate((("train", train_size), ("valid", test_size), ("test", test_size))):
        images, labels = mnist_tensors(split)
        splits.append(make_segmentation_canvases(images, labels, count, canvas=canvas, digits=digits,
                                                 seed=seed * 3 + offset))
    return _bundle(
        "mnist-seg", splits[0], splits[1], splits[2], batch_size=batch_size, eval_batch_size=eval_batch_size,
        augment=False, seed=seed, calibration_size=calibration_size, num_classes=NUM_SEG_CLASSES,
        task="segmentation",
    )
