"""CIFAR-N human label files: the three formats, the real labels, and refusing unsafe pickles."""

from __future__ import annotations

import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from asymco.data.cifarn import (
    NUM_TRAIN,
    canonical_label_set,
    cifarn_label_sets,
    human_noisy_labels,
    load_cifarn_labels,
)
from asymco.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ASYMCO_SHARED_DATA", REPO.parent / "shared" / "data"))
CIFAR10_SETS = ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3")


pytestmark = pytest.mark.usefixtures("no_network")


# --- synthetic label files -----------------------------------------------------------------


def _labels(num_classes: int, rate: float, seed: int, n: int = NUM_TRAIN, dtype=np.int64):
    """Clean labels and a copy with a fraction `rate` moved to another class."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, num_classes, n)
    flip = rng.random(n) < rate
    noisy = np.where(flip, (clean + rng.integers(1, num_classes, n)) % num_classes, clean)
    return clean.astype(dtype), noisy.astype(dtype)


def _cifar100_arrays(dtype=np.int64, n: int = NUM_TRAIN) -> dict[str, np.ndarray]:
    clean, noisy = _labels(100, 0.4, seed=0, n=n, dtype=dtype)
    return {
        "clean_label": clean,
        "noisy_label": noisy,
        "clean_coarse_label": (clean // 5).astype(dtype),
        "noisy_coarse_label": (noisy // 5).astype(dtype),
    }


def _cifar10_arrays(dtype=np.int64, n: int = NUM_TRAIN) -> dict[str, np.ndarray]:
    clean, _ = _labels(10, 0.0, seed=1, n=n, dtype=dtype)
    arrays = {"clean_label": clean}
    for i, (name, rate) in enumerate(zip(CIFAR10_SETS, (0.09, 0.4, 0.17, 0.18, 0.18), strict=True)):
        rng = np.random.default_rng(10 + i)
        flip = rng.random(n) < rate
        arrays[name] = np.where(flip, (clean + 1) % 10, clean).astype(dtype)
    return arrays


def _save_pt(path: Path, obj, **kwargs) -> Path:
    torch.save(obj, path, **kwargs)
    return path


def _as_numpy1_pickle(src: Path, dst: Path) -> Path:
    """Rewrite a torch.save zip so its pickle names numpy 1.x's `numpy.core` module, as the
    official CIFAR-N files (saved in 2021) do."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(name, data)
    return dst


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_official_pt_round_trip_cifar100(tmp_path: Path, dtype):
    arrays = _cifar100_arrays(dtype)
    path = _save_pt(tmp_path / "CIFAR-100_human.pt", arrays)
    stored = load_cifarn_labels(path)
    assert stored.keys() == arrays.keys()
    for key, value in arrays.items():
        np.testing.assert_array_equal(stored[key], value)
    noisy, clean = human_noisy_labels(
        path, dataset="cifar100", label_set="noisy_label", num_samples=NUM_TRAIN, num_classes=100
    )
    assert noisy.dtype == clean.dtype == np.int64
    np.testing.assert_array_equal(noisy, arrays["noisy_label"])
    np.testing.assert_array_equal(clean, arrays["clean_label"])


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_official_pt_round_trip_cifar10_with_aliases(tmp_path: Path, dtype):
    arrays = _cifar10_arrays(dtype)
    path = _save_pt(tmp_path / "CIFAR-10_human.pt", arrays)
    sets = cifarn_label_sets(path, "cifar10")
    assert set(sets) == {"clean_label", *CIFAR10_SETS}
    assert all(v.dtype == np.int64 for v in sets.values())
    for alias, name in [
        ("aggre", "aggre_label"),
        ("worst", "worse_label"),
        ("random1", "random_label1"),
        ("random2", "random_label2"),
        ("random3", "random_label3"),
        ("worse_label", "worse_label"),
    ]:
        noisy, clean = human_noisy_labels(
            path, dataset="cifar10", label_set=alias, num_samples=NUM_TRAIN, num_classes=10
        )
        np.testing.assert_array_equal(noisy, arrays[name])
        np.testing.assert_array_equal(clean, arrays["clean_label"])


