"""The two batch types data flows in: training batches for a method's `training_step`, and
evaluation batches for test accuracy and label scores. Defined here, below both `data/` (which
makes them) and `methods/` / `engine/` (which consume them), so neither side imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from torch import Tensor

VIEW_NAMES = ("weak", "strong")
"""The augmentations a method may ask for, each any number of times (`Method.train_views`)."""


class Batch(NamedTuple):
    """What a method's `training_step` receives. There are no true labels here."""

    index: Tensor
    """(B,) int64 positions in the training set: the key of all per-sample state."""
    views: tuple[Tensor, ...]
    """(B, C, H, W) float32 normalised views, one per name of the method's `train_views()`
    (`weak`: flip and crop; `strong`: the same plus AutoAugment/RandAugment), each an
    independent draw, in that order."""
    label: Tensor
    """(B,) int64 observed (possibly noisy) labels."""

    @property
    def weak(self) -> Tensor:
        """The first view, always a weak one."""
        return self.views[0]


EvalBatches = Callable[[], Iterator[tuple[Tensor, Tensor]]]
"""A re-iterable, in-order source of un-augmented batches: each call makes a fresh pass yielding
(normalised images (B, C, H, W), labels (B,)) on the training device."""
