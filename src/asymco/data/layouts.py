"""Image-dataset layouts on disk -> `FolderSplit`s (absolute paths, int64 labels, class names).

Web-Aircraft/Bird/Car (`root/train|val/<class>/...`, act-spec C.2), Food-101N with the clean
Food-101 test split (C.3), a user's ImageFolder tree or a CSV of `path,label` rows. Nothing here
decodes an image; `folders.py` does that.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asymco.data.encoded import image_refs
from asymco.errors import UserError
from asymco.text import printable
from asymco.untrusted import TABLE_LIMIT, decoding, read_text

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's IMG_EXTENSIONS, matched case-insensitively."""
_SHOW = 5  # how many offending paths a message names
MAX_CLASSES = 100_000
_UTF8 = "save it as UTF-8 CSV"
"""Integer class ids must lie below this; a larger id is a mistake (the class list would be
that long), not a dataset."""


@dataclass(frozen=True)
class FolderSplit:
    """One split of an image dataset: `paths[i]` has class `classes[labels[i]]`."""

    paths: np.ndarray
    """(N,) str absolute image paths (a fixed-width numpy str array: workers share it cheaply),
    or an object array where some images are encoded bytes (`encoded.ImageBlob`)."""
    labels: np.ndarray
    """(N,) int64 indices into `classes`."""
    classes: list[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", image_refs(self.paths))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64).reshape(-1))
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, keep: np.ndarray) -> FolderSplit:
        """The samples where the (N,) bool mask `keep` is true; the classes stay the same."""
        return FolderSplit(self.paths[keep], self.labels[keep], list(self.classes))


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMG_EXTENSIONS


def _examples(items: Sequence[str]) -> str:
    shown = ", ".join(str(x) for x in items[:_SHOW])
    return shown + (", ..." if len(items) > _SHOW else "")


