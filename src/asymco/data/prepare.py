"""A run's data: the source's images with its noisy labels applied (`prepare_data`), what the
engine trains and evaluates on. (The noise models themselves are `noise.py`.)

Order matters for reproducing the protocol: the noise is drawn on the **full** training set in
file order, then (optionally) a seeded subset is taken, then the test set is filtered to the
known classes. True labels stay here; methods only ever see `noisy_label`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asymco.config import DataConfig, NoiseConfig
from asymco.data.cifarn import canonical_label_set, human_noisy_labels
from asymco.data.datasets import find_labels_file, load_dataset
from asymco.data.noise import known_classes, make_noisy_labels
from asymco.data.sources import Source
from asymco.errors import UserError
from asymco.text import printable


@dataclass(frozen=True)
class NoisyData:
    images: np.ndarray
    """(N, H, W, C) uint8 training images (the subset, if one was asked for)."""
    noisy_label: np.ndarray
    """(N,) int64 observed labels, the only labels a method sees."""
    is_clean: np.ndarray | None
    """(N,) bool: observed label equals the true label (open-set samples are never clean);
    None when the truth is unknown (real-noise data)."""
    source_index: np.ndarray
    """(N,) int64 position of each training sample in the full training set."""
    test_images: np.ndarray
    test_label: np.ndarray
    num_classes: int
    """K: the number of outputs (known classes)."""
    classes: list[str]
    noisy_labels_full: np.ndarray
    """(N_full,) int64 noisy labels of the whole training set in file order."""
    transition: np.ndarray | None
    noise_rate_actual: float | None
    """Share of the full training set whose observed label differs from the true one."""
    origin: str
    paths: np.ndarray | None = None
    """(N,) image file paths of the training samples, for data read from files."""
    sample_id: np.ndarray | None = None
    """(N,) each sample's position in the full training set as the user gave it (the `index`
    of label_issues.csv)."""


def prepare_data(data: DataConfig, noise: NoiseConfig, *, workers: int = 0) -> NoisyData:
    """Load the dataset `data` names and apply `noise` (`workers` threads check image files)."""
    return apply_noise(load_dataset(data, workers=workers), data, noise)


def describe_data(data: NoisyData, noise: NoiseConfig) -> str:
    """The `data:` line a run starts with."""
    rate = "unknown" if data.noise_rate_actual is None else f"{data.noise_rate_actual:.5f}"
    kind = noise.kind if noise.kind in ("none", "human") else f"{noise.kind}@{noise.rate:g}"
    return (
        f"data: {printable(data.origin)} | {len(data.noisy_label)} train / "
        f"{len(data.test_label)} test images, {data.num_classes} classes, noise {kind} "
        f"(actual rate {rate})"
    )


def apply_noise(source: Source, data: DataConfig, noise: NoiseConfig) -> NoisyData:
    num_total = len(source.classes)
    k = known_classes(num_total, noise.openset_ratio)
    if noise.kind in ("symmetric", "asymmetric") and noise.rate == 0.0:
        raise UserError(
            f"noise.rate must be above 0 for {noise.kind} noise (or set noise.kind=none)"
        )
    if noise.kind == "human":
        noisy_full, clean = _human_labels(source, noise, data)
        matrix, truth = None, clean
    else:
        kind = "none" if noise.kind == "none" else noise.kind
        noisy_full, matrix = make_noisy_labels(
            source.y_train,
            kind=kind,
            rate=noise.rate,
            num_classes=num_total,
            openset_ratio=noise.openset_ratio,
            seed=noise.seed,
        )
        truth = source.y_train if source.clean_known else None
    # Separate streams, so the test subset does not depend on whether/how the train set is cut.
    train_rng = np.random.RandomState([data.subset_seed, 0])
    test_rng = np.random.RandomState([data.subset_seed, 1])
    n_full = len(noisy_full)
    if data.subset is not None and data.subset < n_full:
        index = np.sort(train_rng.choice(n_full, size=data.subset, replace=False))
    else:
        index = np.arange(n_full)
    known_test = np.flatnonzero(source.y_test < k)
    if data.test_subset is not None and data.test_subset < len(known_test):
        known_test = np.sort(test_rng.choice(known_test, size=data.test_subset, replace=False))
    if len(index) == 0 or len(known_test) == 0:
        raise UserError(
            "the dataset is empty after filtering; check data.subset and data.test_subset"
        )
    return NoisyData(
        images=source.x_train[index],
        noisy_label=noisy_full[index],
        is_clean=None if truth is None else noisy_full[index] == truth[index],
        source_index=index.astype(np.int64),
        test_images=source.x_test[known_test],
        test_label=source.y_test[known_test],
        num_classes=k,
        classes=list(source.classes[:k]),
        noisy_labels_full=noisy_full,
        transition=matrix,
        noise_rate_actual=None if truth is None else float(np.mean(noisy_full != truth)),
        origin=source.origin,
        paths=source.x_train[index] if source.is_files else None,
        sample_id=(index if source.train_ids is None else source.train_ids[index]).astype(np.int64),
    )


def _human_labels(source: Source, noise: NoiseConfig, data: DataConfig) -> tuple[np.ndarray, ...]:
    """CIFAR-N human labels, checked to be aligned with the images' own (clean) labels."""
    if data.dataset not in ("cifar10", "cifar100"):
        raise UserError("noise.kind=human needs data.dataset cifar10 or cifar100 (CIFAR-N)")
    canonical_label_set(data.dataset, noise.label_set)  # a bad name is told before any file
    path = noise.labels_file or find_labels_file(data.root, data.dataset)
    noisy, clean = human_noisy_labels(
        path,
        dataset=data.dataset,
        label_set=noise.label_set,
        num_samples=len(source.y_train),
        num_classes=len(source.classes),
    )
    if not np.array_equal(clean, source.y_train):
        raise UserError(
            f"the clean labels in {path} do not match {data.dataset}'s training "
            "labels; is the file for this dataset and in the official order?"
        )
    return noisy, clean