def test_numpy1_and_legacy_torch_formats(tmp_path: Path):
    arrays = _cifar100_arrays()
    modern = _save_pt(tmp_path / "modern.pt", arrays)
    old_numpy = _as_numpy1_pickle(modern, tmp_path / "numpy1.pt")
    assert b"numpy.core.multiarray" in zipfile.ZipFile(old_numpy).read("modern/data.pkl")
    legacy = _save_pt(tmp_path / "legacy.pt", arrays, _use_new_zipfile_serialization=False)
    for path in (old_numpy, legacy):
        sets = cifarn_label_sets(path, "cifar100")
        np.testing.assert_array_equal(sets["noisy_label"], arrays["noisy_label"])


def test_torch_tensors_are_accepted(tmp_path: Path):
    arrays = _cifar10_arrays(n=100)
    path = _save_pt(tmp_path / "tensors.pt", {k: torch.from_numpy(v) for k, v in arrays.items()})
    noisy, _ = human_noisy_labels(
        path, dataset="cifar10", label_set="aggre", num_samples=100, num_classes=10
    )
    np.testing.assert_array_equal(noisy, arrays["aggre_label"])


def test_npz_with_official_and_prefixed_keys(tmp_path: Path):
    c100, c10 = _cifar100_arrays(np.int32), _cifar10_arrays()
    official = tmp_path / "official.npz"
    np.savez(official, **c100)
    combined = tmp_path / "combined.npz"
    np.savez(
        combined,
        **{f"cifar100n_{k}": v for k, v in c100.items()},
        **{f"cifar10n_{k}": v for k, v in c10.items()},
    )
    assert set(load_cifarn_labels(combined)) >= {"cifar100n_noisy_label", "cifar10n_aggre_label"}
    for path in (official, combined):
        sets = cifarn_label_sets(path, "cifar100")
        assert set(sets) == {"clean_label", "noisy_label"}  # coarse labels are not label sets
        np.testing.assert_array_equal(sets["noisy_label"], c100["noisy_label"])
    sets = cifarn_label_sets(combined, "cifar10")
    assert set(sets) == {"clean_label", *CIFAR10_SETS}
    np.testing.assert_array_equal(sets["random_label3"], c10["random_label3"])


def test_label_set_names():
    assert canonical_label_set("cifar100", "noisy") == "noisy_label"
    assert canonical_label_set("cifar10", "worst") == "worse_label"
    with pytest.raises(UserError, match="aggre_label"):
        canonical_label_set("cifar10", "noisy_label")  # a CIFAR-100N name
    with pytest.raises(UserError, match="noisy_label"):
        canonical_label_set("cifar100", "aggre")
    with pytest.raises(UserError):
        canonical_label_set("cifar10", "clean_label")  # not noisy: no label set


# --- the real CIFAR-N labels ---------------------------------------------------------------


@pytest.fixture(scope="module")
def real_cifarn() -> Path:
    path = SHARED_DATA / "cifarn_labels.npz"
    if not path.is_file():
        message = f"real CIFAR-N labels not found at {path} (set ASYMCO_SHARED_DATA)"
        if os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get(
            "ASYMCO_REQUIRE_REAL_DATA"
        ):
            pytest.fail(message + "; CI must run the real-data tests")
        pytest.skip(message)
    return path


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("dataset", "label_set", "rate"),
    [
        ("cifar100", "noisy_label", 0.4020),
        ("cifar10", "aggre", 0.0901),
        ("cifar10", "worst", 0.4021),
        ("cifar10", "random1", 0.1723),
    ],
)
def test_real_cifarn_noise_rates(real_cifarn: Path, dataset: str, label_set: str, rate: float):
    num_classes = 100 if dataset == "cifar100" else 10
    noisy, clean = human_noisy_labels(
        real_cifarn,
        dataset=dataset,
        label_set=label_set,
        num_samples=NUM_TRAIN,
        num_classes=num_classes,
    )
    assert noisy.shape == clean.shape == (NUM_TRAIN,)
    assert noisy.dtype == clean.dtype == np.int64
    assert abs((noisy != clean).mean() - rate) < 5e-4


