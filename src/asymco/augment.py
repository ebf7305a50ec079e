"""Weak and strong views of a batch of uint8 images, computed on the batch's device.

Everything is vectorised over the batch: crop-with-padding, flip, and for the strong CIFAR view
the AutoAugment CIFAR-10 policy (`autoaugment.py`: a sub-policy drawn per sample, each op equal
to torchvision's, grey fill 128 as in the official `CIFAR10Policy`). No PIL, no per-sample loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from asymco.autoaugment import autoaugment_cifar10

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """The images a network expects: a square `size` crop of images whose shorter side was
    resized to `resize`, normalised per channel with `mean` and `std` (in [0, 1] units)."""

    size: int
    resize: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def random_crop(x: Tensor, padding: int, gen: torch.Generator) -> Tensor:
    """Per-sample random crop of (B, C, H, W) images after zero padding on every side."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 0.5."""
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_cutout(x: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """Zero one size x size square per image at a random position (clipped at the border)."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=gen).to(x.device)
    cx = torch.randint(0, w, (b,), generator=gen).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - cy[:, None, None]).abs() <= size // 2) & (
        (xs - cx[:, None, None]).abs() <= size // 2
    )
    return x.masked_fill(inside[:, None], 0)


def _cifar_weak(x: Tensor, gen: torch.Generator) -> Tensor:
    return random_flip(random_crop(x, 4, gen), gen)


def _cifar_strong(x: Tensor, gen: torch.Generator) -> Tensor:
    return autoaugment_cifar10(_cifar_weak(x, gen), gen, fill=128.0)


def _digits_weak(x: Tensor, gen: torch.Generator) -> Tensor:
    return random_crop(x, 1, gen)  # digits are not mirror-symmetric: shifts only


def _digits_strong(x: Tensor, gen: torch.Generator) -> Tensor:
    return random_cutout(random_crop(x, 2, gen), 3, gen)


ViewFn = Callable[[Tensor, torch.Generator], Tensor]
VIEWS: dict[str, tuple[ViewFn, ViewFn]] = {
    "cifar": (_cifar_weak, _cifar_strong),
    "digits": (_digits_weak, _digits_strong),
}


class Normalizer:
    """uint8 (B, C, H, W) -> float32 normalised with per-channel mean and std (in [0, 1] units)."""

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255.0
        self.memory_format = memory_format

    def __call__(self, x: Tensor) -> Tensor:
        return ((x.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)
