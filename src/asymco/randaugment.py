"""UDA-style RandAugment on PIL images: the strong view of the Web-* and Food-101N recipes.

The reference code uses `randaugment.RandAugment()` from PyPI `randaugment==1.0.2`, a port of
UDA's policy (act-spec C.2): draw two ops independently from the 15 below (the same op may come up
twice), each with its own magnitude index 1..9 on a 10-level scale, and apply each with p = 0.5.
The value of index m is `lo + (hi - lo) * m / 9` (a 10-point linspace, so index 9 is the end of
the range and index 0, never drawn, is the identity):

=============  ==============================  =============================================
op             range (index 0 -> 9)            notes
=============  ==============================  =============================================
ShearX/Y       0 -> 0.3                         random sign, bicubic, grey fill
TranslateX/Y   0 -> 150/331 of the width/height random sign, grey fill
Rotate         0 -> 30 degrees                  random sign, grey fill
Color          factor 1 +- (0 -> 0.9)           i.e. 0.1 .. 1.9, random sign
Contrast       factor 1 +- (0 -> 0.9)           "
Brightness     factor 1 +- (0 -> 0.9)           "
Sharpness      factor 1 +- (0 -> 0.9)           "
Posterize      8 -> 4 bits                      rounded to whole bits
Solarize       threshold 256 -> 0
Cutout         side 0 -> 0.2 of the short side  one square, centre uniform, clipped, mean fill
AutoContrast, Equalize, Invert                  no magnitude
=============  ==============================  =============================================

Deliberate differences from the PyPI package, so that the op set is symmetric and size-aware:
its Rotate always turns the same way (we draw the sign), and its Cutout side is 0..20 pixels
whatever the image size (we use 0..0.2 of the shorter side, about 90 px at 448). Every random draw
goes through one `random.Random`-like object (the `random` module by default), so a seeded worker
reproduces its images; the package drew the cutout position from numpy instead.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageEnhance, ImageOps

LEVELS = 10
"""Magnitude indices run over 0..LEVELS-1; RandAugmentUDA draws 1..LEVELS-1."""
GREY = 128
"""Fill of the geometric ops, as the reference's `fillcolor=(128, 128, 128)`."""
CUTOUT_FILL = (125, 122, 113)
"""The reference's cutout colour (about the ImageNet mean in 0..255)."""

Rng = Any  # `random.Random` or the `random` module itself: both have random/choice/randint
Op = Callable[[Image.Image, int, Rng], Image.Image]


def level(index: int, lo: float, hi: float) -> float:
    """Value of magnitude `index` on the 10-point scale from `lo` (index 0) to `hi` (index 9)."""
    return lo + (hi - lo) * index / (LEVELS - 1)


def _sign(rng: Rng) -> int:
    return -1 if rng.random() < 0.5 else 1


def _fill(img: Image.Image, color: tuple[int, int, int]) -> int | tuple[int, ...]:
    # PIL wants a scalar fill for one-band images and one value per band otherwise.
    bands = len(img.getbands())
    return round(sum(color) / 3) if bands == 1 else color[:bands]


def _affine(img: Image.Image, matrix: tuple[float, ...], resample: int) -> Image.Image:
    return img.transform(
        img.size, Image.Transform.AFFINE, matrix, resample, fillcolor=_fill(img, (GREY,) * 3)
    )


def _shear_x(img: Image.Image, m: int, rng: Rng) -> Image.Image:
    return _affine(img, (1, _sign(rng) * level(m, 0, 0.3), 0, 0, 1, 0), Image.Resampling.BICUBIC)


def _shear_y(img: Image.Image, m: int, rng: Rng) -> Image.Image:
    return _affine(img, (1, 0, 0, _sign(rng) * level(m, 0, 0.3), 1, 0), Image.Resampling.BICUBIC)


