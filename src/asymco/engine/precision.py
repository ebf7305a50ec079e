"""How the training forwards run: autocast precision, gradient scaling, memory format.

None of this changes the algorithm; fp32 without compile is the faithful reference path.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from asymco.config import TrainConfig
from asymco.errors import UserError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Execution:
    device: torch.device
    precision: str
    """Resolved: fp32, bf16 or fp16."""
    channels_last: bool
    eval_precision: str = "fp32"
    """fp32, or `train` to evaluate under the training autocast."""

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def evaluation(self) -> contextlib.AbstractContextManager:
        """The precision of test accuracy and label scores: fp32 unless asked otherwise, so a
        reported number does not depend on how training ran."""
        if self.eval_precision == "train":
            return self.autocast()
        return contextlib.nullcontext()

    def make_scaler(self) -> torch.amp.GradScaler:
        # fp16 gradients can underflow without loss scaling (the official web/Food scripts
        # autocast to fp16 without a scaler, the spec's A.3); bf16 and fp32 need none.
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


# CPU feature flags (Linux /proc/cpuinfo) that mean bf16 arithmetic in hardware: x86's
# AVX-512 BF16 and AMX, and Arm's BF16 extension.
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes in bf16 natively. Without it bf16 autocast is emulated and
    slower than fp32, so `train.precision=auto` stays fp32 there."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:  # not Linux (macOS, Windows): no cheap, reliable answer, so fp32
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and _NATIVE_BF16_FLAGS & set(value.split()):
            return True
    return False


def auto_precision(device: torch.device) -> str:
    """`train.precision=auto`: bf16 autocast on CUDA and on CPUs with native bf16 (measured
    on this project's 2-core EPYC: 1.99x the fp32 training step, benchmarks/throughput.py), fp32
    elsewhere."""
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def resolve_execution(train: TrainConfig, device: torch.device) -> Execution:
    cuda = device.type == "cuda"
    precision = train.precision if train.precision != "auto" else auto_precision(device)
    if precision == "fp16" and not cuda:
        raise UserError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on a CPU")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16 support; use train.precision=fp16 or fp32")
    return Execution(device, precision, train.channels_last, train.eval_precision)