def scan_image_folder(root: Path) -> FolderSplit:
    """Read an ImageFolder tree `root/<class>/**/<image>`.

    Classes are the sorted names of the non-hidden sub-folders that hold at least one image; a
    class folder without images is skipped with a warning (so label indices count only real
    classes). Images are found recursively, hidden files and folders are ignored, extensions are
    `IMG_EXTENSIONS` in any case, and a class's paths are sorted as strings.

    Raises:
        UserError: `root` is missing or not a folder, has no class folders, or has no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"image folder {root} does not exist or is not a folder; pass a folder "
            "laid out as <root>/<class>/<image>"
        )
    with os.scandir(root) as entries:
        folders = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not folders:
        raise UserError(
            f"image folder {root} has no class sub-folders; put the images of each "
            "class in their own folder, <root>/<class>/<image>"
        )
    paths: list[str] = []
    labels: list[int] = []
    classes: list[str] = []
    empty: list[str] = []
    for name in folders:
        found = []
        for parent, dirs, files in os.walk(root / name, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [
                os.path.join(parent, f) for f in files if not f.startswith(".") and _is_image(f)
            ]
        if not found:
            empty.append(name)
            continue
        paths += sorted(os.path.abspath(p) for p in found)
        labels += [len(classes)] * len(found)
        classes.append(name)
    if not classes:  # one sentence, not a warning per empty folder first
        raise UserError(
            f"image folder {root} holds no images with extensions "
            f"{', '.join(IMG_EXTENSIONS)}; add images under <root>/<class>/"
        )
    for name in empty:
        logger.warning("skipping class folder %s: it holds no images", printable(root / name))
    return FolderSplit(np.array(paths, dtype=np.str_), np.array(labels), classes)


def _same_classes(train: list[str], other: list[str], what: str) -> None:
    if train != other:
        missing = sorted(set(train) - set(other))
        extra = sorted(set(other) - set(train))
        raise UserError(
            f"the {what} classes differ from the training classes (missing: "
            f"{_examples(missing) or 'none'}; extra: {_examples(extra) or 'none'}); "
            "both splits need the same class folders"
        )


def check_split(split: FolderSplit, *, name: str) -> None:
    """Raise UserError unless `split` has at least one image and at least two classes."""
    if len(split) == 0:
        raise UserError(f"the {name} split has no images; check the dataset path and layout")
    if len(split.classes) < 2:
        raise UserError(
            f"the {name} split has {len(split.classes)} class "
            f"({_examples(split.classes)}); a classifier needs at least 2 classes"
        )
    if split.labels.min() < 0 or split.labels.max() >= len(split.classes):
        raise ValueError(f"{name} labels fall outside 0..{len(split.classes) - 1}")


def web_dataset(root: Path) -> tuple[FolderSplit, FolderSplit]:
    """Web-Aircraft/Bird/Car (WebFG-496): `root/train/<class>/...` and `root/val/<class>/...`.

    Returns:
        (train, val) splits over the same sorted classes; both pass `check_split`.
    """
    root = Path(root)
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise UserError(
                f"{root / part} does not exist; a web dataset needs "
                "<root>/train/<class>/<image> and <root>/val/<class>/<image>"
            )
    train, val = scan_image_folder(root / "train"), scan_image_folder(root / "val")
    _same_classes(train.classes, val.classes, f"validation ({root / 'val'})")
    check_split(train, name="train")
    check_split(val, name="val")
    return train, val


def _read_lines(file: Path) -> list[str]:
    if not file.is_file():
        raise UserError(f"{file} does not exist; check the dataset root")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{file} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_classes(file: Path, num_classes: int | None) -> list[str]:
    lines = _read_lines(file)
    if lines and lines[0].startswith("class_name"):  # Food-101N's header; Food-101 has none
        lines = lines[1:]
    classes = sorted(lines)
    if num_classes is not None and len(classes) != num_classes:
        raise UserError(
            f"{file} lists {len(classes)} classes but {num_classes} are expected; "
            "check that it is the right dataset's classes.txt"
        )
    return classes


def _labelled(
    lines: list[str], classes: list[str], images: Path, suffix: str, source: Path
) -> FolderSplit:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({line.split("/")[0] for line in lines} - index.keys())
    if unknown:
        raise UserError(
            f"{source} names classes that are not in classes.txt "
            f"({_examples(unknown)}); use the meta files of one dataset version"
        )
    paths = [os.path.abspath(images / (line + suffix)) for line in lines]
    _require_files(paths, f"{{n}} image file(s) listed in {source} do not exist under {images}")
    return FolderSplit(
        np.array(paths, dtype=np.str_),
        np.array([index[line.split("/")[0]] for line in lines]),
        classes,
    )


def _require_files(paths: list[str], message: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise UserError(
            message.format(n=len(missing)) + f" (e.g. {_examples(missing)}); "
            "restore the files or remove their entries"
        )


def food101n(
    root: Path, test_root: Path | None = None, *, num_classes: int | None = 101
) -> tuple[FolderSplit, FolderSplit]:
    """Food-101N for training and the clean Food-101 test split (act-spec C.3).

    Args:
        root: Holds `meta/classes.txt` (a `class_name` header, then one class a line),
            `meta/imagelist.tsv` (`class/file.jpg` a line; lines without an image extension, such
            as the header, are dropped) and `images/<class>/<file>`.
        test_root: Food-101, with `meta/classes.txt`, `meta/test.txt` (`class/id` a line) and
            `images/<class>/<id>.jpg`; default `root/food-101`.
        num_classes: The class count both classes.txt must list (None: any).

    Returns:
        (train, test) splits; labels index the sorted class list shared by both.
    """
    root = Path(root)
    test_root = root / "food-101" if test_root is None else Path(test_root)
    classes = _read_classes(root / "meta" / "classes.txt", num_classes)
    listed = [line for line in _read_lines(root / "meta" / "imagelist.tsv") if _is_image(line)]
    train = _labelled(listed, classes, root / "images", "", root / "meta" / "imagelist.tsv")
    test_classes = _read_classes(test_root / "meta" / "classes.txt", num_classes)
    _same_classes(classes, test_classes, f"Food-101 test ({test_root})")
    test_file = test_root / "meta" / "test.txt"
    test = _labelled(_read_lines(test_file), classes, test_root / "images", ".jpg", test_file)
    check_split(train, name="train")
    check_split(test, name="test")
    return train, test


def csv_dataset(csv_file: Path) -> FolderSplit:
    """A CSV with a header and columns `path,label` (more columns are ignored).

    Paths are relative to the CSV's folder (absolute paths are kept). Labels are class names,
    and classes are the sorted unique names, unless every label is an integer: then the ids are
    kept and the classes are "0" .. str(max id).

    Raises:
        UserError: the file is missing or empty, lacks a column, has an empty or negative label,
            or lists image files that do not exist.
    """
    csv_file = Path(csv_file)
    rows, at_path, at_label = _csv_rows(csv_file)
    names, paths = [], []
    for line, row in enumerate(rows, start=2):
        if (
            len(row) <= max(at_path, at_label)
            or not row[at_path].strip()
            or not row[at_label].strip()
        ):
            raise UserError(f"row {line} of {csv_file} lacks a path or a label; fill in both")
        names.append(row[at_label].strip())
        paths.append(os.path.abspath(csv_file.parent / row[at_path].strip()))
    _require_files(
        paths,
        f"{{n}} of the {len(paths)} image file(s) in {csv_file} do not exist "
        f"(relative paths start at {csv_file.parent.resolve()})",
    )
    labels, classes = _csv_labels(names, csv_file)
    return FolderSplit(np.array(paths, dtype=np.str_), labels, classes)


def _csv_rows(csv_file: Path) -> tuple[list[list[str]], int, int]:
    """The non-empty data rows of a `path,label` CSV and the two columns' positions."""
    if not csv_file.is_file():
        raise UserError(f"CSV file {csv_file} does not exist; check the path")
    # -sig: Excel writes a byte-order mark
    text = read_text(csv_file, "CSV file", TABLE_LIMIT, encoding="utf-8-sig", fix=_UTF8)
    with decoding(csv_file, "CSV file", _UTF8):
        rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        raise UserError(
            f"CSV file {csv_file} is empty; give a header path,label and one row per image"
        )
    header = [h.strip().lower() for h in rows[0]]
    if "path" not in header or "label" not in header:
        raise UserError(
            f"CSV file {csv_file} has columns {rows[0]} but needs a header with "
            "columns path and label"
        )
    data = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    if not data:
        raise UserError(f"CSV file {csv_file} has a header but no rows; add one row per image")
    return data, header.index("path"), header.index("label")


def _csv_labels(names: list[str], csv_file: Path) -> tuple[np.ndarray, list[str]]:
    """Class ids and class names from the label column: integer ids kept as they are (classes
    "0" .. str(max id)), else the sorted unique names."""
    if all(re.fullmatch(r"[+-]?\d+", n) for n in names):
        if any(n.startswith("-") and n.strip("-0") for n in names):
            raise UserError(
                f"CSV file {csv_file} has negative labels; use class ids 0, 1, ... or class names"
            )
        too_big = [n for n in names if len(n.lstrip("+0")) > 9 or int(n) >= MAX_CLASSES]
        if too_big:
            raise UserError(
                f"CSV file {csv_file} has class id {too_big[0][:12]}"
                f"{'...' if len(too_big[0]) > 12 else ''}, above the limit of "
                f"{MAX_CLASSES - 1}; number the classes 0, 1, ... or use class names"
            )
        labels = np.array([int(n) for n in names], dtype=np.int64)
        return labels, [str(i) for i in range(int(labels.max()) + 1)]
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[n] for n in names], dtype=np.int64), classes
