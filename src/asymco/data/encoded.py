"""Images held as encoded bytes (a PNG or JPEG file's contents) instead of files on disk, as
Hugging Face datasets and Parquet tables store them.

An `ImageBlob` stands wherever an image path may stand (`FolderSplit.paths`, a `Source` of
files, `NoisyData.paths`): the loaders decode it in DataLoader workers exactly as they decode a
file, and it prints as its name (`train.parquet#17`), so messages and label_issues.csv name the
row it came from.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
from PIL import Image


class ImageBlob(bytes):
    """An encoded image's bytes, with the `name` it is shown by and its `row` in its table."""

    name: str
    row: int

    def __new__(cls, data: bytes, name: str, row: int) -> ImageBlob:
        blob = super().__new__(cls, data)
        blob.name, blob.row = name, row
        return blob

    def __reduce__(self) -> tuple:  # DataLoader workers under spawn receive it pickled
        return ImageBlob, (bytes(self), self.name, self.row)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"ImageBlob({self.name!r}, {len(self)} bytes)"


def open_image(ref: str | ImageBlob) -> Image.Image:
    """`Image.open` of an image path or an `ImageBlob` (lazy: reads the header only)."""
    return Image.open(io.BytesIO(ref)) if isinstance(ref, ImageBlob) else Image.open(ref)


def image_refs(items: Iterable[str | ImageBlob] | np.ndarray) -> np.ndarray:
    """(N,) image references: a fixed-width str array for paths (workers share it cheaply), an
    object array once any of them is an `ImageBlob`."""
    if isinstance(items, np.ndarray) and items.dtype != object:
        return items.astype(np.str_).reshape(-1)
    items = list(np.asarray(items, dtype=object).reshape(-1))
    if any(isinstance(item, ImageBlob) for item in items):
        refs = np.empty(len(items), dtype=object)
        refs[:] = items  # element by element: numpy would otherwise split the bytes
        return refs
    return np.asarray([str(item) for item in items], dtype=np.str_)
