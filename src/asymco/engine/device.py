"""Which device a run trains on, resolved once per run."""

from __future__ import annotations

import torch

from asymco.errors import UserError

_TYPES = ("cpu", "cuda", "mps")
"""The device types asymco trains on; torch knows more (meta, xpu, ...), which cannot train a
run here (meta has no data, the others are not built in or not tested)."""


def resolve_device(name: str) -> torch.device:
    """`auto` = the first CUDA GPU if there is one, else the CPU; otherwise `cpu`, `cuda`,
    `cuda:N` (an existing GPU) or `mps`, each refused in one sentence where it cannot run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in _TYPES:
        raise UserError(
            f"train.device {name!r} is not a device asymco trains on; use auto, cpu, cuda, "
            "cuda:N or mps"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"train.device is {name!r} but no CUDA GPU is available; use auto or cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(
                f"train.device is {name!r} but this machine has {count} CUDA GPU(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"train.device is {name!r} but MPS is not available here; use auto or cpu")
    if device.type == "cpu" and device.index not in (None, 0):
        raise UserError(f"train.device {name!r} names a CPU index; use cpu")
    return device
