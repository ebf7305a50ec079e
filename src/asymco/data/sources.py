"""Where images come from: CIFAR-10/100 (an .npz, a torchvision folder, or torchvision's
download) and scikit-learn's bundled digits. Each source returns a `Source` of uint8 arrays.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asymco.errors import UserError
from asymco.text import printable
from asymco.untrusted import check_arrays, decoding

logger = logging.getLogger(__name__)

_TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Source:
    """A labelled image set. Images are uint8 (N, H, W, C) arrays, or (N,) image file paths for
    data read from files; labels are int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    """The training labels as the source gives them: the true labels of a clean set (CIFAR,
    digits), the observed labels of real-noise data (`clean_known=False`)."""
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    origin: str
    """Human-readable description of where the data was read from."""
    clean_known: bool = True
    """Whether `y_train` is the truth, so selection quality can be scored."""
    train_ids: np.ndarray | None = None
    """(N,) each training sample's position in the data as the user gave it, when a test split
    was held out of it; None = positions in `x_train`."""

    @property
    def is_files(self) -> bool:
        return self.x_train.ndim == 1


def default_root() -> Path:
    return Path(os.environ.get("ASYMCO_DATA", Path.home() / ".cache" / "asymco"))


def load_source(
    dataset: str, *, root: str | None, download: bool, seed: int = 0, test_fraction: float = 0.2
) -> Source:
    """Load `dataset` ("cifar10", "cifar100" or "digits")."""
    if dataset == "digits":
        return load_digits(seed=seed, test_fraction=test_fraction)
    if dataset not in _TORCHVISION_FOLDERS:
        raise UserError(f"unknown dataset {dataset!r}; choose cifar10, cifar100 or digits")
    given = Path(root).expanduser() if root else None
    if given and given.suffix != ".npz" and not given.exists():  # a typo grows no folder tree
        raise UserError(
            f"{root} (--data-dir, data.root) does not exist; check the path, "
            f"or create the folder first to download {dataset} into it"
        )
    return load_cifar(dataset, root=given or default_root(), download=download)


def load_cifar(name: str, *, root: Path, download: bool) -> Source:
    """CIFAR from, in this order: `root` as an .npz file, `root/<name>.npz`, torchvision's
    extracted folder under `root`, or torchvision's download into `root`."""
    if root.suffix == ".npz":
        return load_npz(root, name)
    if (root / f"{name}.npz").is_file():
        return load_npz(root / f"{name}.npz", name)
    folder_present = (root / _TORCHVISION_FOLDERS[name]).is_dir()
    if not folder_present and not download:
        raise UserError(
            f"{name} was not found in {root} (looked for {name}.npz and "
            f"{_TORCHVISION_FOLDERS[name]}/) and downloads are off; pass --data-dir or "
            "--set data.download=true"
        )
    if folder_present and download:
        try:  # use what is there; let torchvision repair a broken folder only if it must
            return _load_torchvision(name, root, download=False)
        except UserError:
            logger.warning("%s in %s looks incomplete; downloading it again", name, printable(root))
    return _load_torchvision(name, root, download=download)


def _load_torchvision(name: str, root: Path, *, download: bool) -> Source:
    from torchvision import datasets

    cls = datasets.CIFAR100 if name == "cifar100" else datasets.CIFAR10
    try:
        root.mkdir(parents=True, exist_ok=True)
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=False)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise UserError(f"{name} in {root} is missing or corrupted ({err})") from None
    except OSError as err:  # no network (urllib's URLError), no permission, disk full
        raise UserError(
            f"could not download {name} into {root} ({err}; no network?); on a machine without "
            f"one, copy {name}.npz or torchvision's {_TORCHVISION_FOLDERS[name]}/ folder there "
            "and point --data-dir at it"
        ) from None
    return Source(
        x_train=np.asarray(train.data, dtype=np.uint8),
        y_train=np.asarray(train.targets, dtype=np.int64),
        x_test=np.asarray(test.data, dtype=np.uint8),
        y_test=np.asarray(test.targets, dtype=np.int64),
        classes=list(train.classes),
        origin=f"torchvision folder {root / _TORCHVISION_FOLDERS[name]}",
    )


def load_npz(path: Path, name: str) -> Source:
    """An .npz with x_train, y_train, x_test, y_test (uint8 NHWC images, integer labels).

    Decoded once per process and file version: the runs of a pack (and a sweep's runs in one
    process) share one read-only copy instead of decompressing CIFAR again for each."""
    try:
        stat = path.stat()
    except OSError as err:
        raise UserError(f"cannot read the .npz archive {path} ({err.strerror})") from None
    return _load_npz(path, name, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _load_npz(path: Path, name: str, mtime_ns: int, size: int) -> Source:
    fix = "download or write it again"
    check_arrays(path, "the .npz archive", fix)  # declared sizes, before allocating
    with decoding(path, "the .npz archive", fix):
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy under an .npz name
            raise UserError(f"{path} holds a single array, not an .npz archive of named arrays")
        with archive:
            missing = [k for k in _NPZ_KEYS if k not in archive.files]
            if missing:
                raise UserError(f"{path} lacks the arrays {', '.join(missing)}")
            arrays = {k: archive[k] for k in _NPZ_KEYS}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if y.size == 0:  # size, not len: a damaged header can declare a 0-d array
            raise UserError(f"{path}: the {split} split is empty")
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise UserError(
                f"{path}: x_{split} must be uint8 images (N, H, W, C), got {x.dtype} {x.shape}"
            )
        if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
            raise UserError(
                f"{path}: y_{split} must be {x.shape[0]} integer labels, got {y.dtype} {y.shape}"
            )
    num_classes = 100 if name == "cifar100" else 10
    for split in ("train", "test"):
        y = arrays[f"y_{split}"]
        if y.min() < 0 or y.max() >= num_classes:
            raise UserError(f"{path}: y_{split} must lie in [0, {num_classes}) for {name}")
    shared = {
        "x_train": arrays["x_train"],
        "y_train": arrays["y_train"].astype(np.int64),
        "x_test": arrays["x_test"],
        "y_test": arrays["y_test"].astype(np.int64),
    }
    for array in shared.values():
        array.setflags(write=False)  # shared by every run of this process
    return Source(**shared, classes=cifar_class_names(name), origin=f"npz {path}")


def cifar_class_names(name: str) -> list[str]:
    if name == "cifar10":
        return [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
    return _CIFAR100_NAMES.split()


def load_digits(*, seed: int, test_fraction: float) -> Source:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), split stratified and seeded.

    Pixel values 0..16 are scaled to 0..255 uint8 so every source shares one image format.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    return Source(
        x_train, y_train, x_test, y_test, [str(d) for d in range(10)], origin="scikit-learn digits"
    )


_CIFAR100_NAMES = """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray
road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
wardrobe whale willow_tree wolf woman worm
"""
