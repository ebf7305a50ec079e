"""A finished run's training images, read again from its data settings without training
anything (for the suspect-label gallery, `asymco issues RUN --html`).

Image files (folder, CSV, web, Food-101N runs) are opened by the `path` column of
`label_issues.csv`. Arrays (CIFAR, digits, your .npz) are read again from the run's source:
`index` is the sample's position in that source's training images as the user gave them (a
seeded subset keeps the original positions; a held-out test split maps back through
`Source.train_ids`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from asymco.config import DataConfig
from asymco.data.datasets import FILE_DATASETS, load_dataset
from asymco.errors import UserError
from asymco.untrusted import decoding


def array_image(pixels: np.ndarray) -> Image.Image:
    """A (H, W, C) uint8 array with 1 or 3 channels as a PIL image."""
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def open_file_image(path: str) -> Image.Image:
    """An image file, decoded and turned upright (EXIF orientation), or one `UserError`."""
    if not path:
        raise UserError(
            "label_issues.csv names no image file for a sample of this image-file run; "
            "is the file damaged?"
        )
    if not Path(path).is_file():
        raise UserError(
            f"the training image {path} is gone; the gallery shows the run's images from "
            "where it was trained"
        )
    with decoding(path, "the training image"), Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        image.load()
    return image


def training_images(data: DataConfig, indices: list[int], paths: list[str]) -> list[Image.Image]:
    """The training images of the samples `indices` (with their `paths`; empty for arrays) of a
    run whose data settings are `data`, read again from where the run found them.

    Raises:
        asymco.errors.UserError: The data cannot be read (moved, deleted, changed since the run).
    """
    if data.dataset in FILE_DATASETS:
        return [open_file_image(path) for path in paths]
    images, train_ids = _source_images(data)
    ids = np.arange(len(images)) if train_ids is None else np.asarray(train_ids)
    row_of = {int(i): row for row, i in enumerate(ids)}
    missing = [i for i in indices if i not in row_of]
    if missing:
        raise UserError(
            f"sample {missing[0]} of label_issues.csv is not among the {len(images)} training "
            f"images of {data.root or data.dataset}; has the data changed since the run?"
        )
    return [array_image(images[row_of[i]]) for i in indices]


def _source_images(data: DataConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """The source's training images and, for a held-out split, their original positions."""
    root = Path(data.root).expanduser() if data.root else None
    if root is not None and not root.exists():
        raise UserError(
            f"the run's data {root} is gone; the gallery shows the run's images from where "
            "it was trained"
        )
    try:  # never download: the images must be the ones the run trained on
        source = load_dataset(replace(data, download=False))
    except UserError as err:
        raise UserError(f"cannot read the run's training images again: {err}") from None
    return source.x_train, source.train_ids
