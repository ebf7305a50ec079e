"""Synthetic label noise (act-spec C.1): transition matrices, sampling and validation."""

import numpy as np
import pytest

from asymco.data.noise import (
    draw_noisy_labels,
    known_classes,
    make_noisy_labels,
    transition_matrix,
)
from asymco.errors import UserError

KINDS = ["symmetric", "asymmetric"]


def reference_matrix(kind, rate, num_classes, openset_ratio):
    """The protocol's own recipe, written independently of the package."""
    k = int(num_classes * (1 - openset_ratio))
    if kind == "symmetric":
        p = np.ones((num_classes, num_classes)) * (rate / (k - 1))
        for i in range(k):
            p[i, i] = 1.0 - rate
    else:
        p = np.eye(num_classes)
        for i in range(k):
            p[i, i] = 1.0 - rate
            p[i, (i + 1) % k] = rate
    p[k:, :] = 1.0 / k
    p[:, k:] = 0.0
    return p


def reference_draw(labels, p, seed):
    """A literal per-sample loop of multinomial draws from one RandomState."""
    flipper = np.random.RandomState(seed)
    out = []
    for y in labels:
        one_hot = flipper.multinomial(1, p[y], 1)[0]
        out.append(int(np.where(one_hot == 1)[0][0]))
    return np.array(out)


# ---------------------------------------------------------------------------- matrices


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rate", [0.2, 0.4, 0.8])
@pytest.mark.parametrize("openset_ratio", [0.0, 0.2])
def test_rows_sum_to_one(kind, rate, openset_ratio):
    """Every row of P is a probability distribution."""
    p = transition_matrix(kind, rate=rate, num_classes=100, openset_ratio=openset_ratio)
    assert p.shape == (100, 100)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_openset_rows_uniform_and_openset_columns_zero(kind, rate):
    """Open-set rows (i >= K) are uniform 1/K over known classes; columns j >= K are zero."""
    p = transition_matrix(kind, rate=rate, num_classes=100, openset_ratio=0.2)
    k = known_classes(100, 0.2)
    assert k == 80
    np.testing.assert_array_equal(p[:, k:], 0.0)
    np.testing.assert_allclose(p[k:, :k], 1.0 / k, rtol=0, atol=1e-15)


@pytest.mark.parametrize("rate", [0.2, 0.4])
@pytest.mark.parametrize(("num_classes", "openset_ratio", "k"), [(100, 0.0, 100), (100, 0.2, 80)])
def test_asymmetric_pair_flip_with_wrap(rate, num_classes, openset_ratio, k):
    """Pair flip i -> (i + 1) mod K, including the wrap K-1 -> 0 (99 -> 0, 79 -> 0)."""
    p = transition_matrix("asymmetric", rate=rate, num_classes=num_classes,
                          openset_ratio=openset_ratio)
    for i in range(k):
        row = p[i]
        assert row[i] == pytest.approx(1 - rate)
        assert row[(i + 1) % k] == pytest.approx(rate)
        others = np.delete(row, [i, (i + 1) % k])
        np.testing.assert_array_equal(others, 0.0)
    assert p[k - 1, 0] == pytest.approx(rate)
    assert p[k - 1, k - 1] == pytest.approx(1 - rate)


