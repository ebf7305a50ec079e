"""The batched AutoAugment against torchvision's own per-image AutoAugment (CIFAR-10 policy)."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torchvision.transforms import AutoAugment, AutoAugmentPolicy, InterpolationMode
from torchvision.transforms.autoaugment import _apply_op

from asymco.autoaugment import (
    CIFAR10_POLICY,
    NUM_BINS,
    OPS,
    SIGNED_OPS,
    apply_op,
    apply_policy,
    autoaugment_cifar10,
    magnitude_bins,
    sample_policy,
)

FILL = 128.0
SIZES = [(32, 32), (8, 6)]  # CIFAR, and a small non-square one for the geometric ops


def _images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8 images that reach the ops' corner cases, not only uniform noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, height, width), generator=gen, dtype=torch.uint8)
    x[1] = torch.randint(60, 90, (3, height, width), generator=gen, dtype=torch.uint8)  # dull
    x[2] = 77  # constant: AutoContrast and Equalize must leave it alone
    x[3] = 200  # nearly constant: Equalize's step is 0 for these channels
    x[3, :, 0, :2] = 10
    ramp = torch.linspace(0, 255, height * width).view(height, width)
    x[4] = ramp.to(torch.uint8)  # smooth gradient
    return x


def _reference(x: torch.Tensor, op: str, magnitudes: list[float]) -> torch.Tensor:
    """torchvision's _apply_op on each image in turn, with that image's magnitude."""
    fill = [FILL] * x.shape[1]
    return torch.stack([
        _apply_op(img, op, float(m), InterpolationMode.NEAREST, fill)
        for img, m in zip(x, magnitudes, strict=True)
    ])


def _test_magnitudes(op: str, height: int, width: int) -> list[float]:
    """The policy's bins (both signs where signed) plus values off the bins."""
    bins = magnitude_bins(op, height, width).tolist()
    extra = {
        "Rotate": [45.0, -90.0, 123.4, 180.0, -17.3],
        "ShearX": [0.5, -0.77], "ShearY": [0.5, -0.77],
        "TranslateX": [2.7, -2.7, 40.0], "TranslateY": [2.7, -2.7, 40.0],
        "Brightness": [-1.0, 1.5], "Color": [-1.0, 1.5], "Contrast": [-1.0, 1.5],
        "Sharpness": [-1.0, 1.5, 0.123],
        "Posterize": [0.0, 1.0, 2.0, 3.0, 7.9, 8.0],
        "Solarize": [0.0, 1.0, 127.5, 255.0],
    }.get(op, [])
    signed = [-m for m in bins] if op in SIGNED_OPS else []
    return sorted(set(bins + signed + extra)) if op in extra or signed else [0.0]


def test_policy_matches_torchvision() -> None:
    policies = AutoAugment(AutoAugmentPolicy.CIFAR10).policies
    assert [tuple(map(tuple, sub)) for sub in CIFAR10_POLICY] == policies
    space = AutoAugment()._augmentation_space(NUM_BINS, (24, 40))
    for op in OPS:
        values, signed = space[op]
        expected = values.float() if values.dim() else torch.zeros(NUM_BINS)
        assert torch.equal(magnitude_bins(op, 24, 40), expected), op
        assert (op in SIGNED_OPS) == signed, op


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", OPS)
def test_apply_op_matches_torchvision(op: str, size: tuple[int, int]) -> None:
    x = _images(8, *size, seed=1)
    for m in _test_magnitudes(op, *size):
        out = apply_op(x, op, torch.full((len(x),), m, dtype=torch.float64))
        assert out.dtype == torch.uint8 and out.shape == x.shape
        ref = _reference(x, op, [m] * len(x))
        # exact: the ops redo torchvision's float32 / float64 steps in the same order
        diff = (out.int() - ref).abs().max().item()
        assert torch.equal(out, ref), f"{op} magnitude {m}: max abs diff {diff}"


@pytest.mark.parametrize("op", OPS)
def test_per_sample_magnitudes(op: str) -> None:
    mags = _test_magnitudes(op, 32, 32)
    mags = (mags * 12)[: max(12, 2 * len(mags))]  # different magnitudes side by side in a batch
    x = _images(len(mags), 32, 32, seed=2)
    out = apply_op(x, op, torch.tensor(mags, dtype=torch.float64))
    assert torch.equal(out, _reference(x, op, mags))
    singles = [apply_op(img[None], op, torch.tensor([m], dtype=torch.float64))
               for img, m in zip(x, mags, strict=True)]
    assert torch.equal(out, torch.cat(singles))


