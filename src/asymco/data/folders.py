"""Image files in training: checking, decoding and augmenting the `FolderSplit`s that
`layouts.py` finds. Each image is decoded with PIL in DataLoader workers (act-spec C.2, C.3):

- train weak: Resize(resize) -> HorizontalFlip -> RandomCrop(size, pad_if_needed) -> uint8
- train strong: the same, independently drawn, plus `RandAugmentUDA` before the uint8 tensor
- test: Resize(resize) -> CenterCrop(size) -> uint8

Unreadable files are found once, up front, by `verify_images` / `keep_good_images`: with
on_bad_image="skip" they are logged and left out, so a DataLoader never meets one; "stop" raises
a `UserError` naming the first. The reference sets `ImageFile.LOAD_TRUNCATED_IMAGES = True`
(truncated JPEGs load, grey-filled); `truncated_ok` keeps that as the default.

Pillow reads LOAD_TRUNCATED_IMAGES from a module global, so decoding here sets it to the chosen
`truncated_ok` in the decoding process (a worker, or the main process with 0 workers).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFile
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torchvision.transforms import functional as TF

from asymco.augment import Normalizer
from asymco.batch import EvalBatches
from asymco.data.encoded import ImageBlob, image_refs, open_image
from asymco.data.layouts import FolderSplit
from asymco.data.loader import WorkerLoader
from asymco.data.sharding import BatchPlan, item_seed
from asymco.errors import UserError
from asymco.randaugment import RandAugmentUDA
from asymco.text import printable

logger = logging.getLogger(__name__)

OnBadImage = Literal["skip", "stop"]


def _problem(path: str | ImageBlob, decode: bool) -> str | None:
    """None if `path` (or encoded image) decodes to RGB, else why not."""
    try:
        with open_image(path) as img:
            if decode:
                # JPEG only: decode at 1/8 scale. Every byte of the stream is still read, so
                # truncation and corrupt data show up, at a fraction of the full decode's cost.
                img.draft(img.mode, (1, 1))
                img.convert("RGB")
    except Exception as exc:  # whatever PIL raises, the file cannot be used
        return f"{type(exc).__name__}: {exc}"
    return None


def verify_images(
    paths: Sequence[str] | np.ndarray,
    *,
    workers: int = 0,
    on_bad_image: OnBadImage = "skip",
    truncated_ok: bool = True,
    decode: bool = True,
) -> np.ndarray:
    """Open (and with `decode`, decode) every image once, before training.

    Args:
        paths: Image paths.
        workers: Threads to use (0: in this thread). PIL decodes without holding the GIL, so
            threads scale without pickling anything.
        on_bad_image: "skip" logs each unreadable path and a final count (and raises when no
            image can be read); "stop" raises at the first one in path order.
        truncated_ok: Accept truncated images, as the reference does.
        decode: Also decode the pixel data (finds truncated and corrupt files); False only reads
            the headers (finds missing, empty and non-image files, much faster).

    Returns:
        (N,) bool, True where the image cannot be read.

    Raises:
        UserError: with on_bad_image="stop", naming the first unreadable path; with "skip",
            when not one image can be read.
    """
    if on_bad_image not in ("skip", "stop"):
        raise ValueError(f"on_bad_image must be 'skip' or 'stop', got {on_bad_image!r}")
    ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok  # threads share it: set once, before the pool
    paths = [p if isinstance(p, ImageBlob) else str(p) for p in paths]
    bad = np.zeros(len(paths), dtype=bool)
    chunks = [range(s, min(s + 256, len(paths))) for s in range(0, len(paths), 256)]

    def check(chunk: range) -> list[tuple[int, str]]:
        return [(i, why) for i in chunk if (why := _problem(paths[i], decode)) is not None]

    problems: list[tuple[int, str]] = []
    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    try:
        for found in pool.map(check, chunks) if pool else map(check, chunks):
            for i, why in found:
                if on_bad_image == "stop":
                    raise UserError(
                        f"cannot read image {paths[i]} ({why}); repair or delete it, "
                        "or set on_bad_image to 'skip' to leave unreadable images out"
                    )
                problems.append((i, why))
                bad[i] = True
    finally:
        if pool:  # on "stop", do not wait for the chunks nobody will look at
            pool.shutdown(wait=True, cancel_futures=True)
    _report_unreadable(paths, problems)
    return bad


def _report_unreadable(paths: Sequence[object], problems: list[tuple[int, str]]) -> None:
    """Warn about each image left out and their count; when not one image can be read, that is
    the one sentence to say (whatever else would fail later, e.g. an empty training set)."""
    if problems and len(problems) == len(paths):
        i, why = problems[0]
        raise UserError(
            f"none of the {len(paths)} images can be read (e.g. {paths[i]}: {why}); check that "
            "they are image files that open"
        )
    for i, why in problems:
        logger.warning("leaving out unreadable image %s (%s)", printable(paths[i]), why)
    if problems:
        logger.warning("left out %d of %d images that cannot be read", len(problems), len(paths))


def keep_good_images(
    split: FolderSplit,
    *,
    name: str,
    workers: int = 0,
    on_bad_image: OnBadImage = "skip",
    truncated_ok: bool = True,
    decode: bool = True,
) -> FolderSplit:
    """`split` without the images `verify_images` cannot read (same arguments); the classes stay.

    Warns about classes that lose all their images (their label indices are kept).
    """
    good = ~verify_images(
        split.paths,
        workers=workers,
        on_bad_image=on_bad_image,
        truncated_ok=truncated_ok,
        decode=decode,
    )
    kept = split.select(good)
    counts = np.bincount(kept.labels, minlength=len(kept.classes))
    for c in np.flatnonzero(counts == 0):
        logger.warning(
            "the %s split has no readable images of class %s", name, printable(kept.classes[c])
        )
    return kept


class FolderViewDataset(Dataset):
    """Decodes one image per item and returns (index, views, label).

    In train mode `views` holds one uint8 (3, size, size) image per name in `views` (`weak`:
    flip and crop; `strong`: the same with RandAugment); in test mode it is the one center crop.
    Random draws come from a per-sample RNG seeded from `epoch_seed` and the index, so a seeded
    run repeats its augmentations whichever worker decodes an image, and a resumed run repeats
    them too.

    Args:
        paths: (N,) image paths, or uint8 (N, H, W, C) images held in memory (a user's large
            arrays), which are cropped and resized the same way.
        labels: (N,) int labels.
        train: Train pipeline (flip, random crop) or test pipeline (center crop).
        size: Output side in pixels.
        resize: The shorter side is resized to this before cropping.
        views: The views to draw in train mode; the loader sets it each epoch.
        truncated_ok: Decode truncated images instead of failing on them.
    """

    def __init__(
        self,
        paths: Sequence[str] | np.ndarray,
        labels: Sequence[int] | np.ndarray,
        *,
        train: bool,
        size: int,
        resize: int,
        views: tuple[str, ...] = ("weak", "strong"),
        truncated_ok: bool = True,
    ) -> None:
        if size < 1 or resize < 1:
            raise ValueError(f"size and resize must be positive, got {size} and {resize}")
        in_memory = isinstance(paths, np.ndarray) and paths.ndim == 4
        self.paths = paths if in_memory else image_refs(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.train, self.size, self.resize = train, size, resize
        self.views = views
        self.truncated_ok = truncated_ok
        self.randaugment = RandAugmentUDA()
        self.epoch_seed = 0

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image:
        """The RGB image at `index` (grey, palette, RGBA and CMYK images are converted)."""
        if self.paths.ndim == 4:  # in memory: (H, W, C) uint8
            pixels = self.paths[index]
            return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert(
                "RGB"
            )
        ImageFile.LOAD_TRUNCATED_IMAGES = self.truncated_ok
        path = self.paths[index]
        try:
            with open_image(path if isinstance(path, ImageBlob) else str(path)) as img:
                if img.mode == "P" and "transparency" in img.info:
                    img = img.convert("RGBA")  # PIL warns when a palette with alpha goes to RGB
                return img.convert("RGB")
        except Exception as exc:
            raise UserError(
                f"cannot read image {path} ({type(exc).__name__}: {exc}); check the "
                "images first with on_bad_image set to 'skip' or 'stop'"
            ) from exc

    def _flip_crop(self, img: Image.Image, rng: random.Random) -> Image.Image:
        if rng.random() < 0.5:
            img = TF.hflip(img)
        # RandomCrop(pad_if_needed=True) pads a short side by the whole shortfall on both ends.
        w, h = img.size
        if w < self.size or h < self.size:
            img = TF.pad(img, [max(self.size - w, 0), max(self.size - h, 0)])
            w, h = img.size
        top, left = rng.randint(0, h - self.size), rng.randint(0, w - self.size)
        return TF.crop(img, top, left, self.size, self.size)

    def __getitem__(self, index: int) -> tuple[int, tuple[Tensor, ...], int]:
        img = TF.resize(self.load(index), self.resize)  # int: the shorter side, antialiased
        label = int(self.labels[index])
        if not self.train:
            return index, (TF.pil_to_tensor(TF.center_crop(img, self.size)),), label
        # The views are independent draws from the same decoded image, in order.
        rng = random.Random(item_seed(self.epoch_seed, index))
        views = []
        for name in self.views:
            view = self._flip_crop(img, rng)
            view = self.randaugment(view, rng) if name == "strong" else view
            views.append(TF.pil_to_tensor(view))
        return index, tuple(views), label


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: seed python `random` and numpy from the worker's torch seed,
    for any library code that draws from them (our own draws use per-sample seeds)."""
    info = get_worker_info()
    if info is None:
        return
    random.seed(info.seed)
    np.random.seed(info.seed % 2**32)