@pytest.mark.parametrize("rate", [0.2, 0.8])
@pytest.mark.parametrize(("openset_ratio", "k"), [(0.0, 100), (0.2, 80)])
def test_symmetric_off_diagonal(rate, openset_ratio, k):
    """Symmetric rows i < K: diagonal 1 - r, every other known class r / (K - 1)."""
    p = transition_matrix("symmetric", rate=rate, num_classes=100, openset_ratio=openset_ratio)
    known = p[:k, :k]
    np.testing.assert_allclose(np.diag(known), 1 - rate)
    off = known[~np.eye(k, dtype=bool)]
    np.testing.assert_allclose(off, rate / (k - 1), rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("openset_ratio", [0.0, 0.2])
def test_matrix_matches_reference_recipe(kind, openset_ratio):
    """The package's matrix equals the recipe written out in the test, element for element."""
    p = transition_matrix(kind, rate=0.4, num_classes=100, openset_ratio=openset_ratio)
    np.testing.assert_array_equal(p, reference_matrix(kind, 0.4, 100, openset_ratio))


# ---------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def labels_10():
    """20000 labels over 10 classes, 2000 per class."""
    return np.repeat(np.arange(10), 2000)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rate", [0.2, 0.45])
def test_realised_noise_rate(labels_10, kind, rate):
    """The share of flipped labels is close to r (binomial sd ~0.0035 at n=20000)."""
    noisy, p = make_noisy_labels(labels_10, kind=kind, rate=rate, num_classes=10, seed=0)
    assert p is not None
    realised = np.mean(noisy != labels_10)
    assert abs(realised - rate) < 0.02
    if kind == "asymmetric":
        flipped = noisy != labels_10
        np.testing.assert_array_equal(noisy[flipped], (labels_10[flipped] + 1) % 10)


def test_seeded_determinism(labels_10):
    """Same seed -> same labels; different seed -> different labels."""
    p = transition_matrix("symmetric", rate=0.4, num_classes=10)
    small = labels_10[::10]
    a = draw_noisy_labels(small, p, seed=3)
    b = draw_noisy_labels(small, p, seed=3)
    c = draw_noisy_labels(small, p, seed=4)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64
    assert a.shape == small.shape
    assert np.any(a != c)


@pytest.mark.parametrize("kind", [*KINDS, "none"])
def test_openset_samples_get_known_label(kind):
    """With openset_ratio 0.2 at 100 classes, every noisy label is < K = 80."""
    labels = np.repeat(np.arange(100), 20)
    noisy, p = make_noisy_labels(labels, kind=kind, rate=0.4, num_classes=100,
                                 openset_ratio=0.2, seed=0)
    assert p is not None
    assert noisy.max() < 80
    assert noisy.min() >= 0
    # Open-set samples really are spread over several known classes, not mapped to one.
    assert len(np.unique(noisy[labels >= 80])) > 10


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("openset_ratio", [0.0, 0.2])
@pytest.mark.parametrize("seed", [0, 7])
def test_draw_matches_reference_loop(kind, openset_ratio, seed):
    """draw_noisy_labels equals a literal per-sample RandomState(seed).multinomial loop."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 100, size=1500)
    p_ref = reference_matrix(kind, 0.4, 100, openset_ratio)
    expected = reference_draw(labels, p_ref, seed)
    noisy, p = make_noisy_labels(labels, kind=kind, rate=0.4, num_classes=100,
                                 openset_ratio=openset_ratio, seed=seed)
    np.testing.assert_array_equal(p, p_ref)
    np.testing.assert_array_equal(noisy, expected)
    np.testing.assert_array_equal(draw_noisy_labels(labels, p_ref, seed=seed), expected)


def test_kind_none_returns_labels_unchanged():
    """No noise and no open set: the labels come back unchanged and no matrix."""
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    noisy, p = make_noisy_labels(labels, kind="none", rate=0.2, num_classes=10)
    assert p is None
    np.testing.assert_array_equal(noisy, labels)


def test_kind_none_with_openset_keeps_known_labels():
    """kind=none with an open set: known samples keep their label, open-set ones get one < K."""
    labels = np.repeat(np.arange(100), 5)
    noisy, p = make_noisy_labels(labels, kind="none", rate=0.2, num_classes=100,
                                 openset_ratio=0.2)
    assert p is not None
    known = labels < 80
    np.testing.assert_array_equal(noisy[known], labels[known])
    assert noisy[~known].max() < 80


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rate", [0.0, 1.0, 1.5, -0.1])
def test_invalid_rate_raises(kind, rate):
    """Rates outside (0, 1) are a user error, for the matrix and the whole pipeline."""
    with pytest.raises(UserError):
        transition_matrix(kind, rate=rate, num_classes=10)
    with pytest.raises(UserError):
        make_noisy_labels(np.arange(10), kind=kind, rate=rate, num_classes=10)


def test_unknown_kind_raises():
    """An unknown noise kind is a user error."""
    with pytest.raises(UserError):
        transition_matrix("pairflip", rate=0.2, num_classes=10)


@pytest.mark.parametrize("labels", [np.array([0, 10]), np.array([-1, 0]), np.zeros((2, 2), int)])
def test_draw_rejects_bad_labels(labels):
    """Labels outside [0, C) or not 1-D are a user error."""
    p = transition_matrix("symmetric", rate=0.2, num_classes=10)
    with pytest.raises(UserError):
        draw_noisy_labels(labels, p)