def test_apply_op_rejects_bad_input() -> None:
    x = _images(5, 8, 8)
    with pytest.raises(ValueError):
        apply_op(x, "Cutout", torch.zeros(5))
    with pytest.raises(ValueError):
        apply_op(x, "Rotate", torch.zeros(4))
    with pytest.raises(TypeError):
        apply_op(x.float(), "Rotate", torch.zeros(5))


def test_policy_statistics() -> None:
    n = 20_000
    gen = torch.Generator().manual_seed(3)
    policy, applied, magnitudes = sample_policy(n, gen, 32, 32)
    assert policy.shape == (n,) and applied.shape == magnitudes.shape == (n, 2)
    counts = torch.bincount(policy, minlength=len(CIFAR10_POLICY))
    share = 1 / len(CIFAR10_POLICY)
    assert (counts - n * share).abs().max() <= 4 * math.sqrt(n * share * (1 - share))
    for k, sub_policy in enumerate(CIFAR10_POLICY):
        rows = policy == k
        drawn = int(counts[k])
        for slot, step in enumerate(sub_policy):
            p, hits = step.probability, int(applied[rows, slot].sum())
            assert abs(hits - drawn * p) <= 4 * math.sqrt(drawn * p * (1 - p)), (k, slot)
            mags = magnitudes[rows, slot]
            size = 0.0 if step.magnitude_bin is None else magnitude_bins(
                step.op, 32, 32)[step.magnitude_bin].item()
            assert torch.all(mags.abs() == size), (k, slot)
            negative = int(torch.signbit(mags).sum())  # signbit also catches -0.0 (bin 0)
            if step.op in SIGNED_OPS:
                assert abs(negative - drawn / 2) <= 4 * math.sqrt(drawn / 4), (k, slot)
            else:
                assert negative == 0, (k, slot)


def test_autoaugment_cifar10_batch_properties() -> None:
    x = _images(256, 32, 32, seed=4)
    before, global_rng = x.clone(), torch.get_rng_state()
    out = autoaugment_cifar10(x, torch.Generator().manual_seed(5))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(x, before)  # input untouched
    assert torch.equal(torch.get_rng_state(), global_rng)  # only the given generator is used
    again = autoaugment_cifar10(x, torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    other = autoaugment_cifar10(x, torch.Generator().manual_seed(6))
    assert not torch.equal(out, other)
    changed = (out != x).flatten(1).any(dim=1).float().mean().item()
    assert changed > 0.6  # about 78% of samples run at least one op
    empty = autoaugment_cifar10(torch.zeros((0, 3, 32, 32), dtype=torch.uint8), torch.Generator())
    assert empty.shape == (0, 3, 32, 32) and empty.dtype == torch.uint8


def test_forced_decisions_match_torchvision_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 300
    x = _images(n, 32, 32, seed=7)
    policy, applied, magnitudes = sample_policy(n, torch.Generator().manual_seed(8), 32, 32)
    assert len(set(policy.tolist())) == len(CIFAR10_POLICY)
    out = apply_policy(x, policy, applied, magnitudes, fill=FILL)
    augment = AutoAugment(AutoAugmentPolicy.CIFAR10, fill=[int(FILL)] * 3)
    for i in range(n):
        # torchvision applies slot j when probs[j] <= p, and negates when signs[j] == 0
        probs = torch.where(applied[i], 0.0, 1.0)
        signs = (~torch.signbit(magnitudes[i])).long()
        params = (int(policy[i]), probs, signs)
        monkeypatch.setattr(AutoAugment, "get_params", staticmethod(lambda _n, p=params: p))
        assert torch.equal(out[i], augment(x[i])), f"sample {i}, sub-policy {int(policy[i])}"


def _benchmark(batch: int = 512, repeats: int = 3) -> None:
    x = _images(batch, 32, 32, seed=9)
    gen = torch.Generator().manual_seed(0)
    reference = AutoAugment(AutoAugmentPolicy.CIFAR10, fill=[128, 128, 128])
    timings = {}
    for name, run in [("batched", lambda: autoaugment_cifar10(x, gen)),
                      ("torchvision loop", lambda: torch.stack([reference(img) for img in x]))]:
        run()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        timings[name] = (time.perf_counter() - start) / repeats
        print(f"{name:>16}: {batch / timings[name]:9.0f} images/s")
    print(f"speed-up: {timings['torchvision loop'] / timings['batched']:.1f}x")


if __name__ == "__main__":
    _benchmark()
