"""The two batch types data flows in: training batches for a method's `training_step`, and
evaluation batches for test accuracy and label scores. Defined here, below both `data/` (which
makes them) and `methods/` / `engine/` (which consume them), so neither side imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from torch import Tensor


class Batch(NamedTuple):
    """What a method's `training_step` receives. There are no true labels here."""

    index: Tensor
    """(B,) int64 positions in the training set: the key of all per-sample state."""
    weak: Tensor
    """(B, C, H, W) float32 weakly augmented, normalised view."""
    strong: Tensor | None
    """(B, C, H, W) strongly augmented view, or None when the method does not need it."""
    label: Tensor
    """(B,) int64 observed (possibly noisy) labels."""


EvalBatches = Callable[[], Iterator[tuple[Tensor, Tensor]]]
"""A re-iterable, in-order source of un-augmented batches: each call makes a fresh pass yielding
(normalised images (B, C, H, W), labels (B,)) on the training device."""