@pytest.mark.real_data
def test_real_cifarn_round_trips_through_official_pt_format(real_cifarn: Path, tmp_path: Path):
    """The combined npz, re-saved the way the official CIFAR-100_human.pt is, reads the same."""
    sets = cifarn_label_sets(real_cifarn, "cifar100")
    path = _save_pt(tmp_path / "CIFAR-100_human.pt", sets)
    again = cifarn_label_sets(_as_numpy1_pickle(path, tmp_path / "numpy1.pt"), "cifar100")
    for key, value in sets.items():
        np.testing.assert_array_equal(again[key], value)


# --- refusing unsafe files -----------------------------------------------------------------


class _Payload:
    """Pickles as a call to `func(*args)`: what a malicious label file would smuggle in."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _payloads(marker: Path) -> list[_Payload]:
    return [
        _Payload(os.system, f"touch {marker}"),
        _Payload(subprocess.call, ["touch", str(marker)]),
        _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
    ]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_malicious_torch_file_is_refused_not_run(tmp_path: Path, which: int):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[which]
    path = _save_pt(tmp_path / "CIFAR-10_human.pt", {"clean_label": payload})
    with pytest.raises(UserError, match=r"refused to load .*CIFAR-10_human\.pt"):
        load_cifarn_labels(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_raw_pickle_is_refused_not_run(tmp_path: Path, protocol: int):
    marker = tmp_path / "pwned"
    path = tmp_path / "CIFAR-100_human.pt"
    with path.open("wb") as f:
        pickle.dump({"clean_label": _payloads(marker)[0]}, f, protocol=protocol)
    with pytest.raises(UserError, match=r"CIFAR-100_human\.pt"):
        load_cifarn_labels(path)
    assert not marker.exists()


def test_object_arrays_are_refused_not_run(tmp_path: Path):
    marker = tmp_path / "pwned"
    objects = np.array([_payloads(marker)[0], 1], dtype=object)
    pt = _save_pt(tmp_path / "objects.pt", {"clean_label": objects})
    npz = tmp_path / "objects.npz"
    np.savez(npz, clean_label=objects)
    for path in (pt, npz):
        with pytest.raises(UserError, match="refused to load"):
            load_cifarn_labels(path)
    assert not marker.exists()


# --- validation errors ---------------------------------------------------------------------


def _assert_user_error(call, *patterns: str) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message  # one sentence, printed as is by the CLI
    for pattern in patterns:
        assert pattern in message, (pattern, message)
    return message


def test_missing_and_corrupt_files(tmp_path: Path):
    missing = tmp_path / "CIFAR-10_human.pt"
    _assert_user_error(lambda: load_cifarn_labels(missing), str(missing), "does not exist")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a pickle")
    _assert_user_error(lambda: load_cifarn_labels(garbage), str(garbage), "cannot read")
    good = _save_pt(tmp_path / "good.pt", _cifar10_arrays(n=100))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    _assert_user_error(lambda: load_cifarn_labels(truncated), str(truncated))
    np.savez(tmp_path / "good.npz", **_cifar10_arrays(n=100))
    bad_npz = tmp_path / "bad.npz"
    data = (tmp_path / "good.npz").read_bytes()
    bad_npz.write_bytes(data[:200] + b"\x00" * 64 + data[264:])
    _assert_user_error(lambda: cifarn_label_sets(bad_npz, "cifar10"), str(bad_npz))


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ([np.arange(3)], "not a dict"),
        (np.arange(3), "not a dict"),
        ({}, "not a dict"),
        ({1: np.arange(3)}, "non-string key"),
        ({"clean_label": [0, 1, 2]}, "not an array"),
        ({"clean_label": np.zeros(3, dtype=np.float32)}, "dtype float32"),
        ({"clean_label": np.zeros(3, dtype=bool)}, "dtype bool"),
        ({"clean_label": np.zeros((3, 2), dtype=np.int64)}, "shape (3, 2)"),
    ],
)
def test_malformed_contents(tmp_path: Path, obj, expected: str):
    path = _save_pt(tmp_path / "labels.pt", obj)
    _assert_user_error(lambda: load_cifarn_labels(path), str(path), expected)


def test_wrong_lengths(tmp_path: Path):
    path = _save_pt(tmp_path / "short.pt", _cifar100_arrays(n=49_999))
    _assert_user_error(lambda: cifarn_label_sets(path, "cifar100"), "(49999,)", "50000")
    full = _save_pt(tmp_path / "full.pt", _cifar100_arrays())
    _assert_user_error(
        lambda: human_noisy_labels(
            full, dataset="cifar100", label_set="noisy", num_samples=40_000, num_classes=100
        ),
        "(50000,)",
        "40000",
    )


def test_labels_out_of_range(tmp_path: Path):
    arrays = _cifar10_arrays(n=100)
    arrays["worse_label"][7] = 10
    too_big = _save_pt(tmp_path / "too_big.pt", arrays)
    _assert_user_error(
        lambda: cifarn_label_sets(too_big, "cifar10", num_samples=100), "worse_label", "[0, 10)"
    )
    arrays = _cifar10_arrays(n=100)
    arrays["clean_label"][0] = -1
    negative = _save_pt(tmp_path / "negative.pt", arrays)
    _assert_user_error(
        lambda: human_noisy_labels(
            negative, dataset="cifar10", label_set="aggre", num_samples=100, num_classes=10
        ),
        "clean_label",
        "-1",
    )
    # CIFAR-100N labels checked against 10 classes: the caller's class count is enforced too.
    c100 = _save_pt(tmp_path / "c100.pt", _cifar100_arrays(n=100))
    _assert_user_error(
        lambda: cifarn_label_sets(c100, "cifar100", num_samples=100, num_classes=10), "[0, 10)"
    )


def test_file_of_the_other_dataset(tmp_path: Path):
    c10 = _save_pt(tmp_path / "CIFAR-10_human.pt", _cifar10_arrays(n=100))
    _assert_user_error(
        lambda: human_noisy_labels(
            c10, dataset="cifar100", label_set="noisy", num_samples=100, num_classes=100
        ),
        "CIFAR-10N",
        "noisy_label",
    )
    only_c10 = tmp_path / "only_c10.npz"
    np.savez(only_c10, **{f"cifar10n_{k}": v for k, v in _cifar10_arrays(n=100).items()})
    _assert_user_error(lambda: cifarn_label_sets(only_c10, "cifar100"), "cifar100n_")


def test_missing_keys_and_unknown_names(tmp_path: Path):
    arrays = _cifar10_arrays(n=100)
    no_clean = _save_pt(tmp_path / "no_clean.pt", {k: arrays[k] for k in CIFAR10_SETS})
    _assert_user_error(lambda: cifarn_label_sets(no_clean, "cifar10", num_samples=100), "clean")
    partial = _save_pt(
        tmp_path / "partial.pt", {k: arrays[k] for k in ("clean_label", "aggre_label")}
    )
    _assert_user_error(
        lambda: human_noisy_labels(
            partial, dataset="cifar10", label_set="worst", num_samples=100, num_classes=10
        ),
        "worse_label",
        "aggre_label",
    )
    _assert_user_error(
        lambda: human_noisy_labels(
            partial, dataset="cifar10", label_set="bogus", num_samples=100, num_classes=10
        ),
        "bogus",
        "random_label1",
    )
    _assert_user_error(lambda: cifarn_label_sets(partial, "svhn"), "svhn")  # type: ignore[arg-type]
    _assert_user_error(
        lambda: human_noisy_labels(
            partial, dataset="svhn", label_set="aggre", num_samples=100, num_classes=10
        ),
        "svhn",
    )
