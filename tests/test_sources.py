"""Data sources (.npz, torchvision folder, torchvision download, digits) and `apply_noise`.

Everything here is synthetic and offline: torchvision's real fetcher is replaced by a guard that
fails the test, and the download tests install their own fake `download`.
"""

from __future__ import annotations

import itertools
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from torchvision import datasets as tv_datasets

from asymco.config import DataConfig, NoiseConfig
from asymco.data.noise import make_noisy_labels
from asymco.data.prepare import apply_noise
from asymco.data.sources import Source, cifar_class_names, default_root, load_source
from asymco.errors import UserError

CIFAR10 = tv_datasets.CIFAR10
CIFAR100 = tv_datasets.CIFAR100
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


@pytest.fixture(autouse=True)
def _no_real_download(monkeypatch):
    """A real download would need the network: make any attempt fail the test loudly.

    AssertionError is neither RuntimeError nor OSError, so sources.py cannot turn it into a
    UserError and hide it.
    """

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to really download {args[:1]}")

    monkeypatch.setattr(tv_datasets.cifar, "download_and_extract_archive", refuse)


def _images(n: int, seed: int, channels: int = 3, size: int = 32) -> np.ndarray:
    return (
        np.random.RandomState(seed).randint(0, 256, size=(n, size, size, channels)).astype(np.uint8)
    )


def _labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    """Random labels that always include 0 and num_classes - 1 (both ends of the range)."""
    y = np.random.RandomState(seed).randint(0, num_classes, size=n).astype(np.int64)
    y[0], y[-1] = 0, num_classes - 1
    return y


def _arrays(name: str = "cifar100", n_train: int = 40, n_test: int = 20) -> dict:
    k = NUM_CLASSES[name]
    return {
        "x_train": _images(n_train, 1),
        "y_train": _labels(n_train, k, 2),
        "x_test": _images(n_test, 3),
        "y_test": _labels(n_test, k, 4),
    }


# --------------------------------------------------------------------------------------------
# .npz


@pytest.mark.parametrize("as_file", [False, True], ids=["folder", "file"])
def test_npz_cifar100_round_trip(tmp_path, as_file):
    arrays = _arrays("cifar100")
    path = tmp_path / ("my_cifar.npz" if as_file else "cifar100.npz")
    np.savez(path, **arrays)
    root = path if as_file else tmp_path

    src = load_source("cifar100", root=str(root), download=False)

    # The arrays come back unchanged; labels as int64.
    for key, value in arrays.items():
        got = getattr(src, key)
        np.testing.assert_array_equal(got, value)
        assert got.shape == value.shape
    assert src.x_train.dtype == np.uint8 and src.x_test.dtype == np.uint8
    assert src.y_train.dtype == np.int64 and src.y_test.dtype == np.int64
    # The canonical fine-label names, in class-id order.
    assert len(src.classes) == 100 and len(set(src.classes)) == 100
    assert src.classes[0] == "apple" and src.classes[99] == "worm"
    assert "npz" in src.origin and str(path) in src.origin


def test_npz_cifar10_names_and_narrow_label_dtype(tmp_path):
    arrays = _arrays("cifar10")
    arrays["y_train"] = arrays["y_train"].astype(np.uint8)  # any integer dtype is accepted
    np.savez(tmp_path / "cifar10.npz", **arrays)

    src = load_source("cifar10", root=str(tmp_path), download=False)

    assert src.classes[0] == "airplane" and src.classes[-1] == "truck"
    assert len(src.classes) == 10
    assert src.y_train.dtype == np.int64
    np.testing.assert_array_equal(src.y_train, arrays["y_train"])


def test_npz_accepts_single_channel_images(tmp_path):
    arrays = _arrays("cifar10")
    arrays["x_train"] = _images(40, 5, channels=1)
    arrays["x_test"] = _images(20, 6, channels=1)
    np.savez(tmp_path / "gray.npz", **arrays)

    src = load_source("cifar10", root=str(tmp_path / "gray.npz"), download=False)

    assert src.x_train.shape == (40, 32, 32, 1)
    np.testing.assert_array_equal(src.x_test, arrays["x_test"])


def test_npz_wins_over_torchvision_folder(tmp_path):
    # Documented order: root/<name>.npz is tried before the torchvision folder.
    (tmp_path / "cifar-100-python").mkdir()
    np.savez(tmp_path / "cifar100.npz", **_arrays("cifar100"))

    src = load_source("cifar100", root=str(tmp_path), download=False)

    assert src.origin.startswith("npz ")


