"""Synthetic label noise: the CIFAR100N / CIFAR80N protocol of Jo-SRC and ACT (act-spec C.1).

All functions are pure: the randomness is an explicit `numpy.random.RandomState`, because the
protocol's noisy labels are defined by that generator's `multinomial` draws. Reproducing them
exactly needs the same generator, the same float64 transition matrix and one draw per sample in
dataset file order.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from asymco.errors import UserError


def known_classes(num_classes: int, openset_ratio: float) -> int:
    """K, the number of known classes: int(C * (1 - openset_ratio)) as the protocol computes it."""
    return int(num_classes * (1 - openset_ratio))


def transition_matrix(
    kind: Literal["symmetric", "asymmetric"],
    *,
    rate: float,
    num_classes: int,
    openset_ratio: float = 0.0,
) -> np.ndarray:
    """Row-stochastic (C, C) matrix P with P[i, j] = Pr(noisy label j | true class i).

    Rows of known classes (i < K): keep the label with probability 1 - rate; `symmetric` spreads
    `rate` evenly over the other K - 1 known classes, `asymmetric` moves it to (i + 1) mod K
    (the pair flip in class-id order). Rows of open-set classes (i >= K) are uniform over the
    K known classes; columns j >= K are zero, so no sample is ever labelled with an open-set class.
    """
    if not 0.0 < rate < 1.0:
        raise UserError(f"noise.rate must be in (0, 1) for {kind} noise, got {rate}")
    k = known_classes(num_classes, openset_ratio)
    if k < 2:
        raise UserError(f"noise needs at least 2 known classes, got {k}")
    if kind == "symmetric":
        # Same float64 arithmetic as the protocol: rate / (K - 1), then the diagonal.
        matrix = np.ones((num_classes, num_classes)) * (rate / (k - 1))
        matrix[np.arange(k), np.arange(k)] = 1.0 - rate
    elif kind == "asymmetric":
        matrix = np.eye(num_classes)
        known = np.arange(k)
        matrix[known, known] = 1.0 - rate
        matrix[known, (known + 1) % k] = rate
    else:
        raise UserError(f"noise.kind must be symmetric, asymmetric or none, got {kind!r}")
    matrix[k:, :] = 1.0 / k
    matrix[:, k:] = 0.0
    return matrix


def draw_noisy_labels(labels: np.ndarray, matrix: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """One `RandomState(seed).multinomial(1, P[y])` draw per sample, in the order given.

    This is the protocol's exact sampling: the same seed, matrix and label order give the same
    noisy labels bit for bit. Returns int64 labels of the same shape.
    """
    labels = _integer_labels(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= matrix.shape[0]):
        raise UserError(
            f"labels must lie in [0, {matrix.shape[0]}), got {labels.min()}..{labels.max()}"
        )
    flipper = np.random.RandomState(seed)
    noisy = np.empty(labels.shape[0], dtype=np.int64)
    for idx, label in enumerate(labels):
        noisy[idx] = np.flatnonzero(flipper.multinomial(1, matrix[label], 1)[0])[0]
    return noisy


def make_noisy_labels(
    labels: np.ndarray,
    *,
    kind: Literal["none", "symmetric", "asymmetric"],
    rate: float,
    num_classes: int,
    openset_ratio: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Noisy labels for the full training set and the transition matrix used (None if clean).

    With `kind="none"` and an open-set ratio the open-set samples still get a uniform known
    label (the matrix has no closed-set noise), so the known/unknown split is the same.
    """
    labels = _integer_labels(labels).astype(np.int64)
    if kind == "none" and openset_ratio == 0.0:
        return labels.copy(), None
    if kind == "none":
        k = known_classes(num_classes, openset_ratio)
        matrix = np.eye(num_classes)
        matrix[k:, :] = 1.0 / k
        matrix[:, k:] = 0.0
    else:
        matrix = transition_matrix(
            kind, rate=rate, num_classes=num_classes, openset_ratio=openset_ratio
        )
    return draw_noisy_labels(labels, matrix, seed=seed), matrix


def _integer_labels(labels: np.ndarray) -> np.ndarray:
    """`labels` as a 1-D integer array; anything else (floats, strings, 2-D) is a UserError."""
    labels = np.asarray(labels)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise UserError(f"labels must be a 1-D array, got shape {labels.shape}")
    return labels
