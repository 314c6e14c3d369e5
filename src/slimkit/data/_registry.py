"""Datasets by name, so the CLI and recipes can say ``--data mnist``: each name builds a :class:`DataBundle`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from slimkit._errors import DataError
from slimkit._registry import Registry
from slimkit.data._augment import create_augment
from slimkit.data._digits import digits_tensors
from slimkit.data._loader import TensorLoader
from slimkit.data._mnist import mnist_tensors


@dataclass
class DataBundle:
    """Loaders for one dataset and what a model needs to know about it.

    ``calibration`` is a small, fixed, un-augmented slice of the training data for calibration and reconstruction.
    ``task`` is "classification" or "segmentation" (scored by mIoU).
    """

    name: str
    train: Iterable
    valid: Iterable | None
    test: Iterable
    calibration: Iterable
    input_shape: tuple[int, ...]
    num_classes: int
    task: str = "classification"

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A zero tensor of the dataset's input shape (for tracing and profiling)."""
        return torch.zeros(batch, *self.input_shape)


DATASETS: Registry[Callable[..., DataBundle]] = Registry("dataset")


def _bundle(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor] | None,
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    batch_size: int,
    eval_batch_size: int,
    augment: bool | str,
    seed: int,
    calibration_size: int,
    num_classes: int,
    task: str = "classification",
) -> DataBundle:
    augmentation = create_augment(augment)
    if augmentation is not None:  # an augmentation that cannot handle these images fails here, before any training
        augmentation(train[0][:1], torch.Generator().manual_seed(seed))
    calibration_idx = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(seed))[:calibration_size]
    return DataBundle(
        name=name,
        train=TensorLoader(*train, batch_size, shuffle=True, augment=augmentation, seed=seed),
        valid=TensorLoader(*valid, eval_batch_size) if valid is not None else None,
        test=TensorLoader(*test, eval_batch_size),
        calibration=TensorLoader(train[0][calibration_idx], train[1][calibration_idx], eval_batch_size),
        input_shape=tuple(train[0].shape[1:]),
        num_classes=num_classes,
        task=task,
    )


@DATASETS.register("mnist", input_shape=(1, 28, 28), num_classes=10, task="classification")
def mnist(
    batch_size: int = 128,
    *,
    eval_batch_size: int = 1000,
    augment: bool | str = False,
    train_split: str = "train",
    seed: int = 0,
    calibration_size: int = 1024,
) -> DataBundle:
    """MNIST: train on ``train_split`` ("train" = 50k, "train+valid" = 60k), validate on valid, test on the 10k test.
    ``augment``: ``True``/``"shift"`` (±2 px), ``"elastic+shift"``, ... (see :func:`slimkit.data.create_augment`)."""
    valid = None if train_split == "train+valid" else mnist_tensors("valid")
    return _bundle(
        "mnist", mnist_tensors(train_split), valid, mnist_tensors("test"), batch_size=batch_size,
        eval_batch_size=eval_batch_size, augment=augment, seed=seed, calibration_size=calibration_size,
        num_classes=10,
    )


@DATASETS.register("digits", input_shape=(1, 8, 8), num_classes=10, task="classification")
def digits(
    batch_size: int = 64, *, eval_batch_size: int = 512, augment: bool | str = False, seed: int = 0,
    calibration_size: int = 256,
) -> DataBundle:
    """scikit-learn's 8×8 digits, 80/20 stratified split; the test split doubles as validation."""
    test = digits_tensors("test", seed=seed)
    return _bundle(
        "digits", digits_tensors("train", seed=seed), test, test, batch_size=batch_size,
        eval_batch_size=eval_batch_size, augment=augment, seed=seed, calibration_size=calibration_size,
        num_classes=10,
    )


def image_folder(root: str, *, size: int | tuple[int, int] | None = None, mode: str = "RGB", batch_size: int = 64,
                 eval_batch_size: int = 256, augment: bool | str = False, seed: int = 0,
                 calibration_size: int = 256) -> DataBundle:
    """An image folder as a dataset (see :func:`slimkit.data.load_image_folder` for the layouts and checks)."""
    from slimkit.data._folder import load_image_folder

    if isinstance(size, int):
        size = (size, size)
    loaded = load_image_folder(root, size=size, mode=mode)
    valid = loaded["valid"] if loaded["valid"] is not None else loaded["test"]
    return _bundle(str(root), loaded["train"], valid, loaded["test"], batch_size=batch_size,
                   eval_batch_size=eval_batch_size, augment=augment, seed=seed, calibration_size=calibration_size,
                   num_classes=len(loaded["classes"]))


def is_folder_spec(name: str) -> bool:
    """True when ``name`` is not a registered dataset but an existing folder (``path`` or ``path:size=32``; also
    ``path:size=32,32``, whose options :func:`create_data` refuses naming the folder and the syntax)."""
    from pathlib import Path

    from slimkit._spec import parse_spec

    return name not in DATASETS and (Path(parse_spec(name)[0]).is_dir() or Path(name.partition(":")[0]).is_dir())


def create_data(name: str, **options: Any) -> DataBundle:
    """Build the dataset registered as ``name`` (``mnist``, ``digits``, ...) with the given loader options, or an
    image folder given by its path (``path/to/folder`` or ``path/to/folder:size=32,mode=L``)."""
    if name in DATASETS:
        return DATASETS.get(name)(**options)
    from pathlib import Path

    from slimkit._spec import parse_spec

    target, folder_options = parse_spec(name)
    if Path(target).exists():
        unknown = sorted(set(folder_options) - {"size", "mode"})
        if unknown:
            raise DataError(f"image folder option {', '.join(unknown)} is unknown: use size=HxW (or size=N for "
                            "N×N) and mode=L|RGB")
        size = folder_options.get("size")
        if size is not None:
            try:
                size = tuple(int(v) for v in str(size).split("x"))
            except ValueError:
                size = ()
            if len(size) not in (1, 2) or any(v < 1 or v > 4096 for v in size):
                raise DataError(f"image folder size '{folder_options['size']}' is not a size: write size=32 or "
                                "size=32x48 (H×W, 1 to 4096)")
            size = size * 2 if len(size) == 1 else size  # size=N is N×N
        return image_folder(target, size=size, mode=str(folder_options.get("mode", "RGB")), **options)
    if ":" in name and Path(name.partition(":")[0]).is_dir():  # options that are not key=value,key=value
        raise DataError(f"image folder options '{name.partition(':')[2]}' cannot be read: write key=value pairs "
                        f"separated by commas, e.g. '{name.partition(':')[0]}:size=32x32,mode=L' (size=HxW, or "
                        "size=N for N×N)")
    raise DataError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS.names())}, or give an image folder "
                    "(root/<class>/<image>.png)")


def dataset_names(pattern: str = "*") -> list[str]:
    """Registered dataset names matching a glob."""
    return DATASETS.names(pattern)
