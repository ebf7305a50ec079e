"""Which device a run trains on, resolved once per run."""

from __future__ import annotations

import torch

from asymco.errors import UserError


def resolve_device(name: str) -> torch.device:
    """`auto` = the first CUDA GPU if there is one, else the CPU; otherwise a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"train.device {name!r} is not a device name (try auto, cpu or cuda)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device is {name!r} but no CUDA GPU is available; use auto or cpu")
    return device
