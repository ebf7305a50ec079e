"""CIFAR-10N / CIFAR-100N real human noisy labels, read without running untrusted code.

CIFAR-N (Wei et al., "Learning with Noisy Labels Revisited: A Study Using Real-World Human
Annotations", ICLR 2022) ships `CIFAR-10_human.pt` and `CIFAR-100_human.pt`: a `torch.save`d
dict of numpy int arrays, aligned with the official CIFAR training order. Three formats are read:

- those official `.pt` files, unpickled with `torch.load(weights_only=True)` and an allowlist
  of exactly the numpy pieces an integer/float array needs (anything else is refused);
- an `.npz` with the same keys (`np.load(allow_pickle=False)`);
- the combined `cifarn_labels.npz`, whose keys carry a `cifar10n_` / `cifar100n_` prefix.
"""

from __future__ import annotations

import contextlib
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from asymco.errors import UserError
from asymco.untrusted import check_arrays, decoding

NUM_TRAIN = 50_000
"""Training-set size of CIFAR-10 and CIFAR-100: every CIFAR-N array has this length."""

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}

LABEL_SETS: dict[str, tuple[str, ...]] = {
    "cifar10": ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3"),
    "cifar100": ("noisy_label",),
}
"""The human label sets of each dataset, by their names in the official files."""

LABEL_SET_ALIASES = {
    "aggre": "aggre_label",
    "worst": "worse_label",
    "worse": "worse_label",
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
    "noisy": "noisy_label",
}
"""Short names (as in the CIFAR-N paper's tables) for the `LABEL_SETS` names."""

CLEAN_KEY = "clean_label"
_PREFIXES = {"cifar10": "cifar10n_", "cifar100": "cifar100n_"}
_RELEASE = {
    "cifar10": "CIFAR-10N (CIFAR-10_human.pt)",
    "cifar100": "CIFAR-100N (CIFAR-100_human.pt)",
}


