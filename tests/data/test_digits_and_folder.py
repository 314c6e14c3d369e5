import numpy as np
import pytest
from PIL import Image

from slimkit import DataError
from slimkit.data import ImageFolderDataset, create_data, digits_tensors


def test_digits_split_is_stratified_and_complete():
    xtr, _ytr = digits_tensors("train")
    xte, _yte = digits_tensors("test")
    assert xtr.shape[1:] == (1, 8, 8) and len(xtr) + len(xte) == 1797
    assert float(xtr.max()) == 1.0
    bundle = create_data("digits")
    assert bundle.input_shape == (1, 8, 8) and bundle.num_classes == 10


def test_image_folder_reads_classes_from_subfolders(tmp_path):
    for label, value in (("cat", 0), ("dog", 255)):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(np.full((6, 5), value, dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    dataset = ImageFolderDataset(tmp_path, mode="L")
    assert dataset.classes == ["cat", "dog"] and len(dataset) == 6
    image, label = dataset[5]
    assert image.shape == (1, 6, 5) and label == 1 and float(image.mean()) == 1.0
    rgb, _ = ImageFolderDataset(tmp_path, mode="RGB", size=(4, 4))[0]
    assert rgb.shape == (3, 4, 4)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataset(tmp_path)
