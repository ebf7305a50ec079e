"""AutoAugment with torchvision's CIFAR-10 policy, vectorised over a batch of uint8 images.

torchvision's `AutoAugment` draws one sub-policy per call, so a batch needs a Python loop over its
images. Here every sample draws its own sub-policy at once and each of the 14 ops runs as one
batched tensor op on the samples that drew it (the loops are over op types and policy slots only).
The ops redo torchvision's tensor kernels (`transforms/_functional_tensor.py`) step by step, float
rounding included, so each image matches `AutoAugment(CIFAR10, NEAREST, fill)` bit for bit.
All randomness comes from an explicit CPU `torch.Generator`; the results are then moved to the
images' device, so CPU and CUDA see the same decisions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class PolicyStep(NamedTuple):
    """One step of a sub-policy: the op, the chance to apply it, and its magnitude bin (if any)."""

    op: str
    probability: float
    magnitude_bin: int | None


_CIFAR10_STEPS = (  # torchvision's AutoAugment._get_policies(AutoAugmentPolicy.CIFAR10)
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
CIFAR10_POLICY: tuple[tuple[PolicyStep, PolicyStep], ...] = tuple(
    (PolicyStep(*first), PolicyStep(*second)) for first, second in _CIFAR10_STEPS
)
NUM_BINS = 10
OPS = (
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
SIGNED_OPS = frozenset(OPS[:9])  # geometric and colour ops go either way, as in torchvision

_DEG_TO_RAD = math.pi / 180.0  # the constants CPython's math.radians / math.degrees multiply by,
_RAD_TO_DEG = 180.0 / math.pi  # so the float64 affine matrices match torchvision's to the bit


def magnitude_bins(op: str, height: int, width: int) -> Tensor:
    """The NUM_BINS unsigned magnitudes of `op` (float32, as torchvision's `_augmentation_space`).

    Args:
        op: One of `OPS`.
        height: Image height (scales TranslateY).
        width: Image width (scales TranslateX).

    Returns:
        A float32 tensor of shape (NUM_BINS,); zeros for the ops without a magnitude.
    """
    spans = {
        "ShearX": 0.3,
        "ShearY": 0.3,
        "TranslateX": 150.0 / 331.0 * width,
        "TranslateY": 150.0 / 331.0 * height,
        "Rotate": 30.0,
    }
    if op in spans:
        return torch.linspace(0.0, spans[op], NUM_BINS)
    if op in SIGNED_OPS:  # Brightness, Color, Contrast, Sharpness
        return torch.linspace(0.0, 0.9, NUM_BINS)
    if op == "Posterize":
        return (8 - (torch.arange(NUM_BINS) / ((NUM_BINS - 1) / 4)).round().int()).float()
    if op == "Solarize":
        return torch.linspace(255.0, 0.0, NUM_BINS)
    return torch.zeros(NUM_BINS)


@lru_cache(maxsize=16)
def _policy_tables(height: int, width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per (sub-policy, slot): op index, probability (float32), magnitude (float64), signed."""
    steps = [step for sub_policy in CIFAR10_POLICY for step in sub_policy]
    op_index = torch.tensor([OPS.index(s.op) for s in steps]).view(-1, 2)
    # float32 because torchvision compares a float32 draw with p (`probs[i] <= p`)
    probability = torch.tensor([s.probability for s in steps], dtype=torch.float32).view(-1, 2)
    magnitude = torch.tensor(
        [
            0.0 if s.magnitude_bin is None else magnitude_bins(s.op, height, width)[s.magnitude_bin]
            for s in steps
        ],
        dtype=torch.float64,
    ).view(-1, 2)
    signed = torch.tensor([s.op in SIGNED_OPS for s in steps]).view(-1, 2)
    return op_index, probability, magnitude, signed


def sample_policy(
    batch_size: int, gen: torch.Generator, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw the AutoAugment decisions for a batch, one sub-policy per sample (on the CPU).

    Args:
        batch_size: Number of samples.
        gen: CPU generator that supplies all the randomness.
        height: Image height (TranslateY magnitudes scale with it).
        width: Image width (TranslateX magnitudes scale with it).

    Returns:
        `policy_index` (B,) int64 into `CIFAR10_POLICY`; `applied` (B, 2) bool, whether each slot's
        op runs; `magnitudes` (B, 2) float64, signed, in the units `apply_op` takes.
    """
    _, probability, magnitude, signed = _policy_tables(height, width)
    policy_index = torch.randint(len(CIFAR10_POLICY), (batch_size,), generator=gen)
    draws = torch.rand((batch_size, 2), generator=gen)
    signs = torch.randint(2, (batch_size, 2), generator=gen)
    applied = draws <= probability[policy_index]
    magnitudes = magnitude[policy_index]
    # torchvision negates a signed magnitude when its sign draw is 0
    magnitudes = torch.where(signed[policy_index] & (signs == 0), -magnitudes, magnitudes)
    return policy_index, applied, magnitudes


def apply_policy(
    x: Tensor, policy_index: Tensor, applied: Tensor, magnitudes: Tensor, *, fill: float = 128.0
) -> Tensor:
    """Run drawn decisions (see `sample_policy`) on uint8 (B, C, H, W) images.

    Args:
        x: uint8 images (B, C, H, W).
        policy_index: (B,) sub-policy of each sample.
        applied: (B, 2) whether each slot's op runs.
        magnitudes: (B, 2) signed magnitude of each slot's op.
        fill: Grey level of the area the geometric ops uncover.

    Returns:
        The augmented uint8 images, same shape as `x`.
    """
    op_index = _policy_tables(x.shape[-2], x.shape[-1])[0].to(x.device)[policy_index.to(x.device)]
    applied, magnitudes = applied.to(x.device), magnitudes.to(x.device)
    out = x.clone()
    for slot in range(2):  # slot 0 runs before slot 1, as in torchvision
        for op in dict.fromkeys(sub_policy[slot].op for sub_policy in CIFAR10_POLICY):
            rows = (applied[:, slot] & (op_index[:, slot] == OPS.index(op))).nonzero().squeeze(1)
            if rows.numel():  # each sample runs at most one op per slot, so order is free
                done = apply_op(out.index_select(0, rows), op, magnitudes[rows, slot], fill=fill)
                out.index_copy_(0, rows, done)
    return out


def autoaugment_cifar10(x: Tensor, gen: torch.Generator, *, fill: float = 128.0) -> Tensor:
    """AutoAugment CIFAR-10 policy on a batch, an independent sub-policy for every sample.

    Args:
        x: uint8 images (B, 3, H, W) on any device.
        gen: CPU generator that supplies all the randomness.
        fill: Grey level of the area the geometric ops uncover.

    Returns:
        The augmented uint8 images, same shape and device as `x`.
    """
    _check_images(x)
    decisions = sample_policy(x.shape[0], gen, x.shape[-2], x.shape[-1])
    return apply_policy(x, *decisions, fill=fill)


def apply_op(x: Tensor, op: str, magnitude: Tensor, *, fill: float = 128.0) -> Tensor:
    """One AutoAugment op on a batch, each sample with its own magnitude.

    Args:
        x: uint8 images (B, C, H, W), C in {1, 3}.
        op: One of `OPS`.
        magnitude: (B,) signed magnitudes as torchvision's `_apply_op` receives them: degrees
            (Rotate), pixels truncated to int (Translate*), shear factor (Shear*), factor - 1
            (Brightness, Color, Contrast, Sharpness), bits (Posterize, truncated to int, 0..8),
            threshold (Solarize); ignored by AutoContrast, Equalize and Invert.
        fill: Grey level of the area the geometric ops uncover.

    Returns:
        The transformed uint8 images, same shape as `x`.
    """
    _check_images(x)
    if op not in _OPS:
        raise ValueError(f"unknown AutoAugment op {op!r}; expected one of {OPS}")
    if magnitude.shape != (x.shape[0],):
        raise ValueError(f"magnitude must have shape ({x.shape[0]},), got {tuple(magnitude.shape)}")
    if x.shape[0] == 0:
        return x.clone()
    # float64 reproduces torchvision's Python-float arithmetic on the magnitude
    return _OPS[op](x, magnitude.to(device=x.device, dtype=torch.float64), fill)


def _check_images(x: Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise TypeError(f"expected uint8 images (B, C, H, W), got {x.dtype} {tuple(x.shape)}")


# ---- geometric ops: torchvision's inverse affine matrix, affine grid and nearest sampling ----


def _inverse_affine(
    angle: Tensor,
    translate: tuple[Tensor, Tensor],
    shear: tuple[Tensor, Tensor],
    center: tuple[float, float],
) -> Tensor:
    """(n, 6) float64 output->input matrices, same formula and op order as torchvision."""
    (tx, ty), (cx, cy) = translate, center
    rot, sx, sy = angle * _DEG_TO_RAD, shear[0] * _DEG_TO_RAD, shear[1] * _DEG_TO_RAD
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    m0, m1, m3, m4 = d, -b, -c, a  # inverse of [[a, b], [c, d]], whose determinant is 1
    m2 = m0 * (-cx - tx) + m1 * (-cy - ty) + cx
    m5 = m3 * (-cx - tx) + m4 * (-cy - ty) + cy
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1)


def _pixel_centres(size: int, device: torch.device) -> Tensor:
    """Pixel centres relative to the image centre, the same float32 linspace as torchvision."""
    return torch.linspace(-size * 0.5 + 0.5, size * 0.5 + 0.5 - 1, steps=size, device=device)


def _warp(x: Tensor, matrix: Tensor, fill: float) -> Tensor:
    """Nearest-neighbour resampling of each image with its own matrix, uncovered pixels = fill."""
    n, _, h, w = x.shape
    # Normalised as in torchvision's _gen_affine_grid: float32 theta, divided by a (2,) tensor
    # (not a scalar, which CUDA would turn into a multiplication by the reciprocal).
    half = torch.tensor([0.5 * w, 0.5 * h], device=x.device)
    coef = matrix.to(torch.float32).view(n, 2, 3).transpose(1, 2) / half  # (n, 3, 2)
    coef = coef.view(n, 1, 1, 3, 2)
    xs = _pixel_centres(w, x.device).view(1, 1, w, 1)
    ys = _pixel_centres(h, x.device).view(1, h, 1, 1)
    # (x * a + y * b) + c rounds like torchvision's bmm with [x, y, 1] on the CPU, and element-wise
    # float32 ops stay exact where a GPU matmul might use TF32.
    grid = xs * coef[..., 0, :] + ys * coef[..., 1, :] + coef[..., 2, :]  # (n, h, w, 2)
    # A ones channel marks pixels sampled from inside the image; the rest get the fill.
    stacked = torch.cat([x.float(), x.new_ones((n, 1, h, w), dtype=torch.float32)], dim=1)
    sampled = F.grid_sample(
        stacked, grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    out = torch.where(sampled[:, -1:] < 0.5, fill, sampled[:, :-1])
    return out.round().to(torch.uint8)


def _shear(x: Tensor, factor: Tensor, fill: float, axis: int) -> Tensor:
    _, _, h, w = x.shape
    zero = torch.zeros_like(factor)
    degrees = torch.atan(factor) * _RAD_TO_DEG  # torchvision passes the shear as an angle
    shear = (degrees, zero) if axis == 0 else (zero, degrees)
    # torchvision shears about the top-left corner (center=[0, 0])
    return _warp(x, _inverse_affine(zero, (zero, zero), shear, (-0.5 * w, -0.5 * h)), fill)


def _translate(x: Tensor, pixels: Tensor, fill: float, axis: int) -> Tensor:
    zero = torch.zeros_like(pixels)
    shift = torch.trunc(pixels)  # torchvision takes int(magnitude)
    translate = (shift, zero) if axis == 0 else (zero, shift)
    return _warp(x, _inverse_affine(zero, translate, (zero, zero), (0.0, 0.0)), fill)


def _rotate(x: Tensor, degrees: Tensor, fill: float) -> Tensor:
    zero = torch.zeros_like(degrees)
    # F.rotate is counter-clockwise and calls the affine matrix with -angle
    return _warp(x, _inverse_affine(-degrees, (zero, zero), (zero, zero), (0.0, 0.0)), fill)


# ---- colour ops: torchvision's float32 blends, truncated back to uint8 ----


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    # Both weights are rounded to float32 from the float64 factor, as Python floats are in _blend.
    ratio = factor.to(torch.float32).view(-1, 1, 1, 1)
    rest = (1.0 - factor).to(torch.float32).view(-1, 1, 1, 1)
    return (ratio * x + rest * other).clamp(0, 255).to(torch.uint8)


def _grayscale(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(torch.uint8).unsqueeze(1)


def _color(x: Tensor, mag: Tensor) -> Tensor:
    return x.clone() if x.shape[1] == 1 else _blend(x, _grayscale(x), 1.0 + mag)


def _contrast(x: Tensor, mag: Tensor) -> Tensor:
    gray = _grayscale(x)
    # torchvision's CPU mean sums in float32 (exact for integers up to 2**24, so for images up to
    # 65,793 pixels) and then divides. An int64 sum and a division by a tensor (a CUDA division by
    # a Python number multiplies by the reciprocal) give the same mean on every device.
    total = gray.sum(dim=(1, 2, 3), keepdim=True, dtype=torch.int64).to(torch.float32)
    return _blend(x, total / torch.full_like(total, gray[0].numel()), 1.0 + mag)


def _sharpness(x: Tensor, mag: Tensor) -> Tensor:
    _, _, h, w = x.shape
    if h <= 2 or w <= 2:
        return x.clone()
    # torchvision rounds a float conv with kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13. With the
    # integer sum s, s / 13 is never within 1/26 of a .5 tie, far above float error, so the exact
    # integer rounding (2s + 13) // 26 gives the same pixels on any device or conv algorithm.
    wide = x.to(torch.int32)
    total = 4 * wide[:, :, 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            total = total + wide[:, :, dy : h - 2 + dy, dx : w - 2 + dx]
    blurred = x.clone()
    blurred[:, :, 1:-1, 1:-1] = ((2 * total + 13) // 26).to(torch.uint8)
    return _blend(x, blurred, 1.0 + mag)  # the border is blended too (it may round down by one)


def _posterize(x: Tensor, mag: Tensor) -> Tensor:
    bits = torch.trunc(mag).long().clamp(0, 8)
    keep = torch.full_like(bits, 255).bitwise_left_shift(8 - bits) & 255  # high `bits` bits set
    return x & keep.to(torch.uint8).view(-1, 1, 1, 1)


def _solarize(x: Tensor, mag: Tensor) -> Tensor:
    threshold = mag.to(torch.float32).view(-1, 1, 1, 1)  # uint8 >= float compares in float32
    return torch.where(x >= threshold, 255 - x, x)


def _autocontrast(x: Tensor) -> Tensor:
    low = x.amin(dim=(2, 3), keepdim=True).to(torch.float32)
    high = x.amax(dim=(2, 3), keepdim=True).to(torch.float32)
    scale = 255 / (high - low)  # same expression as torchvision (reciprocal, then times 255)
    flat = ~torch.isfinite(scale)  # a constant channel stays as it is
    low, scale = low.masked_fill(flat, 0.0), scale.masked_fill(flat, 1.0)
    return ((x - low) * scale).clamp(0, 255).to(torch.uint8)


def _equalize(x: Tensor) -> Tensor:
    n, c, h, w = x.shape
    pixels = x.reshape(n * c, h * w).long()
    offsets = torch.arange(n * c, device=x.device).unsqueeze(1) * 256
    hist = torch.bincount((pixels + offsets).view(-1), minlength=n * c * 256).view(n * c, 256)
    # torchvision's step: all non-zero bins but the last (the channel's maximum), over 255
    step = (h * w - hist.gather(1, pixels.amax(dim=1, keepdim=True))) // 255
    lut = (hist.cumsum(dim=1) + step // 2) // step.clamp(min=1)
    lut = F.pad(lut, [1, 0])[:, :-1].clamp(0, 255)
    out = torch.where(step == 0, pixels, lut.gather(1, pixels))  # step 0: channel left alone
    return out.to(torch.uint8).view(n, c, h, w)


_OPS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "ShearX": lambda x, m, fill: _shear(x, m, fill, axis=0),
    "ShearY": lambda x, m, fill: _shear(x, m, fill, axis=1),
    "TranslateX": lambda x, m, fill: _translate(x, m, fill, axis=0),
    "TranslateY": lambda x, m, fill: _translate(x, m, fill, axis=1),
    "Rotate": _rotate,
    "Brightness": lambda x, m, fill: _blend(x, torch.zeros_like(x), 1.0 + m),
    "Color": lambda x, m, fill: _color(x, m),
    "Contrast": lambda x, m, fill: _contrast(x, m),
    "Sharpness": lambda x, m, fill: _sharpness(x, m),
    "Posterize": lambda x, m, fill: _posterize(x, m),
    "Solarize": lambda x, m, fill: _solarize(x, m),
    "AutoContrast": lambda x, m, fill: _autocontrast(x),
    "Equalize": lambda x, m, fill: _equalize(x),
    "Invert": lambda x, m, fill: 255 - x,
}
