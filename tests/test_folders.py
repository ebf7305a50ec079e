"""Image-folder layouts, image checks, the folder dataset/loader and UDA RandAugment.

Every dataset is a handful of tiny images written with PIL into tmp_path: several modes (RGB, L,
RGBA, palette), JPEG/PNG/BMP, upper-case extensions, nested and hidden files, one class with a
single image, plus a corrupt and a truncated JPEG where a test needs bad files.
"""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asymco.augment import IMAGENET_MEAN, IMAGENET_STD, Normalizer
from asymco.data.folders import (
    FolderLoader,
    FolderViewDataset,
    folder_test_batches,
    keep_good_images,
    verify_images,
)
from asymco.data.layouts import (
    FolderSplit,
    check_split,
    csv_dataset,
    food101n,
    scan_image_folder,
    web_dataset,
)
from asymco.data.sharding import BatchPlan
from asymco.errors import UserError
from asymco.randaugment import OPS, RandAugmentUDA

CPU = torch.device("cpu")
SIZES = [(20, 24), (40, 30)]  # (width, height)


def _image(path: Path, mode: str = "RGB", size: tuple[int, int] = (20, 24), seed: int = 0) -> Path:
    """Write a random image; the format comes from the (case-insensitive) extension."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode, 1)
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, "L" if mode == "P" else mode)
    if mode == "P":
        img = img.convert("P")
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[path.suffix.lower()]
    img.save(path, fmt)
    return path


def _truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 3 // 5])
    return path


def _corrupt_jpeg(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(2).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return path


def _class_tree(root: Path) -> dict[str, list[str]]:
    """cat: 3 images (one nested, one .PNG, one .JPG), dog: 4, fish: 1, plus files and folders
    that must be ignored. Returns the expected file names per class, sorted."""
    _image(root / "cat" / "a.jpg", "RGB", SIZES[0])
    _image(root / "cat" / "b.PNG", "L", SIZES[1])
    _image(root / "cat" / "sub" / "c.JPG", "RGB", SIZES[1], seed=3)
    _image(root / "cat" / ".hidden.jpg")
    (root / "cat" / "notes.txt").write_text("not an image")
    _image(root / "dog" / "d.png", "RGBA", SIZES[0])
    _image(root / "dog" / "e.jpeg", "L", SIZES[0])
    _image(root / "dog" / "f.bmp", "RGB", SIZES[1])
    _image(root / "dog" / "g.png", "P", SIZES[1])
    _image(root / "fish" / "only.jpg", "RGB", SIZES[1])
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    _image(root / ".cache" / "x.jpg")
    return {"cat": ["a.jpg", "b.PNG", "c.JPG"], "dog": ["d.png", "e.jpeg", "f.bmp", "g.png"],
            "fish": ["only.jpg"]}


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path / "folder"
    return root, _class_tree(root)


# ---- layouts -----------------------------------------------------------------------------------


def test_scan_image_folder(tree, caplog) -> None:
    root, expected = tree
    with caplog.at_level(logging.WARNING, logger="asymco.data.folders"):
        split = scan_image_folder(root)
    assert split.classes == ["cat", "dog", "fish"]  # "empty" and ".cache" are not classes
    assert "empty" in caplog.text
    assert [Path(p).name for p in split.paths] == [n for names in expected.values() for n in names]
    assert split.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 2]
    assert split.labels.dtype == np.int64
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in split.paths)
    check_split(split, name="train")


def test_scan_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        scan_image_folder(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    _image(tmp_path / "flat" / "loose.jpg")
    with pytest.raises(UserError, match="no class sub-folders"):
        scan_image_folder(tmp_path / "flat")
    (tmp_path / "blank" / "a").mkdir(parents=True)
    (tmp_path / "blank" / "a" / "x.txt").write_text("")
    with pytest.raises(UserError, match="holds no images"):
        scan_image_folder(tmp_path / "blank")


def test_check_split_errors(tmp_path: Path) -> None:
    _image(tmp_path / "one" / "only" / "a.jpg")
    with pytest.raises(UserError, match="at least 2 classes"):
        check_split(scan_image_folder(tmp_path / "one"), name="train")
    empty = FolderSplit(np.array([], dtype=str), np.array([], dtype=np.int64), ["a", "b"])
    with pytest.raises(UserError, match="no images"):
        check_split(empty, name="test")


def test_web_dataset(tmp_path: Path) -> None:
    _class_tree(tmp_path / "web" / "train")
    for name in ("cat", "dog", "fish"):
        _image(tmp_path / "web" / "val" / name / "v.jpg")
    train, val = web_dataset(tmp_path / "web")
    assert train.classes == val.classes == ["cat", "dog", "fish"]
    assert val.labels.tolist() == [0, 1, 2]
    assert len(train) == 8

    (tmp_path / "web" / "val" / "fish" / "v.jpg").unlink()  # fish is now an empty val folder
    _image(tmp_path / "web" / "val" / "owl" / "v.jpg")
    with pytest.raises(UserError, match=r"classes differ.*missing: fish; extra: owl"):
        web_dataset(tmp_path / "web")
    with pytest.raises(UserError, match="val does not exist"):
        _class_tree(tmp_path / "only-train" / "train")
        web_dataset(tmp_path / "only-train")


def _food(root: Path, classes: list[str]) -> None:
    meta = root / "meta"
    meta.mkdir(parents=True)
    (meta / "classes.txt").write_text("class_name\n" + "\n".join(reversed(classes)) + "\n")
    lines = ["class_name/key"]
    for i, name in enumerate(classes):
        for j in range(2):
            lines.append(f"{name}/{i}{j}.jpg")
            _image(root / "images" / name / f"{i}{j}.jpg", seed=i)
    (meta / "imagelist.tsv").write_text("\n".join(lines) + "\n")
    test = root / "food-101"
    (test / "meta").mkdir(parents=True)
    (test / "meta" / "classes.txt").write_text("\n".join(sorted(classes)) + "\n")
    (test / "meta" / "test.txt").write_text("\n".join(f"{c}/t{c}" for c in classes) + "\n")
    for name in classes:
        _image(test / "images" / name / f"t{name}.jpg")


def test_food101n(tmp_path: Path) -> None:
    root = tmp_path / "food"
    _food(root, ["ramen", "apple_pie", "sushi"])
    train, test = food101n(root, num_classes=3)
    assert train.classes == test.classes == ["apple_pie", "ramen", "sushi"]
    assert len(train) == 6  # the header line has no image extension and is dropped
    assert [Path(p).parent.name for p in train.paths] == ["ramen"] * 2 + ["apple_pie"] * 2 + [
        "sushi"] * 2
    assert train.labels.tolist() == [1, 1, 0, 0, 2, 2]
    assert test.labels.tolist() == [1, 0, 2]
    assert all(p.endswith(".jpg") and Path(p).is_file() for p in test.paths)

    with pytest.raises(UserError, match="lists 3 classes but 101 are expected"):
        food101n(root)
    other = tmp_path / "other"
    _food(other, ["ramen", "apple_pie", "udon"])
    with pytest.raises(UserError, match=r"classes differ.*missing: sushi; extra: udon"):
        food101n(root, other / "food-101", num_classes=3)
    (root / "images" / "sushi" / "20.jpg").unlink()
    with pytest.raises(UserError, match=r"1 image file\(s\) listed in .* do not exist.*20\.jpg"):
        food101n(root, num_classes=3)


def test_csv_dataset(tree, tmp_path: Path) -> None:
    root, _ = tree
    absolute = _image(tmp_path / "elsewhere" / "z.png")
    (root / "labels.csv").write_text(
        "id,path,label,source\n"
        "1,cat/a.jpg,cat,web\n"
        "2,dog/d.png,dog,web\n"
        f"3,{absolute},cat,web\n"
        "4,fish/only.jpg, bird ,web\n"
    )
    split = csv_dataset(root / "labels.csv")
    assert split.classes == ["bird", "cat", "dog"]
    assert split.labels.tolist() == [1, 2, 1, 0]
    assert split.paths.tolist() == [str(root / "cat/a.jpg"), str(root / "dog/d.png"),
                                    str(absolute), str(root / "fish/only.jpg")]

    (root / "ids.csv").write_text("path,label\ncat/a.jpg,0\ndog/d.png,2\n")
    split = csv_dataset(root / "ids.csv")
    assert split.classes == ["0", "1", "2"]
    assert split.labels.tolist() == [0, 2]


def test_csv_dataset_errors(tree) -> None:
    root, _ = tree
    cases = {
        "missing.csv": None,
        "empty.csv": "",
        "header.csv": "path,label\n",
        "columns.csv": "file,class\ncat/a.jpg,cat\n",
        "gone.csv": "path,label\ncat/a.jpg,cat\n" + "".join(f"no{i}.jpg,dog\n" for i in range(7)),
    }
    for name, text in cases.items():
        if text is not None:
            (root / name).write_text(text)
    messages = {
        "missing.csv": "does not exist",
        "empty.csv": "is empty",
        "header.csv": "no rows",
        "columns.csv": "columns path and label",
        "gone.csv": r"7 of the 8 image file\(s\) in .* do not exist \(.*no0.*no4\.jpg, \.\.\.\)",
    }
    for name, pattern in messages.items():
        with pytest.raises(UserError, match=pattern):
            csv_dataset(root / name)


# ---- bad images --------------------------------------------------------------------------------


@pytest.fixture
def bad_tree(tree) -> tuple[Path, Path, Path]:
    root, _ = tree
    corrupt, truncated = root / "cat" / "corrupt.jpg", root / "dog" / "t.jpg"
    return root, _corrupt_jpeg(corrupt), _truncated_jpeg(truncated)


@pytest.mark.parametrize("workers", [0, 2])
def test_verify_images_skip(bad_tree, caplog, workers: int) -> None:
    root, corrupt, truncated = bad_tree
    split = scan_image_folder(root)
    with caplog.at_level(logging.WARNING, logger="asymco.data.folders"):
        bad = verify_images(split.paths, workers=workers)  # truncated images load, as the reference
    assert split.paths[bad].tolist() == [str(corrupt)]
    assert str(corrupt) in caplog.text and "left out 1 of 10 images" in caplog.text

    bad = verify_images(split.paths, workers=workers, truncated_ok=False)
    assert sorted(split.paths[bad].tolist()) == sorted([str(corrupt), str(truncated)])
    headers_only = verify_images(split.paths, workers=workers, truncated_ok=False, decode=False)
    assert split.paths[headers_only].tolist() == [str(corrupt)]

    kept = keep_good_images(split, name="train", workers=workers)
    assert len(kept) == len(split) - 1 and str(corrupt) not in kept.paths
    assert kept.classes == split.classes


def test_verify_images_stop(bad_tree) -> None:
    root, corrupt, _ = bad_tree
    split = scan_image_folder(root)
    for workers in (0, 2):
        with pytest.raises(UserError, match=f"cannot read image {corrupt}"):
            verify_images(split.paths, workers=workers, on_bad_image="stop")
    dataset = FolderViewDataset(split.paths, split.labels, train=False, size=8, resize=8)
    with pytest.raises(UserError, match=f"cannot read image {corrupt}"):
        dataset[split.paths.tolist().index(str(corrupt))]


# ---- dataset and loaders -----------------------------------------------------------------------


@pytest.mark.parametrize(("size", "resize"), [(16, 18), (16, 16), (32, 20)])
def test_views_are_uint8_squares(tree, size: int, resize: int) -> None:
    split = scan_image_folder(tree[0])  # RGB, L, RGBA and palette images, two shapes
    train = FolderViewDataset(split.paths, split.labels, train=True, size=size, resize=resize)
    test = FolderViewDataset(split.paths, split.labels, train=False, size=size, resize=resize)
    for i in range(len(split)):
        index, (weak, strong), label = train[i]
        assert (index, label) == (i, split.labels[i])
        for view in (weak, strong):
            assert view.dtype == torch.uint8 and view.shape == (3, size, size)
        _, (view,), _ = test[i]
        assert view.dtype == torch.uint8 and view.shape == (3, size, size)
    train.views = ("weak",)
    assert len(train[0][1]) == 1
    train.views = ("weak", "weak", "strong")  # any number of views, independent draws
    first, second, third = train[0][1]
    assert not torch.equal(first, second) and third.shape == first.shape


def _loader(split: FolderSplit, seed: int, workers: int) -> FolderLoader:
    return FolderLoader(split.paths, split.labels, plan=BatchPlan(len(split.labels), 3, seed),
                        size=12, resize=14, normalize=Normalizer(IMAGENET_MEAN, IMAGENET_STD, CPU),
                        device=CPU, workers=workers)


def _run(loader: FolderLoader, strong: bool, epoch: int) -> list:
    views = ("weak", "strong") if strong else ("weak",)
    return [(b.index, *b.views, b.label) for b in loader.epoch(epoch, views=views)]


@pytest.mark.parametrize("workers", [0, 2])
def test_folder_loader(tree, workers: int) -> None:
    split = scan_image_folder(tree[0])
    loader = _loader(split, seed=7, workers=workers)
    assert len(loader) == 3 and loader.num_samples == 8
    first = _run(loader, strong=True, epoch=0)
    index = torch.cat([b[0] for b in first])
    assert sorted(index.tolist()) == list(range(8))  # every sample exactly once
    for index_, weak, strong, label in first:
        assert weak.dtype == torch.float32 and weak.shape[1:] == (3, 12, 12)
        assert strong.shape == weak.shape
        assert torch.equal(label, torch.from_numpy(split.labels)[index_])
    second = _run(loader, strong=False, epoch=1)
    assert all(len(b) == 3 for b in second)  # index, weak, label
    assert sorted(torch.cat([b[0] for b in second]).tolist()) == list(range(8))

    again = _loader(split, seed=7, workers=workers)  # same seed: same order and same pixels
    for a, b in zip(first + second, _run(again, True, 0) + _run(again, False, 1), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    other = _run(_loader(split, seed=8, workers=workers), True, 0)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other, strict=True))


def test_folder_test_batches(tree) -> None:
    split = scan_image_folder(tree[0])
    batches = folder_test_batches(split.paths, split.labels, size=12, resize=14, batch_size=3,
                                  workers=0, normalize=Normalizer(IMAGENET_MEAN, IMAGENET_STD, CPU),
                                  device=CPU)
    first, second = list(batches()), list(batches())
    assert torch.cat([y for _, y in first]).tolist() == split.labels.tolist()  # in order
    assert [x.shape for x, _ in first] == [(3, 3, 12, 12)] * 2 + [(2, 3, 12, 12)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))


# ---- RandAugment -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_randaugment_keeps_size_and_mode(tmp_path: Path, mode: str) -> None:
    img = Image.open(_image(tmp_path / "x.png", mode, (40, 30))).convert(mode)
    rng = random.Random(0)
    for name, op in OPS.items():
        for magnitude in range(1, 10):
            out = op(img, magnitude, rng)
            assert (out.size, out.mode) == (img.size, img.mode), name
    augment = RandAugmentUDA()
    outputs = [augment(img) for _ in range(50)]
    assert all((o.size, o.mode) == (img.size, img.mode) for o in outputs)
    assert any(o.tobytes() != img.tobytes() for o in outputs)
    with pytest.raises(ValueError, match="mode"):
        augment(img.convert("RGBA"))


def test_randaugment_is_deterministic(tmp_path: Path) -> None:
    img = Image.open(_image(tmp_path / "x.png", "RGB", (40, 30))).convert("RGB")
    augment = RandAugmentUDA()

    def draw() -> list[bytes]:
        random.seed(123)
        return [augment(img).tobytes() for _ in range(30)]

    assert draw() == draw()
    seeded = [augment(img, random.Random(5)).tobytes() for _ in range(3)]
    assert len(set(seeded)) == 1
