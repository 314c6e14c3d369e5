import re

import numpy as np
import pytest
from PIL import Image

from slimkit import DataError
from slimkit.data import ImageFolderDataset, create_data, digits_tensors, is_folder_spec


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


def _folder(root, sizes=((6, 5),) * 3, classes=("cat", "dog"), split=None):
    for label, name in enumerate(classes):
        folder = root / split / name if split else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(np.full((h, w, 3), 40 * label + i, dtype=np.uint8)).save(folder / f"{name}{i}.png")


def test_a_pre_split_folder_becomes_a_dataset(tmp_path):
    _folder(tmp_path, split="train")
    _folder(tmp_path, sizes=((6, 5),), split="test")
    bundle = create_data(str(tmp_path))
    assert bundle.num_classes == 2 and bundle.input_shape == (3, 6, 5)
    assert len(bundle.train.inputs) == 6 and len(bundle.test.inputs) == 2
    assert bundle.train.targets.tolist() == [0, 0, 0, 1, 1, 1]
    grey = create_data(f"{tmp_path}:size=4x4,mode=L")
    assert grey.input_shape == (1, 4, 4)


def test_a_flat_folder_is_split_by_file_name(tmp_path):
    _folder(tmp_path, sizes=((4, 4),) * 30)
    bundle = create_data(str(tmp_path))
    sizes = [len(bundle.train.inputs), len(bundle.valid.inputs), len(bundle.test.inputs)]
    assert sum(sizes) == 60 and all(sizes) and sizes == [len(create_data(str(tmp_path)).train.inputs), *sizes[1:]]


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "train/cat/bad.png").write_bytes(b""), "is empty"),
    (lambda f: (f / "train/cat/bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage"), "cannot be read"),
    (lambda f: (f / "train/dog/dog0.png").write_bytes((f / "train/dog/dog0.png").read_bytes()[:40]), "cannot be read"),
    (lambda f: (f / "train/cat/folder.png").mkdir(), "folder named like an image"),
    (lambda f: Image.fromarray(np.zeros((9, 9), np.uint8)).save(f / "train/cat/big.png"), "size=HxW"),
    (lambda f: (f / "test/cow").mkdir(), "classes cow"),
])
def test_a_damaged_folder_is_named_before_any_work(tmp_path, damage, message):
    _folder(tmp_path, split="train")
    _folder(tmp_path, sizes=((6, 5),), split="test")
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        create_data(str(tmp_path))


def test_images_of_different_sizes_load_with_the_size_the_hint_names(tmp_path):
    """The error for images of different sizes names ``size=``: ``size=N`` is N×N and ``size=HxW`` is H×W."""
    _folder(tmp_path, sizes=((6, 5), (7, 5), (9, 4)), split="train")
    _folder(tmp_path, sizes=((8, 8),), split="test")
    with pytest.raises(DataError, match=re.escape(f"'{tmp_path}:size=HxW' (e.g. size=32x32, or size=32 for 32×32)")):
        create_data(str(tmp_path))
    assert create_data(f"{tmp_path}:size=4").input_shape == (3, 4, 4)
    assert create_data(f"{tmp_path}:size=4x6").input_shape == (3, 4, 6)
    assert is_folder_spec(f"{tmp_path}:size=4,4")  # so a recipe hands it to create_data, which names the syntax
    with pytest.raises(DataError, match=r"options 'size=4,4' cannot be read: .*size=32x32"):  # a comma splits options
        create_data(f"{tmp_path}:size=4,4")
    with pytest.raises(DataError, match="option sz is unknown: use size=HxW"):
        create_data(f"{tmp_path}:sz=4")


def test_folder_paths_that_are_not_folders(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        create_data(str(tmp_path / "file.txt"))
    with pytest.raises(DataError, match="unknown dataset"):
        create_data(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="not a size"):
        create_data(f"{tmp_path}:size=0")


def test_an_image_file_in_another_format_never_reaches_an_external_decoder(tmp_path, monkeypatch):
    """Pillow picks a decoder by a file's content: an EPS file named .png would be rendered by Ghostscript (an
    external program). slimkit decodes only the formats its suffixes name."""
    from PIL import EpsImagePlugin

    called = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: called.append(a) or (_ for _ in ()).throw(
        OSError("no ghostscript in this test")))
    _folder(tmp_path, split="train")
    _folder(tmp_path, sizes=((6, 5),), split="test")
    (tmp_path / "train/cat/page.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 5 6\nshowpage\n")
    with pytest.raises(DataError, match="cannot be read"):
        create_data(str(tmp_path))
    assert called == []
