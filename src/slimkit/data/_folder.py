"""Image folders: one sub-folder per class, PNG/JPEG/BMP images read with Pillow.

:class:`ImageFolderDataset` indexes one folder lazily; :func:`load_image_folder` reads a whole dataset folder into
tensors for the fast in-memory loaders (``--data path/to/folder``): ``root/train/<class>/`` and ``root/test/<class>/``
(and ``root/val/<class>/`` if present), or a plain ``root/<class>/`` split 80/10/10 into train/valid/test by a hash
of each file's name, the same on every machine. Every image is checked before any work: an unreadable, truncated or
empty file, a folder named like an image, or images of different sizes (without ``size=``) is a
:class:`~slimkit.DataError` naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from slimkit._errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
#: the decoders Pillow may use on those files: it picks one by the content, not the suffix, and an EPS file named
#: .png would otherwise go to Ghostscript (an external program)
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>``; classes sorted by name; each item is ``(C×H×W float tensor in [0,1], class index)``.

    ``mode`` is a Pillow mode ("L" for grey, "RGB"); ``size`` resizes every image to (H, W) so batches stack.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        mode: str = "RGB",
        size: tuple[int, int] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder '{self.root}' does not exist: pass a folder with one sub-folder per class")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.samples = [
            (path, label)
            for label, name in enumerate(self.classes)
            for path in sorted((self.root / name).rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.samples:
            raise DataError(
                f"image folder '{self.root}' holds no images: expected root/<class>/<image>.png|jpg "
                f"with suffixes {', '.join(sorted(IMAGE_SUFFIXES))}"
            )
        self.mode, self.size, self.transform = mode, size, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            image = image.convert(self.mode)
            if self.size is not None:
                image = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array)
        tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)
        if self.transform is not None:
            tensor = self.transform(tensor)
        return tensor.contiguous(), label


#: folder names accepted for each split of a pre-split image folder
SPLIT_FOLDERS = {"train": ("train",), "valid": ("val", "valid", "validation"), "test": ("test",)}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if path.is_dir():
        raise DataError(f"'{path}' is a folder named like an image: rename or remove it")
    if path.stat().st_size == 0:
        raise DataError(f"image '{path}' is empty (0 bytes): remove it or replace it with the real image")
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            image.load()
            image = image.convert(mode)
            if size is not None:
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"image '{path}' cannot be read ({type(error).__name__}: {error}): it is damaged or not an "
                        "image; remove it or replace it") from None


def _hash_split(name: str) -> str:
    bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def load_image_folder(root: str | os.PathLike, *, size: tuple[int, int] | None = None, mode: str = "RGB",
                      max_bytes: int = 4 * 2**30) -> dict[str, Any]:
    """Read the image dataset at ``root`` into tensors: ``{"train"|"valid"|"test": (N×C×H×W float in [0, 1], labels),
    "classes": [...]}`` (``valid`` may be None). See the module docstring for the layouts and the checks."""
    base = Path(root)
    if base.is_file():
        raise DataError(f"image folder '{base}' is a file: give the folder holding one sub-folder per class")
    if not base.is_dir():
        raise DataError(f"image folder '{base}' does not exist: give a folder with one sub-folder per class")
    if mode not in ("L", "RGB"):
        raise DataError(f"image mode '{mode}' is not supported: use L (grey) or RGB")
    found = {split: next((base / n for n in names if (base / n).is_dir()), None) for split, names in
             SPLIT_FOLDERS.items()}
    if found["train"] is not None:
        if found["test"] is None:
            raise DataError(f"image folder '{base}' has train/ but no test/: add test/<class>/ images")
        classes = sorted(p.name for p in found["train"].iterdir() if p.is_dir())
        files = {split: [(path, name) for name in classes for path in _image_files(folder / name)]
                 if folder is not None else None for split, folder in found.items()}
        for folder in found.values():
            extra = sorted({p.name for p in folder.iterdir() if p.is_dir()} - set(classes)) if folder else []
            if extra:
                raise DataError(f"'{folder}' has classes {', '.join(extra)} that train/ lacks: every split uses "
                                "the classes of train/")
    else:
        classes = sorted(p.name for p in base.iterdir() if p.is_dir())
        everything = [(path, name) for name in classes for path in _image_files(base / name)]
        files = {split: [(p, c) for p, c in everything if _hash_split(p.relative_to(base).as_posix()) == split]
                 for split in SPLIT_FOLDERS}
    if len(classes) < 2:
        raise DataError(f"image folder '{base}' has {len(classes)} class folder(s): a classifier needs at least two "
                        "(root/<class>/<image>.png)")
    for split in ("train", "test"):
        if not files[split]:
            raise DataError(f"image folder '{base}' has no {split} images (suffixes "
                            f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    channels = 1 if mode == "L" else 3
    first = _read_image(files["train"][0][0], mode, size)
    total = sum(len(v) for v in files.values() if v) * first.size * 4
    if total > max_bytes:
        raise DataError(f"image folder '{base}' would take {total / 2**30:.1f} GiB in memory: give a smaller size= "
                        f"or a smaller dataset (the in-memory loader holds at most {max_bytes / 2**30:.0f} GiB)")
    label = {name: i for i, name in enumerate(classes)}
    out: dict[str, Any] = {"classes": classes, "valid": None}
    for split, items in files.items():
        if not items:
            continue
        arrays = []
        for path, _ in items:
            array = _read_image(path, mode, size)
            if array.shape != first.shape:
                raise DataError(f"images differ in size: '{files['train'][0][0]}' is "
                                f"{first.shape[1]}×{first.shape[0]}, '{path}' is {array.shape[1]}×{array.shape[0]}: "
                                "resize them, or give the folder as "
                                f"'{base}:size=HxW' (e.g. size=32x32, or size=32 for 32×32) so every image "
                                "is resized")
            arrays.append(array)
        x = torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0)
        x = x.unsqueeze(1) if channels == 1 else x.permute(0, 3, 1, 2)
        out[split] = (x.contiguous(), torch.tensor([label[name] for _, name in items], dtype=torch.long))
    return out
