"""One entry point from a `DataConfig` to a `Source`: the paper's sets and your own data.

Own data comes as an ImageFolder tree, a CSV of `path,label` rows or an .npz of arrays; without
a test split a seeded (stratified where possible) share is held out. The web sets and
Food-101N have their own layouts (act-spec C.2, C.3). Image files are checked once up front,
so a corrupt file is reported by path before training starts.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asymco.config import DataConfig
from asymco.data.arrays import SMALL_SIDE, as_uint8_images, describe_fit, fit_to_side
from asymco.data.folders import keep_good_images
from asymco.data.layouts import (
    MAX_CLASSES,
    FolderSplit,
    check_split,
    csv_dataset,
    food101n,
    scan_image_folder,
    web_dataset,
)
from asymco.data.sources import Source, default_root, load_source
from asymco.data.tables import TABLE_DATASETS, as_arrays, table_splits
from asymco.errors import UserError
from asymco.untrusted import check_arrays, decoding

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
        train, given_test = own_splits(data)
        train, test = (train, given_test) if given_test is not None else _hold_out(train, data)
        clean_known = False  # a user's labels are what we are here to check
    check = {"workers": workers, "on_bad_image": data.on_bad_image}
    train = keep_good_images(train, name="training", **check)
    test = keep_good_images(test, name="test", **check)
    source = Source(
        train.paths,
        train.labels,
        test.paths,
        test.labels,
        train.classes,
        origin=f"{data.dataset} {root}",
        clean_known=clean_known,
    )
    return as_arrays(source, data) if data.dataset in TABLE_DATASETS else source


def own_splits(data: DataConfig) -> tuple[FolderSplit, FolderSplit | None]:
    """The training split of a user's `folder`, `csv`, `hf` or `parquet` data and its test split
    (None without one), both checked, without decoding any image."""
    if data.root is None:
        raise UserError(f"data.dataset={data.dataset} needs --data {data.dataset}:PATH")
    if data.dataset in TABLE_DATASETS:
        return table_splits(data)
    train = _own_split(data.dataset, Path(data.root).expanduser())
    if not data.test_root:
        return train, None
    test = _own_split(data.dataset, Path(data.test_root).expanduser())
    if test.classes != train.classes:
        raise UserError(
            f"the test classes ({', '.join(test.classes[:5])}, ...) differ "
            f"from the training classes ({', '.join(train.classes[:5])}, ...)"
        )
    return train, test


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
    check_holdout(labels, fraction)
    train, test = train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


def check_holdout(labels: np.ndarray, fraction: float) -> None:
    """Refuse, in one sentence, a hold-out of `fraction` of `labels` that scikit-learn cannot
    draw: each side of a stratified split (every class has 2 images or more) needs an image of
    every class, each side of a plain one an image."""
    counts = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
    present = counts[counts > 0]
    classes = len(present) if len(present) and present.min() >= 2 else 1
    n = len(labels)
    held = int(np.ceil(fraction * n))  # scikit-learn's rounding of test_size
    if min(held, n - held) >= classes:
        return
    need = f"{classes} images on each side, one per class" if classes > 1 else "one on each side"
    raise UserError(
        f"holding out data.holdout_fraction={fraction:g} of {n} images keeps {n - held} for "
        f"training and {held} for testing, but the split needs at least {need}; give a test split "
        "(--test), more images, or another data.holdout_fraction"
    )


def _own_npz(path: Path, data: DataConfig) -> Source:
    """x_train (N, H, W[, C]) images and y_train (N,) integers; optional x_test/y_test (or a
    separate `--test` .npz) and class_names (a string array). For the built-in CNNs
    (`data.image_size` up to `SMALL_SIDE`) the images are brought to that square size here;
    larger ones stay as they are, for the image-file route."""
    test_path = Path(data.test_root).expanduser() if data.test_root else None
    own = read_own_npz(path, test_path)
    x, y, x_test, y_test, ids = own.x, own.y, own.x_test, own.y_test, None
    if x_test is None or y_test is None:
        train, test = _split_indices(y, data.holdout_fraction, data.subset_seed)
        x, x_test, y, y_test = x[train], x[test], y[train], y[test]
        ids = train
    origin = f"npz {path}"
    if data.image_size <= SMALL_SIDE:  # the CNN's in-memory route: one square size, up front
        _, height, width, channels = x.shape
        fitted = describe_fit(height, width, channels, data.image_size)
        x, x_test = fit_to_side(x, data.image_size), fit_to_side(x_test, data.image_size)
        origin += f" ({fitted})" if fitted else ""
    return Source(
        x,
        y,
        x_test,
        y_test,
        own.classes,
        origin=origin,
        clean_known=False,
        train_ids=ids,
    )


@dataclass(frozen=True)
class OwnArrays:
    """A user's .npz, checked: uint8 (N, H, W, C) images with C in {1, 3}, int64 labels in
    [0, len(classes))."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: list[str]