def _translate_x(img: Image.Image, m: int, rng: Rng) -> Image.Image:
    shift = _sign(rng) * level(m, 0, 150 / 331) * img.width
    return _affine(img, (1, 0, shift, 0, 1, 0), Image.Resampling.NEAREST)


def _translate_y(img: Image.Image, m: int, rng: Rng) -> Image.Image:
    shift = _sign(rng) * level(m, 0, 150 / 331) * img.height
    return _affine(img, (1, 0, 0, 0, 1, shift), Image.Resampling.NEAREST)


def _rotate(img: Image.Image, m: int, rng: Rng) -> Image.Image:
    return img.rotate(_sign(rng) * level(m, 0, 30), fillcolor=_fill(img, (GREY,) * 3))


def _enhancer(kind: type) -> Op:
    def op(img: Image.Image, m: int, rng: Rng) -> Image.Image:
        return kind(img).enhance(1 + _sign(rng) * level(m, 0, 0.9))

    return op


def _posterize(img: Image.Image, m: int, rng: Rng) -> Image.Image:
    return ImageOps.posterize(img, round(level(m, 8, 4)))


def _solarize(img: Image.Image, m: int, rng: Rng) -> Image.Image:
    return ImageOps.solarize(img, round(level(m, 256, 0)))


def _cutout(img: Image.Image, m: int, rng: Rng) -> Image.Image:
    side = round(level(m, 0, 0.2) * min(img.size))
    if side < 1:
        return img
    cx, cy = rng.randrange(img.width), rng.randrange(img.height)
    x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
    box = (x0, y0, min(img.width, x0 + side), min(img.height, y0 + side))
    img = img.copy()  # never paint over the caller's image
    img.paste(_fill(img, CUTOUT_FILL), box)
    return img


OPS: dict[str, Op] = {
    "Invert": lambda img, m, rng: ImageOps.invert(img),
    "Cutout": _cutout,
    "Sharpness": _enhancer(ImageEnhance.Sharpness),
    "AutoContrast": lambda img, m, rng: ImageOps.autocontrast(img),
    "Posterize": _posterize,
    "ShearX": _shear_x,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "ShearY": _shear_y,
    "Rotate": _rotate,
    "Equalize": lambda img, m, rng: ImageOps.equalize(img),
    "Contrast": _enhancer(ImageEnhance.Contrast),
    "Color": _enhancer(ImageEnhance.Color),
    "Solarize": _solarize,
    "Brightness": _enhancer(ImageEnhance.Brightness),
}
"""The 15 ops in the reference's order: (image, magnitude index, rng) -> image."""


class RandAugmentUDA:
    """Apply `n` ops drawn uniformly (with replacement) from `OPS`, each with probability `p` and
    a magnitude index drawn from 1..9.

    Args:
        n: Ops per image (the reference: 2).
        p: Probability of applying each drawn op (the reference: 0.5).

    Works on "L" and "RGB" images (the folder pipeline converts every image to RGB first) and
    returns an image of the same size and mode.
    """

    def __init__(self, n: int = 2, p: float = 0.5) -> None:
        if n < 0 or not 0.0 <= p <= 1.0:
            raise ValueError(f"RandAugmentUDA needs n >= 0 and 0 <= p <= 1, got n={n}, p={p}")
        self.n, self.p = n, p

    def __call__(self, img: Image.Image, rng: Rng | None = None) -> Image.Image:
        """Augment `img`, drawing from `rng` (default: the global `random` module)."""
        if img.mode not in ("L", "RGB"):
            raise ValueError(f"RandAugmentUDA works on L or RGB images, got mode {img.mode!r}")
        rng = random if rng is None else rng
        for _ in range(self.n):
            # Op and magnitude first, then the coin: the reference draws its whole policy first.
            name = rng.choice(tuple(OPS))
            magnitude = rng.randint(1, LEVELS - 1)
            if rng.random() < self.p:
                img = OPS[name](img, magnitude, rng)
        return img

    def __repr__(self) -> str:
        return f"RandAugmentUDA(n={self.n}, p={self.p})"
