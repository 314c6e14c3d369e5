"""scikit-learn's 8×8 handwritten digits (1,797 images), as a second small real dataset."""

from __future__ import annotations

import torch

from slimkit._errors import DataError

SPLITS = ("train", "test")


def digits_tensors(
    split: str = "train", test_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``N×1×8×8`` scaled to [0, 1] and labels, split deterministically (stratified) into train/test."""
    if split not in SPLITS:
        raise DataError(f"unknown digits split '{split}': use 'train' or 'test'")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from error
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    idx = torch.from_numpy(train_idx if split == "train" else test_idx)
    return x[idx], y[idx]
