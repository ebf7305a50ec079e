"""The in-memory loader: the whole uint8 image array lives on the training device, and each
step gathers its batch by index and builds the views there.

Each epoch visits every sample exactly once in a seeded random order (shuffle, no dropped last
batch, as the official loader), so per-sample state is updated once per sample per epoch. Which
samples a step holds, and its augmentation RNG, come from a `BatchPlan` (sharding.py), so a run
can start at any step of any epoch and several processes can share one epoch.

`WorkerLoader` is the same interface over DataLoader workers, for the per-image pipelines
(`pil_loader.PilLoader`, `folders.FolderLoader`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from asymco.augment import IMAGENET_MEAN, IMAGENET_STD, VIEWS, Normalizer
from asymco.batch import Batch, EvalBatches
from asymco.data.sharding import BatchPlan

Stats = tuple[tuple[float, ...], tuple[float, ...]]
"""Per-channel (mean, std) of normalisation, in [0, 1] units."""


def to_device_images(images: np.ndarray, device: torch.device) -> Tensor:
    """(N, H, W, C) uint8 numpy -> (N, C, H, W) uint8 tensor on `device`."""
    return (
        torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
    )


def normalizer_for(
    images: np.ndarray,
    mode: str,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    *,
    stats: Stats = (IMAGENET_MEAN, IMAGENET_STD),
) -> Normalizer:
    """The model's statistics for RGB images with mode "imagenet" (ImageNet's, the official
    CIFAR choice, for the built-in models), else the training images' own statistics."""
    if mode == "imagenet" and images.shape[-1] == 3:
        return Normalizer(*stats, device, memory_format)
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return Normalizer(tuple(flat.mean(0)), tuple(flat.std(0) + 1e-8), device, memory_format)


def array_batches(
    images: Tensor, labels: Tensor, *, batch_size: int, normalize: Normalizer
) -> EvalBatches:
    """Un-augmented batches of uint8 (N, C, H, W) device images, in order."""

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(labels), batch_size):
            stop = start + batch_size
            yield normalize(images[start:stop]), labels[start:stop]

    return batches


class ArrayLoader:
    """Yields `Batch`es of a whole in-memory training set, one pass per call of `epoch`."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        plan: BatchPlan,
        views: str,
        normalize: Normalizer,
        device: torch.device,
    ) -> None:
        self.images = to_device_images(images, device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        self.plan = plan
        self.weak_fn, self.strong_fn = VIEWS[views]
        self.normalize = normalize
        self.device = device

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def epoch(
        self, epoch: int, *, views: tuple[str, ...], start_step: int = 0
    ) -> Iterator[Batch]:
        """This process's batches of `epoch` with `views` (names of `VIEW_NAMES`), from step
        `start_step` on."""
        make = {"weak": self.weak_fn, "strong": self.strong_fn}
        batches = self.plan.batches(epoch)
        for step in range(start_step, len(batches)):
            index = batches[step].to(self.device)
            gen = self.plan.generator(epoch, step)  # the views draw from it in order
            raw = self.images[index]
            drawn = tuple(self.normalize(make[name](raw, gen)) for name in views)
            yield Batch(index, drawn, self.labels[index])


class WorkerLoader:
    """The per-image loaders' common part: DataLoader workers decode and augment each sample of
    the plan's batches; `Batch`es come out on the device, normalised.

    The dataset returns (index, tuple of uint8 views, label) and has the attributes `views` (the
    names of the views to draw, in order) and `epoch_seed` (its per-sample augmentation seeds
    derive from it).
    """

    worker_init_fn: Callable[[int], None] | None = None

    def __init__(
        self,
        dataset: Dataset,
        *,
        plan: BatchPlan,
        normalize: Normalizer,
        device: torch.device,
        workers: int,
    ) -> None:
        self.dataset = dataset
        self.plan = plan
        self.normalize = normalize
        self.device = device
        self.workers = workers

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def epoch(
        self, epoch: int, *, views: tuple[str, ...], start_step: int = 0
    ) -> Iterator[Batch]:
        """This process's batches of `epoch` with `views`, from step `start_step` on."""
        # A fresh DataLoader per epoch hands the workers the current views and epoch seed.
        self.dataset.views = views
        self.dataset.epoch_seed = self.plan.epoch_seed(epoch)
        loader = DataLoader(
            self.dataset,
            batch_sampler=[b.tolist() for b in self.plan.batches(epoch)[start_step:]],
            num_workers=self.workers,
            worker_init_fn=self.worker_init_fn,
            pin_memory=self.device.type == "cuda",
        )
        to = {"device": self.device, "non_blocking": True}
        for index, drawn, label in loader:
            yield Batch(
                index.to(**to),
                tuple(self.normalize(view.to(**to)) for view in drawn),
                label.to(**to),
            )
