"""A user's image arrays made trainable: any dtype the tools of the field hand out, any side.

Arrays arrive as (N, H, W) or (N, H, W, C) with C in {1, 3, 4}, uint8 or floats in [0, 1]
(what torchvision's `ToTensor`, Keras and scikit-image produce). They leave as uint8
(N, H, W, C) with C in {1, 3}: floats are scaled to 0..255, an alpha channel is dropped.

Small images (a side up to `SMALL_SIDE`) train the paper's CNN on the GPU-resident loader, so
they are brought to its square input once, up front: padded with zeros when that is the smaller
change (28 -> 32 adds 4 rows and columns and touches no pixel), else resized (antialiased) and
centre-cropped, as image folders are. Larger images keep their size and take the image-file
route (resize and crop per image in DataLoader workers, for ResNet or timm backbones).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from asymco.errors import UserError

SMALL_SIDE = 64
"""Largest image side trained by the built-in CNNs on the in-memory loader."""
PAD_SHARE = 0.25
"""Pad instead of resizing when the padding is at most this share of the target side."""
_CHUNK = 2048  # images converted at a time: bounds the float copy a conversion needs


def as_uint8_images(x: np.ndarray, where: str) -> np.ndarray:
    """`x` as uint8 (N, H, W, C) with C in {1, 3}, or one `UserError` sentence naming `where`."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]  # (N, H, W) grayscale
    floats = x.dtype.kind == "f"
    if (x.dtype != np.uint8 and not floats) or x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        hint = (
            "; scale the pixels to 0..255 as uint8, or to 0..1 as floats"
            if x.dtype.kind in "iub" and x.dtype != np.uint8
            else ""
        )
        raise UserError(
            f"{where} must be images (N, H, W) or (N, H, W, C) with 1, 3 or 4 channels, uint8 "
            f"or floats in [0, 1], got {x.dtype} {x.shape}{hint}"
        )
    if len(x) == 0 or 0 in x.shape[1:3]:
        raise UserError(f"{where} holds no images (shape {x.shape}); add some")
    if x.shape[-1] == 4:
        x = x[..., :3]  # RGBA: the alpha channel carries no class evidence here
    return _floats_to_uint8(x, where) if floats else x


def _floats_to_uint8(x: np.ndarray, where: str) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.uint8)
    for start in range(0, len(x), _CHUNK):
        part = x[start : start + _CHUNK].astype(np.float32)
        if not np.isfinite(part).all():
            raise UserError(f"{where} holds NaN or infinite pixel values; fix or drop those images")
        low, high = float(part.min()), float(part.max())
        if low < 0.0 or high > 1.0:
            raise UserError(
                f"{where} holds float pixels from {low:g} to {high:g}; floats must be in [0, 1] "
                "(divide 0..255 values by 255, or save them as uint8)"
            )
        out[start : start + _CHUNK] = np.rint(part * 255.0)
    return out


def fit_plan(height: int, width: int, side: int) -> str | None:
    """How (height, width) images become side x side: `pad`, `resize` or None (already are)."""
    if (height, width) == (side, side):
        return None
    fits = max(height, width) <= side and side - min(height, width) <= PAD_SHARE * side
    return "pad" if fits else "resize"


def fit_to_side(x: np.ndarray, side: int) -> np.ndarray:
    """uint8 (N, H, W, C) images as (N, side, side, C), following `fit_plan`."""
    n, height, width, channels = x.shape
    plan = fit_plan(height, width, side)
    if plan is None:
        return x
    if plan == "pad":
        top, left = (side - height) // 2, (side - width) // 2
        out = np.zeros((n, side, side, channels), dtype=np.uint8)
        out[:, top : top + height, left : left + width] = x
        return out
    scale = side / min(height, width)  # shorter side -> side, then a centre crop
    size = (max(side, round(height * scale)), max(side, round(width * scale)))
    top, left = (size[0] - side) // 2, (size[1] - side) // 2
    out = np.empty((n, side, side, channels), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        part = torch.from_numpy(x[start : start + _CHUNK]).permute(0, 3, 1, 2).float()
        part = F.interpolate(part, size=size, mode="bilinear", antialias=True, align_corners=False)
        part = part[:, :, top : top + side, left : left + side].round().clamp(0, 255)
        out[start : start + _CHUNK] = part.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def describe_fit(height: int, width: int, channels: int, side: int) -> str:
    """What `fit_to_side` does to such images, for the data line (e.g. `28x28 grey, padded to
    32x32`); '' when they stay as they are."""
    colour = "grey" if channels == 1 else "colour"
    plan = fit_plan(height, width, side)
    if plan is None:
        return ""
    how = "padded with zeros" if plan == "pad" else "resized (antialiased) and centre-cropped"
    return f"{height}x{width} {colour} images {how} to {side}x{side}"
