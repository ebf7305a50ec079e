"""Your own data as a table, one row per image: a Hugging Face `datasets.save_to_disk` folder
(`--data hf:PATH`) or Parquet files (`--data parquet:PATH`, a file or a folder of them).

The image column holds encoded image bytes, Hugging Face Image structs (`{"bytes", "path"}`) or
image paths (relative to the Parquet file); the label column holds integer class ids (named by a
Hugging Face ClassLabel, from the dataset's features or the Parquet file's metadata) or class
names (strings, classes in sorted order). `data.image_column` / `data.label_column` name the
columns; by default the first of `IMAGE_COLUMNS` / `LABEL_COLUMNS` the table has.

Splits: a DatasetDict's `train` and `test` (or `validation`) splits, Parquet files named
`test*`/`validation*` (as the Hub lays them out) beside `train*` ones, or `--test`; otherwise
the usual seeded hold-out. Rows become the `FolderSplit`s an image folder gives, their bytes
kept encoded (`encoded.ImageBlob`) and decoded by DataLoader workers; a table whose images are
all 32x32 is decoded once into uint8 arrays and trained as an .npz is (`as_arrays`).

Needs the `hf` extra (`pip install "asymco[hf]"`): datasets for hf, pyarrow for both.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from asymco.config import DataConfig
from asymco.data.encoded import ImageBlob, open_image
from asymco.data.layouts import MAX_CLASSES, FolderSplit, check_split
from asymco.data.sources import Source
from asymco.errors import UserError
from asymco.untrusted import decoding

TABLE_DATASETS = ("hf", "parquet")
IMAGE_COLUMNS = ("image", "img", "images", "picture", "photo", "image_bytes", "image_path",
                 "path", "file", "file_name", "filename")  # fmt: skip
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "category", "target", "y")
ARRAY_SIDE = 32
"""A table whose images are all ARRAY_SIDE x ARRAY_SIDE trains in memory, like CIFAR."""
_TEST_SPLITS = ("test", "validation", "valid", "val")


@dataclass(frozen=True)
class _Part:
    """The rows of one dataset split or Parquet file."""

    refs: list[ImageBlob | str]
    labels: list[int] | list[str]
    names: list[str] | None
    """Class names from a Hugging Face ClassLabel, if the table has one."""
    where: str


def _need(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"--data hf:PATH and parquet:PATH need the {module.split('.')[0]} package: "
            'pip install "asymco[hf]"'
        ) from None


def table_splits(data: DataConfig) -> tuple[FolderSplit, FolderSplit | None]:
    """The training split of a user's hf/parquet data and its test split (None without one),
    both checked, over one list of classes."""
    root = Path(data.root).expanduser()
    train, test = _read(data.dataset, root, data)
    if data.test_root:
        if test is not None:
            raise UserError(
                f"{root} holds a test split ({test.where}) and --test names another one "
                f"({data.test_root}); drop one of them"
            )
        given, its_test = _read(data.dataset, Path(data.test_root).expanduser(), data)
        test = its_test or given
    parts = [train] if test is None else [train, test]
    classes, labels = _class_ids(parts)
    splits = [FolderSplit(p.refs, y, classes) for p, y in zip(parts, labels, strict=True)]
    for split, part in zip(splits, parts, strict=True):
        check_split(split, name=part.where)
    return splits[0], splits[1] if test is not None else None


def _read(kind: str, path: Path, data: DataConfig) -> tuple[_Part, _Part | None]:
    if not path.exists():
        raise UserError(f"{path} does not exist; check the {kind}:PATH")
    return _read_hf(path, data) if kind == "hf" else _read_parquet(path, data)


def _read_hf(path: Path, data: DataConfig) -> tuple[_Part, _Part | None]:
    datasets = _need("datasets")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # not a save_to_disk folder, or a damaged one
        raise UserError(
            f"{path} is not a Hugging Face dataset saved with save_to_disk "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from None
    if not isinstance(loaded, datasets.DatasetDict):
        return _hf_part(loaded, path.name, path, data), None
    if "train" not in loaded and len(loaded) != 1:
        raise UserError(
            f"{path} holds the splits {', '.join(loaded)} but none named train; save the "
            "training rows as the train split"
        )
    train = "train" if "train" in loaded else next(iter(loaded))
    test = next((s for s in _TEST_SPLITS if s in loaded), None)
    part = _hf_part(loaded[train], f"{path.name}[{train}]", path, data)
    return part, _hf_part(loaded[test], f"{path.name}[{test}]", path, data) if test else None


def _hf_part(ds: Any, where: str, base: Path, data: DataConfig) -> _Part:
    datasets = _need("datasets")
    image, label = _columns(list(ds.column_names), where, data)
    feature = ds.features[label]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    table = ds.select_columns([image, label]).with_format("arrow")[:]
    return _part(table, image, label, names, where, base)


def _read_parquet(path: Path, data: DataConfig) -> tuple[_Part, _Part | None]:
    pq = _need("pyarrow.parquet")
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"{path} holds no .parquet files")
    parts: dict[bool, list[_Part]] = {False: [], True: []}
    for file in files:
        try:
            reader = pq.ParquetFile(file)
            image, label = _columns(reader.schema_arrow.names, file.name, data)
            table = reader.read(columns=[image, label])
        except UserError:
            raise
        except Exception as err:  # pyarrow's errors for a file that is no Parquet
            raise UserError(f"{file} is not a readable Parquet file ({err})") from None
        names = _class_label_names(reader.schema_arrow, label)
        is_test = any(file.name.startswith(s) for s in _TEST_SPLITS) and path.is_dir()
        parts[is_test].append(_part(table, image, label, names, file.name, file.parent))
    if not parts[False]:
        raise UserError(f"{path} holds only test files ({parts[True][0].where}, ...), no train")
    train = _joined(parts[False], path.name)
    return train, _joined(parts[True], f"{path.name} test files") if parts[True] else None


def _class_label_names(schema: Any, label: str) -> list[str] | None:
    """Names of a ClassLabel column, from the features datasets writes into Parquet metadata."""
    import json

    try:
        meta = json.loads((schema.metadata or {})[b"huggingface"])
        feature = meta["info"]["features"][label]
        return [str(n) for n in feature["names"]] if feature["_type"] == "ClassLabel" else None
    except (KeyError, TypeError, ValueError):
        return None


def _joined(parts: list[_Part], where: str) -> _Part:
    if len(parts) == 1:
        return parts[0]
    names = next((p.names for p in parts if p.names is not None), None)
    refs = [r for p in parts for r in p.refs]
    return _Part(refs, [y for p in parts for y in p.labels], names, where)


def _columns(names: list[str], where: str, data: DataConfig) -> tuple[str, str]:
    found = []
    for given, defaults, what in (
        (data.image_column, IMAGE_COLUMNS, "image"),
        (data.label_column, LABEL_COLUMNS, "label"),
    ):
        key = f"data.{what}_column"
        if given is not None and given not in names:
            raise UserError(f"{where} has no column {given!r} ({key}); its columns are {names}")
        by_lower = {n.lower(): n for n in reversed(names)}
        name = given or next((by_lower[d] for d in defaults if d in by_lower), None)
        if name is None:
            raise UserError(
                f"{where} has no {what} column (looked for {', '.join(defaults[:4])}, ...; "
                f"its columns are {', '.join(names)}); name it with --set {key}=NAME"
            )
        found.append(name)
    return found[0], found[1]


def _part(table: Any, image: str, label: str, names: list[str] | None, where: str, base: Path):
    if table.num_rows == 0:
        raise UserError(f"{where} has no rows; a classifier needs labelled images")
    return _Part(_images(table.column(image), where, image, base), _labels(table, label, where),
                 names, where)  # fmt: skip


def _images(column: Any, where: str, name: str, base: Path) -> list[ImageBlob | str]:
    pa = _need("pyarrow")
    kind = column.type
    values = column.to_pylist()
    if pa.types.is_struct(kind) and {"bytes", "path"} & {f.name for f in kind}:
        cells = [(v.get("bytes"), v.get("path")) if v else (None, None) for v in values]
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        cells = [(v, None) for v in values]
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        cells = [(None, v) for v in values]
    else:
        raise UserError(
            f"{where}: column {name!r} holds {kind}, not images; it must hold encoded image "
            "bytes, Hugging Face Image structs or image paths (set data.image_column)"
        )
    refs: list[ImageBlob | str] = []
    for row, (data, path) in enumerate(cells):
        if data:
            refs.append(ImageBlob(data, f"{where}#{row}", row))
        elif path:
            refs.append(str(base.resolve() / path))  # an absolute path stays as it is
        else:
            raise UserError(f"{where}: row {row} has no image in column {name!r}; drop that row")
    return refs


def _labels(table: Any, name: str, where: str) -> list[int] | list[str]:
    pa = _need("pyarrow")
    column = table.column(name)
    if pa.types.is_dictionary(column.type):  # pandas categoricals
        column = column.cast(column.type.value_type)
    values = column.to_pylist()
    if None in values:
        raise UserError(f"{where}: row {values.index(None)} has no label in {name!r}; drop it")
    if pa.types.is_integer(column.type):
        low, high = min(values), max(values)
        if low < 0:
            raise UserError(
                f"{where}: column {name!r} has the label {low}; class ids start at 0 (-1 marks "
                "an unlabelled row in Hugging Face datasets: drop those rows)"
            )
        if high >= MAX_CLASSES:
            raise UserError(f"{where}: class id {high} is above the limit of {MAX_CLASSES - 1}")
        return values
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return values
    raise UserError(
        f"{where}: labels in column {name!r} are {column.type}; they must be integer class "
        "ids or class names (strings)"
    )


def _class_ids(parts: list[_Part]) -> tuple[list[str], list[np.ndarray]]:
    """One list of classes for all `parts` and each part's labels as indices into it."""
    kinds = {isinstance(p.labels[0], str) for p in parts}
    if len(kinds) > 1:
        raise UserError(
            f"the labels of {parts[0].where} and {parts[1].where} are of different kinds (class "
            "ids and class names); give both the same kind"
        )
    if kinds == {True}:  # class names
        classes = sorted({y for p in parts for y in p.labels})
        index = {c: i for i, c in enumerate(classes)}
        return classes, [np.array([index[y] for y in p.labels]) for p in parts]
    top = max(max(p.labels) for p in parts)
    names = next((p.names for p in parts if p.names is not None), None)
    if names is not None and top >= len(names):
        raise UserError(
            f"{parts[0].where}: label {top} has no name among the {len(names)} ClassLabel names"
        )
    classes = names if names is not None else [str(i) for i in range(top + 1)]
    return classes, [np.array(p.labels) for p in parts]


