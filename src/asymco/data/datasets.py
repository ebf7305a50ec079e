"""One entry point from a `DataConfig` to a `Source`: the paper's sets and your own data.

Own data comes as an ImageFolder tree, a CSV of `path,label` rows or an .npz of arrays; without
a test split a seeded (stratified where possible) share is held out. The web sets and
Food-101N have their own layouts (act-spec C.2, C.3). Image files are checked once up front,
so a corrupt file is reported by path before training starts.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from asymco.config import DataConfig
from asymco.data.folders import keep_good_images
from asymco.data.layouts import (
    FolderSplit,
    check_split,
    csv_dataset,
    food101n,
    scan_image_folder,
    web_dataset,
)
from asymco.data.sources import Source, default_root, load_source
from asymco.errors import UserError

logger = logging.getLogger(__name__)

FILE_DATASETS = ("folder", "csv", "web", "food101n")


def load_dataset(data: DataConfig, *, workers: int = 0) -> Source:
    """The train and test images and labels `data` describes."""
    if data.dataset in ("cifar10", "cifar100", "digits"):
        return load_source(
            data.dataset,
            root=data.root,
            download=data.download,
            seed=data.subset_seed,
            test_fraction=data.digits_test_fraction,
        )
    if data.root is None:
        how = (
            "--data-dir DIR"
            if data.dataset in ("web", "food101n")
            else f"--data {data.dataset}:PATH"
        )
        raise UserError(f"data.dataset={data.dataset} needs to know where the data is: pass {how}")
    root = Path(data.root).expanduser()
    if data.dataset == "npz":
        return _own_npz(root, data)
    if data.dataset == "web":
        train, test = web_dataset(root)
        clean_known = False  # web labels are noisy, with no ground truth
    elif data.dataset == "food101n":
        test_root = Path(data.test_root).expanduser() if data.test_root else None
        train, test = food101n(root, test_root)
        clean_known = False
    else:
        train = _own_split(data.dataset, root)
        if data.test_root:
            test = _own_split(data.dataset, Path(data.test_root).expanduser())
            if test.classes != train.classes:
                raise UserError(
                    f"the test classes ({', '.join(test.classes[:5])}, ...) differ "
                    f"from the training classes ({', '.join(train.classes[:5])}, ...)"
                )
        else:
            train, test = _hold_out(train, data)
        clean_known = False  # a user's labels are what we are here to check
    check = {"workers": workers, "on_bad_image": data.on_bad_image}
    train = keep_good_images(train, name="training", **check)
    test = keep_good_images(test, name="test", **check)
    return Source(
        train.paths,
        train.labels,
        test.paths,
        test.labels,
        train.classes,
        origin=f"{data.dataset} {root}",
        clean_known=clean_known,
    )


def _own_split(kind: str, path: Path) -> FolderSplit:
    split = scan_image_folder(path) if kind == "folder" else csv_dataset(path)
    check_split(split, name=str(path))
    return split


def _hold_out(split: FolderSplit, data: DataConfig) -> tuple[FolderSplit, FolderSplit]:
    train, test = _split_indices(split.labels, data.holdout_fraction, data.subset_seed)
    logger.info(
        "no test split given: holding out %d of %d images (data.holdout_fraction=%g)",
        len(test),
        len(split.labels),
        data.holdout_fraction,
    )
    keep = np.zeros(len(split.labels), dtype=bool)
    keep[train] = True
    return split.select(keep), split.select(~keep)


def _split_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Seeded hold-out; stratified when every class has at least two samples."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    if stratify is None:
        logger.warning("a class has a single image: the held-out split is not stratified")
    train, test = train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


def _own_npz(path: Path, data: DataConfig) -> Source:
    """x_train (N, H, W, C) uint8 and y_train (N,) integers; optional x_test/y_test and
    class_names (a string array)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, AttributeError) as err:
        raise UserError(f"{path} is not a readable .npz archive ({err})") from None
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise UserError(f"{path} lacks the array {key}")
    x, y = arrays["x_train"], arrays["y_train"]
    if x.ndim == 3:
        x = x[..., None]  # (N, H, W) grayscale
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise UserError(
            f"{path}: x_train must be uint8 images (N, H, W) or (N, H, W, C) with "
            f"1 or 3 channels, got {x.dtype} {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise UserError(f"{path}: y_train must be {len(x)} non-negative integer labels")
    num_classes = int(y.max()) + 1
    names = arrays.get("class_names")
    classes = [str(c) for c in names] if names is not None else [str(i) for i in range(num_classes)]
    ids = None
    if len(classes) < num_classes or num_classes < 2:
        raise UserError(
            f"{path}: {num_classes} classes in y_train but {len(classes)} class "
            "names; at least 2 classes are needed"
        )
    if "x_test" in arrays and "y_test" in arrays:
        x_test, y_test = arrays["x_test"], arrays["y_test"]
        if x_test.ndim == 3:
            x_test = x_test[..., None]
        if x_test.shape[1:] != x.shape[1:] or len(y_test) != len(x_test):
            raise UserError(f"{path}: x_test/y_test do not match x_train's image shape")
        if len(y_test) and (y_test.min() < 0 or y_test.max() >= len(classes)):
            raise UserError(f"{path}: y_test must lie in [0, {len(classes)})")
    else:
        train, test = _split_indices(y.astype(np.int64), data.holdout_fraction, data.subset_seed)
        x, x_test, y, y_test = x[train], x[test], y[train], y[test]
        ids = train
    return Source(
        x,
        y.astype(np.int64),
        x_test,
        np.asarray(y_test, dtype=np.int64),
        classes,
        origin=f"npz {path}",
        clean_known=False,
        train_ids=ids,
    )


def find_labels_file(root: str | None, dataset: str) -> Path:
    """The CIFAR-N label file in the data root: the official .pt or the combined .npz."""
    folder = Path(root).expanduser() if root else default_root()
    official = "CIFAR-100_human.pt" if dataset == "cifar100" else "CIFAR-10_human.pt"
    for name in (official, "cifarn_labels.npz"):
        if (folder / name).is_file():
            return folder / name
    raise UserError(
        f"no CIFAR-N label file ({official} or cifarn_labels.npz) in {folder}; "
        "pass --set noise.labels_file=PATH"
    )
