"""A generic image-folder dataset: one sub-folder per class, PNG/JPEG/BMP images read with Pillow."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from slimkit._errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


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
        with Image.open(path) as image:
            image = image.convert(self.mode)
            if self.size is not None:
                image = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array)
        tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)
        if self.transform is not None:
            tensor = self.transform(tensor)
        return tensor.contiguous(), label