def load_cifarn_labels(path: str | Path) -> dict[str, np.ndarray]:
    """Read every array of a CIFAR-N label file, with its keys as stored.

    Args:
        path: An official `CIFAR-10_human.pt` / `CIFAR-100_human.pt`, or an `.npz` of integer
            arrays (keys as in the official files, or `cifar10n_`/`cifar100n_`-prefixed as in
            the combined `cifarn_labels.npz`). The format is told from the content.

    Returns:
        Key -> 1-D integer array, as stored (dtype kept; shape and range not yet checked).

    Raises:
        UserError: The file is missing, corrupt or not a dict; it needs anything beyond numpy
            arrays to unpickle (refused, never executed); or an entry is not a 1-D integer array.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"CIFAR-N label file {path} does not exist; pass the path of CIFAR-10_human.pt, "
            "CIFAR-100_human.pt or cifarn_labels.npz"
        )
    raw = _load_npz(path) if _is_npz(path) else _load_torch(path)
    if not isinstance(raw, Mapping) or not raw:
        what = "an empty dict" if isinstance(raw, Mapping) else f"a {type(raw).__name__!r} object"
        raise UserError(
            f"CIFAR-N label file {path} holds {what}, not a dict of label arrays; pass the "
            "official CIFAR-10_human.pt / CIFAR-100_human.pt"
        )
    labels: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise UserError(
                f"CIFAR-N label file {path} has a non-string key {key!r}; pass the official "
                "CIFAR-10_human.pt / CIFAR-100_human.pt"
            )
        # A re-saved file may hold torch tensors; they are arrays too.
        array = value.numpy(force=True) if isinstance(value, torch.Tensor) else value
        if not isinstance(array, np.ndarray):
            raise UserError(
                f"{key} in CIFAR-N label file {path} is a {type(value).__name__}, not an array "
                "of labels; pass the official CIFAR-10_human.pt / CIFAR-100_human.pt"
            )
        if not np.issubdtype(array.dtype, np.integer):
            raise UserError(
                f"{key} in CIFAR-N label file {path} has dtype {array.dtype}, but labels must be "
                "integers; pass the official CIFAR-10_human.pt / CIFAR-100_human.pt"
            )
        if array.ndim != 1:
            raise UserError(
                f"{key} in CIFAR-N label file {path} has shape {array.shape}, but labels must "
                "be one integer per image; pass the official CIFAR-10_human.pt / "
                "CIFAR-100_human.pt"
            )
        labels[key] = array
    return labels


def cifarn_label_sets(
    path: str | Path,
    dataset: Literal["cifar10", "cifar100"],
    *,
    num_samples: int = NUM_TRAIN,
    num_classes: int | None = None,
) -> dict[str, np.ndarray]:
    """The clean labels and the human label sets of `dataset`, from any CIFAR-N label file.

    Args:
        path: See `load_cifarn_labels`.
        dataset: "cifar10" (sets `aggre_label`, `worse_label`, `random_label1..3`) or
            "cifar100" (set `noisy_label`).
        num_samples: Required length of every array (the training-set size).
        num_classes: Labels must lie in [0, num_classes); default 10 or 100 by `dataset`.

    Returns:
        Unprefixed keys -> int64 arrays of shape (num_samples,): `clean_label` and each of
        the dataset's label sets that the file holds (the official files hold all of them).

    Raises:
        UserError: As `load_cifarn_labels`; or the file has no clean labels or no label set of
            `dataset` (e.g. a CIFAR-10N file given for cifar100), or an array has the wrong
            length or a label outside [0, num_classes).
    """
    _check_dataset(dataset)
    num_classes = NUM_CLASSES[dataset] if num_classes is None else num_classes
    path = Path(path).expanduser()
    stored = load_cifarn_labels(path)
    labels = _unprefixed(stored, dataset, path)
    sets = [name for name in LABEL_SETS[dataset] if name in labels]
    if CLEAN_KEY not in labels or not sets:
        other = "cifar100" if dataset == "cifar10" else "cifar10"
        lacks = (
            f"has no {CLEAN_KEY}"
            if CLEAN_KEY not in labels
            else f"has no {' or '.join(LABEL_SETS[dataset])}"
        )
        hint = (
            f"it looks like a {_RELEASE[other]} file, so use it with {other} or pass the "
            f"{_RELEASE[dataset]} file"
            if any(name in labels for name in LABEL_SETS[other])
            else f"pass the official {_RELEASE[dataset]} file"
        )
        raise UserError(
            f"CIFAR-N label file {path} {lacks} (it has {', '.join(sorted(labels))}); {hint}"
        )
    result = {}
    for key in (CLEAN_KEY, *sets):
        result[key] = _checked(labels[key], key, path, num_samples, num_classes)
    return result


def canonical_label_set(dataset: str, label_set: str) -> str:
    """`label_set` as named in the files (`aggre` -> `aggre_label`), checked against `dataset`.

    Raises:
        UserError: `label_set` is not one of `dataset`'s CIFAR-N label sets.
    """
    _check_dataset(dataset)
    name = LABEL_SET_ALIASES.get(label_set, label_set)
    valid = LABEL_SETS[dataset]
    if name not in valid:
        aliases = [a for a, n in LABEL_SET_ALIASES.items() if n in valid and a != "worse"]
        raise UserError(
            f"{label_set!r} is not a CIFAR-N label set of {dataset}; choose one of "
            f"{', '.join((*valid, *aliases))}"
        )
    return name


def _check_dataset(dataset: str) -> None:
    if dataset not in LABEL_SETS:
        raise UserError(
            f"CIFAR-N human labels exist for cifar10 and cifar100, not {dataset!r}; use one of "
            "those datasets or another noise model"
        )


def human_noisy_labels(
    path: str | Path,
    *,
    dataset: Literal["cifar10", "cifar100"],
    label_set: str,
    num_samples: int,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The human noisy labels of one CIFAR-N label set, with the clean labels beside them.

    Args:
        path: See `load_cifarn_labels`.
        dataset: "cifar10" or "cifar100".
        label_set: cifar100: `noisy_label` (alias `noisy`); cifar10: `aggre_label`,
            `worse_label`, `random_label1`, `random_label2`, `random_label3` (aliases `aggre`,
            `worst`, `random1`, `random2`, `random3`).
        num_samples: Size of the training set the labels must align with.
        num_classes: Labels must lie in [0, num_classes).

    Returns:
        (noisy labels, clean labels), both int64 of shape (num_samples,), in the official
        CIFAR training order.

    Raises:
        UserError: As `cifarn_label_sets`, or `label_set` is unknown or not in the file.
    """
    name = canonical_label_set(dataset, label_set)
    labels = cifarn_label_sets(path, dataset, num_samples=num_samples, num_classes=num_classes)
    if name not in labels:
        present = ", ".join(k for k in labels if k != CLEAN_KEY)
        raise UserError(
            f"CIFAR-N label file {path} has no {name} (it has {present}); choose one of those "
            "or pass the official file"
        )
    return labels[name], labels[CLEAN_KEY]