def as_arrays(source: Source, data: DataConfig) -> Source:
    """`source` with its images decoded into uint8 (N, 32, 32, 3) arrays when every one is an
    encoded 32x32 image (trained in memory, as an .npz); else as it is, decoded by workers.
    Either way, encoded images keep their row in the table as their id (label_issues.csv)."""
    refs = [*source.x_train, *source.x_test]
    if not all(isinstance(r, ImageBlob) for r in refs):
        return _by_workers(source, data)
    rows = np.array([r.row for r in source.x_train], dtype=np.int64)
    if not all(_size(r) == (ARRAY_SIDE, ARRAY_SIDE) for r in refs):
        return dataclasses.replace(_by_workers(source, data), train_ids=rows)
    return dataclasses.replace(
        source, x_train=_decode(source.x_train), x_test=_decode(source.x_test), train_ids=rows
    )


def _by_workers(source: Source, data: DataConfig) -> Source:
    if data.loader != "auto":
        raise UserError(
            f"data.loader={data.loader} applies to images held in memory, but the images of "
            f"{data.root} are decoded by DataLoader workers (they are not all "
            f"{ARRAY_SIDE}x{ARRAY_SIDE}): leave data.loader at auto"
        )
    return source


def _size(ref: ImageBlob) -> tuple[int, int]:
    with decoding(ref, "image"), open_image(ref) as img:
        return img.size


def _decode(refs: np.ndarray) -> np.ndarray:
    images = []
    for ref in refs:
        with decoding(ref, "image"), open_image(ref) as img:
            images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    return np.stack(images)