def read_own_npz(path: Path, test_path: Path | None = None) -> OwnArrays:
    """Read and check a user's .npz (and its separate test .npz, which holds x_test/y_test or
    x_train/y_train), raising one `UserError` sentence for anything a run could not use."""
    arrays = _read_npz(path)
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise UserError(f"{path} lacks the array {key}; it needs x_train and y_train")
    x = _own_images(path, arrays, "x_train")
    y = _own_labels(path, arrays, "y_train", len(x))
    classes = _own_classes(path, arrays, y)
    if test_path is not None:
        if "x_test" in arrays or "y_test" in arrays:
            raise UserError(
                f"{path} holds a test split (x_test/y_test) and --test names another one "
                f"({test_path}); drop one of them"
            )
        test_arrays = _read_npz(test_path)
        prefix = "test" if "x_test" in test_arrays or "y_test" in test_arrays else "train"
        where = test_path
    else:
        test_arrays, prefix, where = arrays, "test", path
    x_key, y_key = f"x_{prefix}", f"y_{prefix}"
    if (x_key in test_arrays) != (y_key in test_arrays):
        have, lack = (x_key, y_key) if x_key in test_arrays else (y_key, x_key)
        raise UserError(f"{where} has {have} but no {lack}; give both or neither")
    if x_key not in test_arrays:
        if test_path is not None:
            raise UserError(f"the --test file {test_path} lacks x_test and y_test")
        return OwnArrays(x, y, None, None, classes)
    x_test = _own_images(where, test_arrays, x_key)
    if x_test.shape[1:] != x.shape[1:]:
        raise UserError(
            f"{where}: {x_key} images are {x_test.shape[1:]} but the training images are "
            f"{x.shape[1:]}; both splits need the same image shape"
        )
    y_test = _own_labels(where, test_arrays, y_key, len(x_test))
    if int(y_test.max()) >= len(classes):
        raise UserError(
            f"{where}: {y_key} has class {int(y_test.max())} but the training data has only "
            f"{len(classes)} classes (0 to {len(classes) - 1}); add that class's training "
            "images or list it in class_names"
        )
    return OwnArrays(x, y, x_test, y_test, classes)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file; check the .npz path")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not an .npz archive; save the arrays with numpy.savez")
    check_arrays(path, "the .npz archive", _NPZ_FIX)  # declared sizes, before allocating
    with decoding(path, "the .npz archive", _NPZ_FIX):
        return _npz_arrays(path)


_NPZ_FIX = "save the arrays again with numpy.savez"


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except ValueError as err:
        if "allow_pickle" in str(err):  # object arrays: pickled Python objects, never loaded
            raise UserError(
                f"{path} holds object arrays (pickled Python objects), which are not loaded; "
                "save numeric arrays and a string array of class_names"
            ) from None
        raise


def _own_images(path: Path, arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    return as_uint8_images(arrays[key], f"{path}: {key}")


def _own_labels(path: Path, arrays: dict[str, np.ndarray], key: str, n: int) -> np.ndarray:
    y = arrays[key]
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: {key} must hold integer class ids 0, 1, ..., got dtype {y.dtype}")
    if y.shape != (n,):
        raise UserError(
            f"{path}: {key} must hold one label per image, shape ({n},), got shape {y.shape}"
        )
    if int(y.min()) < 0:
        raise UserError(f"{path}: {key} has negative labels ({int(y.min())}); class ids start at 0")
    if int(y.max()) >= MAX_CLASSES:
        raise UserError(
            f"{path}: {key} has class id {int(y.max())}, above the limit of {MAX_CLASSES - 1}; "
            "number the classes 0, 1, ..."
        )
    return y.astype(np.int64)


def _own_classes(path: Path, arrays: dict[str, np.ndarray], y: np.ndarray) -> list[str]:
    num_classes = int(y.max()) + 1
    names = arrays.get("class_names")
    if names is None:
        classes = [str(i) for i in range(num_classes)]
    else:
        if names.ndim != 1:
            raise UserError(
                f"{path}: class_names must be a 1-D array of names, got shape {names.shape}"
            )
        classes = [str(c) for c in names]
        if len(classes) < num_classes:
            raise UserError(
                f"{path}: y_train has labels up to {num_classes - 1} but class_names lists "
                f"only {len(classes)} names; give one name per class id"
            )
        if len(set(classes)) < len(classes):
            twice = sorted({c for c in classes if classes.count(c) > 1})
            raise UserError(
                f"{path}: class_names must be unique, but it lists "
                f"{', '.join(map(repr, twice[:5]))} more than once"
            )
    present = np.unique(y)
    if len(present) < 2:
        raise UserError(
            f"{path}: y_train has a single class ({classes[int(present[0])]}); "
            "a classifier needs at least 2 classes"
        )
    return classes


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