# --- reading -------------------------------------------------------------------------------


def _numpy_safe_globals() -> list[Any]:
    """Exactly what unpickling a numpy array of integers (or floats) needs, and nothing more.

    `_reconstruct` builds the empty array, `ndarray`/`dtype` are its type and dtype, and each
    dtype's class must be allowed to receive its pickled state. Floats are allowed only so a
    float file reaches the clear "dtype" error instead of a refusal; object arrays stay refused.
    """
    reconstruct = np.ndarray(0).__reduce__()[0]  # numpy's `_reconstruct`, whatever its module
    # Every integer type code, plus bool and the float types ("?efd").
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["AllInteger"] + "?efd"}
    return [
        # Files pickled under numpy 1.x name `numpy.core`, under numpy 2.x `numpy._core`.
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *sorted(dtype_classes, key=lambda c: c.__qualname__),
    ]


@contextlib.contextmanager
def _numpy_allowed() -> Iterator[None]:
    # A context manager, not add_safe_globals: the allowlist must not leak into other loads.
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        yield


_WHAT = "CIFAR-N label file"
_FIX = "download CIFAR-10_human.pt / CIFAR-100_human.pt again or use an .npz"


def _load_torch(path: Path) -> Any:
    with decoding(path, _WHAT, _FIX), _numpy_allowed(), warnings.catch_warnings():
        # Junk bytes can look like a newer pickle protocol; torch then warns before it fails,
        # and the failure is the one sentence the user gets.
        warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
        try:
            return torch.load(path, weights_only=True, map_location="cpu")
        except Exception as err:
            text = str(err)
            if "Weights only load failed" in text and (
                found := re.search(r"GLOBAL ([\w.]+)|build .*?got <class '([\w.]+)'>", text)
            ):
                raise UserError(
                    f"refused to load CIFAR-N label file {path}: unpickling it would need "
                    f"{found.group(1) or found.group(2)}, not just numpy arrays, so it may run "
                    "code; use the official CIFAR-10_human.pt / CIFAR-100_human.pt or an .npz"
                ) from None
            raise


def _is_npz(path: Path) -> bool:
    # torch.save also writes zip files, so the members decide: an npz holds only .npy files.
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return bool(names) and all(name.endswith(".npy") for name in names)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    check_arrays(path, _WHAT, _FIX)  # declared sizes, before allocating
    with decoding(path, _WHAT, "write or download it again"):
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except ValueError as err:
            if "allow_pickle" in str(err):  # an object array: pickled Python objects inside
                raise UserError(
                    f"refused to load CIFAR-N label file {path}: it holds pickled objects, not "
                    "just integer arrays; save the labels as integer arrays"
                ) from None
            raise


# --- checking ------------------------------------------------------------------------------


def _unprefixed(labels: dict[str, np.ndarray], dataset: str, path: Path) -> dict[str, np.ndarray]:
    """Strip the combined file's `cifar10n_` / `cifar100n_` prefixes (for `dataset` only)."""
    if not any(key.startswith(tuple(_PREFIXES.values())) for key in labels):
        return labels  # official layout: keys as in CIFAR-10_human.pt / CIFAR-100_human.pt
    prefix = _PREFIXES[dataset]
    mine = {key[len(prefix) :]: value for key, value in labels.items() if key.startswith(prefix)}
    if not mine:
        raise UserError(
            f"CIFAR-N label file {path} holds no {prefix}* arrays for {dataset} (it has "
            f"{', '.join(sorted(labels))}); pass the official {_RELEASE[dataset]} file"
        )
    return mine


def _checked(
    array: np.ndarray, key: str, path: Path, num_samples: int, num_classes: int
) -> np.ndarray:
    if array.shape != (num_samples,):
        raise UserError(
            f"{key} in CIFAR-N label file {path} has shape {array.shape}, but the training set "
            f"has {num_samples} images; CIFAR-N labels cover the whole official training set "
            "in its original order, so use the whole set and the matching CIFAR-N file"
        )
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0 or high >= num_classes:
        raise UserError(
            f"{key} in CIFAR-N label file {path} has labels from {low} to {high}, outside "
            f"[0, {num_classes}); check that the file belongs to this dataset"
        )
    return array.astype(np.int64, copy=True)