class FolderLoader(WorkerLoader):
    """Same interface as `ArrayLoader`: `epoch(...)` yields device `Batch`es.

    Args:
        paths, labels: The training split (verify it first: a bad image stops the epoch).
        plan: Which samples each step holds (and the seeds of their augmentations).
        size, resize: Crop side and shorter-side resize, as `FolderViewDataset`.
        normalize: uint8 -> float on the device.
        device: Where batches go.
        workers: DataLoader worker processes (0: decode in this process).
        truncated_ok: Decode truncated images.
    """

    worker_init_fn = staticmethod(seed_worker)

    def __init__(
        self,
        paths: Sequence[str] | np.ndarray,
        labels: Sequence[int] | np.ndarray,
        *,
        plan: BatchPlan,
        size: int,
        resize: int,
        normalize: Normalizer,
        device: torch.device,
        workers: int,
        truncated_ok: bool = True,
    ) -> None:
        super().__init__(
            FolderViewDataset(
                paths, labels, train=True, size=size, resize=resize, truncated_ok=truncated_ok
            ),
            plan=plan,
            normalize=normalize,
            device=device,
            workers=workers,
        )


def folder_test_batches(
    paths: Sequence[str] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    size: int,
    resize: int,
    batch_size: int,
    workers: int,
    normalize: Normalizer,
    device: torch.device,
    truncated_ok: bool = True,
) -> EvalBatches:
    """Evaluation batches: each call of the result makes a fresh in-order pass yielding
    (normalised (B, 3, size, size) images, (B,) int64 labels) on `device`."""
    dataset = FolderViewDataset(
        paths,
        labels,
        train=False,
        size=size,
        resize=resize,
        truncated_ok=truncated_ok,
    )

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )
        for _, (images,), label in loader:
            yield (
                normalize(images.to(device, non_blocking=True)),
                label.to(device, non_blocking=True),
            )

    return batches
