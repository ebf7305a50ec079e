"""How a run's images become batches: the one place that chooses the training loader.

- Image files (folder, csv, web, Food-101N): DataLoader workers decode and augment each image
  (`folders.FolderLoader`); `data.loader` does not apply and must stay `auto`.
- In-memory arrays (CIFAR, digits, npz): `data.loader=device` (what `auto` means here) keeps the
  uint8 images on the training device and builds views there in batches (`loader.ArrayLoader`);
  `pil` runs the reference pipeline's per-image PIL transforms in workers (`pil_loader`).

Evaluation batches (the test set, and the training set without augmentation for
label_issues.csv) come from the same place, in order, un-augmented.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from asymco.augment import IMAGENET_MEAN, IMAGENET_STD, Normalizer
from asymco.batch import EvalBatches
from asymco.config import DataConfig
from asymco.data.arrays import SMALL_SIDE
from asymco.data.datasets import FILE_DATASETS
from asymco.data.folders import FolderLoader, folder_test_batches
from asymco.data.loader import (
    ArrayLoader,
    Stats,
    array_batches,
    normalizer_for,
    to_device_images,
)
from asymco.data.pil_loader import PilLoader
from asymco.data.prepare import NoisyData
from asymco.data.sharding import BatchPlan
from asymco.errors import UserError


@dataclass(frozen=True)
class Pipeline:
    loader: ArrayLoader | PilLoader | FolderLoader
    test: EvalBatches
    train_eval: EvalBatches
    """The training images without augmentation, in order (for label_issues.csv)."""
    kind: str
    """Which loader trains: `device`, `pil`, `files` or `workers` (summary.json's
    execution.loader)."""


def loader_kind(d: DataConfig) -> str:
    """The training loader `d` asks for; a `data.loader` that cannot apply is refused (before
    any data is loaded). `workers`: arrays for a backbone larger than the CNNs, cropped and
    resized per image as image files are."""
    large_arrays = d.dataset == "npz" and d.image_size > SMALL_SIDE
    if d.dataset in FILE_DATASETS or large_arrays:
        if d.loader != "auto":
            what = (
                f"images at data.image_size={d.image_size} are cropped and resized per image"
                if large_arrays
                else f"{d.dataset} images are files, always decoded"
            )
            raise UserError(
                f"data.loader={d.loader} applies to the built-in CNNs' in-memory images (CIFAR, "
                f"digits, small npz); {what} by DataLoader workers: leave data.loader at auto"
            )
        return "workers" if large_arrays else "files"
    return "device" if d.loader == "auto" else d.loader


def make_pipeline(
    d: DataConfig,
    data: NoisyData,
    *,
    plan: BatchPlan,
    device: torch.device,
    memory_format: torch.memory_format,
    workers: int,
    stats: Stats = (IMAGENET_MEAN, IMAGENET_STD),
) -> Pipeline:
    """The training loader and evaluation batches of `data`, on `device`; images normalised
    with the model's `stats` (mean and std; ImageNet's for the built-in models)."""
    # Tables (hf, parquet) hold arrays or image files: only their loaded data tells which.
    kind = "files" if data.paths is not None else loader_kind(d)
    eval_batch = eval_batch_size(d, device)
    if kind in ("files", "workers"):  # per image in workers, with the model's statistics
        normalize = Normalizer(*stats, device, memory_format)
        size = {"size": d.image_size, "resize": d.resize or d.image_size}
        files = {"workers": workers, "normalize": normalize, "device": device, **size}

        def from_files(paths: np.ndarray, labels: np.ndarray) -> EvalBatches:
            return folder_test_batches(paths, labels, batch_size=eval_batch, **files)

        train = data.paths if kind == "files" else data.images
        loader = FolderLoader(train, data.noisy_label, plan=plan, **files)
        test = from_files(data.test_images, data.test_label)
        return Pipeline(loader, test, from_files(train, data.noisy_label), kind)
    normalize = normalizer_for(data.images, d.normalize, device, memory_format, stats=stats)
    common = {"plan": plan, "device": device, "views": d.views, "normalize": normalize}
    if kind == "pil":
        loader = PilLoader(data.images, data.noisy_label, workers=workers, **common)
    else:
        loader = ArrayLoader(data.images, data.noisy_label, **common)

    def on_device(images: np.ndarray, labels: np.ndarray) -> EvalBatches:
        return array_batches(
            to_device_images(images, device),
            torch.from_numpy(labels).to(device),
            batch_size=eval_batch,
            normalize=normalize,
        )

    test = on_device(data.test_images, data.test_label)
    return Pipeline(loader, test, on_device(data.images, data.noisy_label), kind)


def eval_batch_size(d: DataConfig, device: torch.device) -> int:
    return d.eval_batch_size or (1024 if device.type == "cuda" else 128)


def workers_for(d: DataConfig) -> int:
    """DataLoader worker processes (and image-checking threads): `data.workers`, or
    min(4, CPU cores) as the official code's 4 on a machine that has them."""
    return d.workers if d.workers is not None else min(4, os.cpu_count() or 1)
