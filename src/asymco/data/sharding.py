"""Which samples each process trains on at each step, and the seeds of their augmentations.

Every epoch visits every training sample exactly once over all processes together: a seeded
permutation of the training set (the same on every rank) is cut into global batches of
`batch_size`, and rank r of W takes every W-th sample of each global batch. Nothing is padded or
repeated, because a repeated sample would update its per-sample state (selection counter, EMA
label distribution) twice in one epoch.

The permutation depends only on (seed, epoch) and each step's augmentation RNG only on (seed,
epoch, step, rank), so a run resumed at any step draws exactly what an uninterrupted run draws:
there is no loader RNG state to save.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from asymco.errors import UserError

MIN_PER_RANK = 2
"""Samples every rank gets at every step: BatchNorm in training mode needs two per channel."""

_GOLDEN = 0x9E3779B97F4A7C15  # spreads neighbouring sample indices over the seed space
_MASK = 2**64 - 1


def mix_seed(*parts: int) -> int:
    """A 64-bit seed from several non-negative integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([p % 2**63 for p in parts]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


class BatchPlan:
    """The batches of one process, epoch by epoch.

    Args:
        num_samples: Size of the training set.
        batch_size: Samples per global batch (over all processes); the last may be larger or
            smaller (see `global_batches`).
        seed: The run's seed.
        rank, world: This process and the number of processes.
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, *, rank: int = 0, world: int = 1
    ) -> None:
        if num_samples < 1:
            raise UserError("the training set is empty")
        if num_samples < MIN_PER_RANK * world:
            raise UserError(
                f"{num_samples} training samples are too few for {world} processes "
                f"(each needs at least {MIN_PER_RANK} per step)"
            )
        if batch_size < MIN_PER_RANK * world:
            processes = f" for {world} processes" if world > 1 else ""
            raise UserError(
                f"data.batch_size={batch_size} is too small{processes}; "
                f"use at least {MIN_PER_RANK * world}"
            )
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        """Steps per epoch, the same on every rank."""
        steps, last = divmod(self.num_samples, self.batch_size)
        if last == 0:
            return steps
        return steps + (0 if self._merge_last(last, steps) else 1)

    def _merge_last(self, last: int, full_steps: int) -> bool:
        # A remainder too small to give every rank MIN_PER_RANK samples joins the batch before
        # it (one process: only a single leftover sample, which BatchNorm1d cannot train on).
        return full_steps > 0 and last < MIN_PER_RANK * self.world

    def order(self, epoch: int) -> Tensor:
        """(N,) the epoch's permutation of the training set, identical on every rank."""
        gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=gen)

    def global_batches(self, epoch: int) -> list[Tensor]:
        """The epoch's global batches: disjoint, together every sample once."""
        chunks = list(torch.split(self.order(epoch), self.batch_size))
        if len(chunks) > len(self):
            chunks[-2:] = [torch.cat(chunks[-2:])]
        return chunks

    def batches(self, epoch: int) -> list[Tensor]:
        """This rank's share of every global batch (sizes differ by at most one between ranks)."""
        return [chunk[self.rank :: self.world] for chunk in self.global_batches(epoch)]

    def generator(self, epoch: int, step: int) -> torch.Generator:
        """The augmentation RNG of one step on this rank."""
        return torch.Generator().manual_seed(mix_seed(self.seed, epoch, step, self.rank, 1))

    def epoch_seed(self, epoch: int) -> int:
        """The seed per-image pipelines derive each sample's augmentation seed from."""
        return mix_seed(self.seed, epoch, 2)


def item_seed(epoch_seed: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch, whichever worker process decodes it."""
    return (epoch_seed ^ (index * _GOLDEN)) & _MASK
