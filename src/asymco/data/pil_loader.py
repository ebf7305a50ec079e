"""The per-sample PIL path: DataLoader workers apply torchvision transforms image by image.

This is the reference implementation's input pipeline (PIL crop/flip/AutoAugment in worker
processes). It stays as `data.loader=pil` for comparison and for data that needs per-image
decoding; array data defaults to the much faster device path in `loader.py`.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T

from asymco.augment import Normalizer
from asymco.data.loader import WorkerLoader
from asymco.data.sharding import BatchPlan, item_seed


class _Cutout:
    """Zero one size x size square (clipped at the border) of a (C, H, W) tensor."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Tensor) -> Tensor:
        _, h, w = img.shape
        cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
        half = self.size // 2
        img = img.clone()
        img[:, max(0, cy - half) : cy + half + 1, max(0, cx - half) : cx + half + 1] = 0
        return img


def pil_views(views: str, size: int) -> tuple[T.Compose, T.Compose]:
    """(weak, strong) torchvision pipelines producing uint8 (C, H, W) tensors; the same recipes
    as `augment.VIEWS`, one image at a time."""
    to_uint8 = T.PILToTensor()
    if views == "cifar":
        base = [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()]
        policy = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10, fill=[128, 128, 128])
        return T.Compose([*base, to_uint8]), T.Compose([*base, policy, to_uint8])
    weak = T.Compose([T.RandomCrop(size, padding=1), to_uint8])
    strong = T.Compose([T.RandomCrop(size, padding=2), to_uint8, _Cutout(3)])
    return weak, strong


class _ViewDataset(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, views: str) -> None:
        self.images, self.labels = images, labels
        self.weak, self.strong = pil_views(views, images.shape[1])
        self.views: tuple[str, ...] = ("weak", "strong")
        self.epoch_seed = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        array = self.images[index]
        img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        # torchvision draws from the global torch RNG: seed it per sample (and restore it), so
        # the draw does not depend on the worker, the worker count or where a run resumed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.epoch_seed, index))
            make = {"weak": self.weak, "strong": self.strong}
            views = tuple(make[name](img) for name in self.views)
        return index, views, int(self.labels[index])


class PilLoader(WorkerLoader):
    """Same interface as `ArrayLoader`: `epoch(...)` yields device `Batch`es."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        plan: BatchPlan,
        views: str,
        normalize: Normalizer,
        device: torch.device,
        workers: int,
    ) -> None:
        super().__init__(
            _ViewDataset(images, labels, views),
            plan=plan,
            normalize=normalize,
            device=device,
            workers=workers,
        )