def test_root_none_uses_asymco_data(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMCO_DATA", str(tmp_path))
    np.savez(tmp_path / "cifar10.npz", **_arrays("cifar10"))

    assert default_root() == tmp_path
    src = load_source("cifar10", root=None, download=False)
    assert str(tmp_path / "cifar10.npz") in src.origin


def _drop(arrays, *keys):
    return {k: v for k, v in arrays.items() if k not in keys}


BAD_NPZ = {
    "missing_arrays": (lambda a: _drop(a, "x_test", "y_test"), "x_test, y_test"),
    "float_images": (lambda a: {**a, "x_train": a["x_train"].astype(np.float32)}, "uint8"),
    "3d_images": (lambda a: {**a, "x_test": a["x_test"][..., 0]}, "(N, H, W, C)"),
    "four_channels": (
        lambda a: {**a, "x_train": np.concatenate([a["x_train"], a["x_train"][..., :1]], -1)},
        "(N, H, W, C)",
    ),
    "label_count_mismatch": (lambda a: {**a, "y_train": a["y_train"][:-1]}, "40 integer labels"),
    "labels_2d": (lambda a: {**a, "y_test": a["y_test"][:, None]}, "y_test"),
    "float_labels": (lambda a: {**a, "y_train": a["y_train"].astype(np.float64)}, "integer"),
    "label_100": (lambda a: {**a, "y_train": np.full(40, 100)}, "[0, 100)"),
    "label_negative": (lambda a: {**a, "y_test": np.full(20, -1)}, "[0, 100)"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_contents_raise_user_error_naming_the_file(tmp_path, case):
    mutate, detail = BAD_NPZ[case]
    path = tmp_path / "cifar100.npz"
    np.savez(path, **mutate(_arrays("cifar100")))

    with pytest.raises(UserError) as err:
        load_source("cifar100", root=str(tmp_path), download=False)

    # The message names the file and says what is wrong with it.
    assert str(path) in str(err.value)
    assert detail in str(err.value)


def test_cifar10_label_10_is_out_of_range(tmp_path):
    arrays = _arrays("cifar10")
    arrays["y_test"][3] = 10
    np.savez(tmp_path / "cifar10.npz", **arrays)

    with pytest.raises(UserError, match=r"y_test must lie in \[0, 10\)"):
        load_source("cifar10", root=str(tmp_path), download=False)


def _write_text(path: Path) -> None:
    path.write_text("this is not a zip archive\n")


def _write_truncated(path: Path) -> None:
    np.savez(path, **_arrays("cifar100"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "write", [_write_text, _write_truncated, lambda p: None], ids=["text", "truncated", "absent"]
)
def test_unreadable_npz_raises_user_error(tmp_path, write):
    path = tmp_path / "data.npz"
    write(path)

    with pytest.raises(UserError) as err:
        load_source("cifar100", root=str(path), download=False)

    assert str(path) in str(err.value)
    assert "cannot read the .npz archive" in str(err.value)


def test_npz_with_an_empty_split_gives_user_error(tmp_path):
    arrays = _arrays("cifar100")
    arrays["x_test"], arrays["y_test"] = arrays["x_test"][:0], arrays["y_test"][:0]
    np.savez(tmp_path / "cifar100.npz", **arrays)

    with pytest.raises(UserError):
        load_source("cifar100", root=str(tmp_path), download=False)


def test_npy_file_named_npz_gives_user_error(tmp_path):
    path = tmp_path / "data.npz"
    with path.open("wb") as handle:
        np.save(handle, np.zeros(3))

    with pytest.raises(UserError):
        load_source("cifar100", root=str(path), download=False)


def test_unknown_dataset_is_a_user_error():
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        load_source("mnist", root=None, download=False)


# --------------------------------------------------------------------------------------------
# torchvision folder and download


def _pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as handle:
        pickle.dump(obj, handle)


def _flat_chw(x: np.ndarray) -> np.ndarray:
    """torchvision's on-disk layout: (N, 3072) uint8, each row the CHW image flattened."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1)


def write_torchvision_folder(root: Path, name: str, arrays: dict, classes: list[str]) -> Path:
    """Write CIFAR the way torchvision's extracted archive lays it out.

    The real files are Python-2 pickles that torchvision reads with encoding="latin1", which turns
    their keys into str; so the keys here are str ("data", not b"data").
    """
    folder = root / ("cifar-100-python" if name == "cifar100" else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    x_tr, y_tr = _flat_chw(arrays["x_train"]), arrays["y_train"].tolist()
    x_te, y_te = _flat_chw(arrays["x_test"]), arrays["y_test"].tolist()
    if name == "cifar100":
        _pickle(folder / "train", {"data": x_tr, "fine_labels": y_tr})
        _pickle(folder / "test", {"data": x_te, "fine_labels": y_te})
        _pickle(folder / "meta", {"fine_label_names": classes})
    else:
        bounds = np.linspace(0, len(y_tr), 6).astype(int)  # five training batches
        for i, (lo, hi) in enumerate(itertools.pairwise(bounds), start=1):
            _pickle(folder / f"data_batch_{i}", {"data": x_tr[lo:hi], "labels": y_tr[lo:hi]})
        _pickle(folder / "test_batch", {"data": x_te, "labels": y_te})
        _pickle(folder / "batches.meta", {"label_names": classes})
    return folder


@pytest.fixture
def trust_generated_files(monkeypatch):
    """Accept generated CIFAR files although their md5s cannot match the real archive's.

    torchvision hard-codes the md5 of every real CIFAR file and checks them in two places:
    `_check_integrity` (the data files) and `_load_meta` (the meta file, through the module-level
    `check_integrity` with `meta["md5"]`). Files generated here can never match, so both checks
    are relaxed: `_check_integrity` returns True and the meta md5 is None (existence only).
    """
    for cls in (CIFAR10, CIFAR100):
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": None})


@pytest.mark.parametrize("name", ["cifar100", "cifar10"])
def test_torchvision_folder_round_trip(tmp_path, trust_generated_files, name):
    arrays = _arrays(name, n_train=30, n_test=10)
    classes = [f"class_{i}" for i in range(NUM_CLASSES[name])]  # distinct from the real names
    folder = write_torchvision_folder(tmp_path, name, arrays, classes)

    src = load_source(name, root=str(tmp_path), download=False)

    # Images come back NHWC uint8, exactly as written; labels and names as written.
    assert src.x_train.shape == (30, 32, 32, 3) and src.x_train.dtype == np.uint8
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(src, key), arrays[key])
    assert src.y_train.dtype == np.int64 and src.y_test.dtype == np.int64
    assert src.classes == classes  # read from the meta file, not the built-in list
    assert "torchvision folder" in src.origin and str(folder) in src.origin


def test_folder_absent_without_download_mentions_download(tmp_path):
    with pytest.raises(UserError) as err:
        load_source("cifar100", root=str(tmp_path), download=False)

    message = str(err.value)
    assert "download" in message
    assert str(tmp_path) in message and "cifar-100-python" in message


def test_corrupted_folder_is_a_user_error(tmp_path):
    # No integrity patch: torchvision's real md5 check rejects the generated files and raises
    # RuntimeError("Dataset not found or corrupted"), which sources.py turns into a UserError.
    names = cifar_class_names("cifar100")
    write_torchvision_folder(tmp_path, "cifar100", _arrays("cifar100"), names)

    with pytest.raises(UserError) as err:
        load_source("cifar100", root=str(tmp_path), download=False)

    assert "missing or corrupted" in str(err.value) and str(tmp_path) in str(err.value)
    assert err.value.__suppress_context__  # `from None`: one sentence, no chained traceback


@pytest.fixture
def fake_download(monkeypatch):
    """Replace CIFAR100.download (the method that fetches); returns the list of roots it got."""
    calls: list[str] = []
    state = {"effect": None}

    def download(self):
        calls.append(self.root)
        effect = state["effect"]
        if isinstance(effect, BaseException):
            raise effect
        if effect is not None:
            effect(Path(self.root))

    monkeypatch.setattr(CIFAR100, "download", download)

    def install(effect=None):
        state["effect"] = effect
        return calls

    return install


def test_download_into_root(tmp_path, trust_generated_files, fake_download, monkeypatch):
    arrays = _arrays("cifar100", n_train=20, n_test=8)
    names = cifar_class_names("cifar100")
    root = tmp_path / "cache" / "nested"  # the cache does not exist yet: sources.py creates it
    monkeypatch.setenv("ASYMCO_DATA", str(root))
    calls = fake_download(lambda into: write_torchvision_folder(into, "cifar100", arrays, names))

    src = load_source("cifar100", root=None, download=True)

    # torchvision was asked to download exactly once, into exactly that root.
    assert [Path(c) for c in calls] == [root]
    np.testing.assert_array_equal(src.x_train, arrays["x_train"])
    np.testing.assert_array_equal(src.y_test, arrays["y_test"])
    assert src.classes[0] == "apple"


def test_present_folder_is_not_downloaded_again(tmp_path, trust_generated_files, fake_download):
    arrays = _arrays("cifar100", n_train=20, n_test=8)
    write_torchvision_folder(tmp_path, "cifar100", arrays, cifar_class_names("cifar100"))
    calls = fake_download(AssertionError("must not download"))

    src = load_source("cifar100", root=str(tmp_path), download=True)

    assert calls == []
    np.testing.assert_array_equal(src.y_train, arrays["y_train"])


@pytest.mark.parametrize(
    "error",
    [OSError("no network"), urllib.error.URLError("no network")],
    ids=["OSError", "URLError"],
)
def test_offline_download_is_a_user_error(tmp_path, fake_download, error):
    # Offline, urllib raises URLError (an OSError): the user gets one sentence, not a traceback.
    fake_download(error)

    with pytest.raises(UserError) as err:
        load_source("cifar100", root=str(tmp_path), download=True)

    message = str(err.value)
    assert "could not download cifar100" in message
    assert str(tmp_path) in message and "no network" in message
    assert err.value.__suppress_context__


def test_corrupt_download_is_a_user_error(tmp_path, fake_download):
    # torchvision raises RuntimeError when the downloaded archive's md5 does not match.
    fake_download(RuntimeError("File not found or corrupted."))

    with pytest.raises(UserError) as err:
        load_source("cifar100", root=str(tmp_path), download=True)

    message = str(err.value)
    assert "missing or corrupted" in message
    assert str(tmp_path) in message and "File not found or corrupted." in message


# --------------------------------------------------------------------------------------------
# digits


def test_digits_split_shapes_and_values():
    src = load_source("digits", root=None, download=False, seed=0, test_fraction=0.2)

    assert src.x_train.shape == (1437, 8, 8, 1) and src.x_test.shape == (360, 8, 8, 1)
    assert src.x_train.dtype == np.uint8 and src.y_train.dtype == np.int64
    # 0..16 scaled to the full uint8 range.
    both = np.concatenate([src.x_train, src.x_test])
    assert both.min() == 0 and both.max() == 255
    assert src.classes == [str(d) for d in range(10)]
    assert src.origin == "scikit-learn digits"


def test_digits_split_is_stratified():
    src = load_source("digits", root=None, download=False, seed=0, test_fraction=0.2)
    every = np.concatenate([src.y_train, src.y_test])

    for c in range(10):
        overall = np.mean(every == c)
        # Each class's share in each split is within 2 percentage points of its overall share.
        assert abs(np.mean(src.y_train == c) - overall) < 0.02
        assert abs(np.mean(src.y_test == c) - overall) < 0.02


def test_digits_split_is_seeded():
    a = load_source("digits", root=None, download=False, seed=0)
    b = load_source("digits", root=None, download=False, seed=0)
    c = load_source("digits", root=None, download=False, seed=1)

    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_test, c.x_test)


# --------------------------------------------------------------------------------------------
# apply_noise


def _source(num_classes: int = 100, n_train: int = 600, n_test: int = 300) -> Source:
    """Synthetic source whose images encode their own index (pixel 0 = index // 256, 1 = % 256)."""
    rng = np.random.RandomState(7)
    return Source(
        x_train=_indexed(n_train),
        y_train=rng.permutation(np.arange(n_train) % num_classes).astype(np.int64),
        x_test=_indexed(n_test),
        y_test=rng.permutation(np.arange(n_test) % num_classes).astype(np.int64),
        classes=[f"c{i}" for i in range(num_classes)],
        origin="synthetic",
    )


def _indexed(n: int) -> np.ndarray:
    x = np.zeros((n, 2, 2, 3), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    return x


def _index_of(x: np.ndarray) -> np.ndarray:
    """The training/test position each image was made from (inverse of `_indexed`)."""
    return x[:, 0, 0, 0].astype(np.int64) * 256 + x[:, 0, 0, 1]


def test_noise_is_drawn_on_the_full_training_set():
    src = _source()
    noise = NoiseConfig(kind="symmetric", rate=0.4, seed=0)

    full = apply_noise(src, DataConfig(), noise)
    sub = apply_noise(src, DataConfig(subset=100, subset_seed=3), noise)

    # Same full-set noise with or without a subset, and it is the file-order draw on all labels.
    np.testing.assert_array_equal(full.noisy_labels_full, sub.noisy_labels_full)
    expected, _ = make_noisy_labels(src.y_train, kind="symmetric", rate=0.4, num_classes=100)
    np.testing.assert_array_equal(sub.noisy_labels_full, expected)
    # The subset's labels, images and cleanliness are those rows of the full set.
    assert len(sub.source_index) == 100 and sub.source_index.dtype == np.int64
    assert np.all(np.diff(sub.source_index) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(sub.noisy_label, full.noisy_labels_full[sub.source_index])
    np.testing.assert_array_equal(_index_of(sub.images), sub.source_index)
    np.testing.assert_array_equal(sub.is_clean, sub.noisy_label == src.y_train[sub.source_index])
    # Without a subset every sample is kept in file order.
    np.testing.assert_array_equal(full.source_index, np.arange(600))


def test_subset_is_seeded():
    src = _source()
    noise = NoiseConfig(rate=0.2)

    a = apply_noise(src, DataConfig(subset=50, subset_seed=1), noise)
    b = apply_noise(src, DataConfig(subset=50, subset_seed=1), noise)
    c = apply_noise(src, DataConfig(subset=50, subset_seed=2), noise)

    np.testing.assert_array_equal(a.source_index, b.source_index)
    assert not np.array_equal(a.source_index, c.source_index)
    # The noise seed, not the subset seed, decides the labels.
    np.testing.assert_array_equal(a.noisy_labels_full, c.noisy_labels_full)


def test_subset_larger_than_the_set_keeps_everything():
    src = _source()
    out = apply_noise(src, DataConfig(subset=10_000), NoiseConfig(rate=0.2))

    np.testing.assert_array_equal(out.source_index, np.arange(600))


def test_test_subset():
    src = _source()
    noise = NoiseConfig(rate=0.2)

    a = apply_noise(src, DataConfig(test_subset=40, subset_seed=5), noise)
    b = apply_noise(src, DataConfig(test_subset=40, subset_seed=5), noise)
    c = apply_noise(src, DataConfig(test_subset=40, subset_seed=6), noise)

    assert len(a.test_label) == 40 and len(a.test_images) == 40
    picked = _index_of(a.test_images)
    assert np.all(np.diff(picked) > 0)  # distinct test images, in file order
    np.testing.assert_array_equal(a.test_label, src.y_test[picked])  # images match labels
    np.testing.assert_array_equal(picked, _index_of(b.test_images))
    assert not np.array_equal(picked, _index_of(c.test_images))
    # The training set is untouched by test_subset, and the test subset by data.subset.
    assert len(a.source_index) == 600
    d = apply_noise(src, DataConfig(test_subset=40, subset=100, subset_seed=5), noise)
    np.testing.assert_array_equal(picked, _index_of(d.test_images))


def test_openset_ratio_keeps_known_classes():
    src = _source()
    out = apply_noise(src, DataConfig(), NoiseConfig(kind="symmetric", rate=0.4, openset_ratio=0.2))

    assert out.num_classes == 80
    assert out.classes == [f"c{i}" for i in range(80)]
    # The test set keeps exactly the samples of classes < 80.
    assert out.test_label.max() < 80
    assert len(out.test_label) == int(np.sum(src.y_test < 80))
    np.testing.assert_array_equal(out.test_label, src.y_test[_index_of(out.test_images)])
    # No sample is ever labelled with an open-set class, and open-set samples are never clean.
    assert out.noisy_labels_full.max() < 80 and out.noisy_label.max() < 80
    openset = src.y_train >= 80
    assert openset.sum() == 120
    assert not out.is_clean[openset].any()
    assert out.transition is not None and out.transition.shape == (100, 100)


def test_noise_rate_actual():
    src = _source()
    out = apply_noise(src, DataConfig(subset=60), NoiseConfig(kind="symmetric", rate=0.4))

    # Measured on the full training set, not the subset.
    assert out.noise_rate_actual == pytest.approx(np.mean(out.noisy_labels_full != src.y_train))
    assert 0.3 < out.noise_rate_actual < 0.5


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
def test_zero_rate_with_noise_is_a_user_error(kind):
    with pytest.raises(UserError, match=r"noise\.rate must be above 0"):
        apply_noise(_source(), DataConfig(), NoiseConfig(kind=kind, rate=0.0))


def test_kind_none_leaves_labels_clean():
    src = _source()
    out = apply_noise(src, DataConfig(subset=80), NoiseConfig(kind="none", rate=0.0))

    assert out.is_clean.all()
    np.testing.assert_array_equal(out.noisy_labels_full, src.y_train)
    np.testing.assert_array_equal(out.noisy_label, src.y_train[out.source_index])
    assert out.noise_rate_actual == 0.0 and out.transition is None


def test_empty_after_filtering_is_a_user_error():
    # Every test sample belongs to an open-set class, so nothing is left to evaluate on.
    src = _source()
    src = Source(
        src.x_train, src.y_train, src.x_test, np.full_like(src.y_test, 95), src.classes, "x"
    )

    with pytest.raises(UserError, match="empty after filtering"):
        apply_noise(src, DataConfig(), NoiseConfig(rate=0.2, openset_ratio=0.2))
