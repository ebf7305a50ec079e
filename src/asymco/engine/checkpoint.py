"""Checkpoints: one dict, written atomically, loaded with `weights_only=True` and checked."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from asymco.files import torch_bytes, write_atomic
from asymco.errors import UserError

FORMAT = 2  # 2: per-rank RNG states, mid-epoch position, no loader RNG
REQUIRED = {
    "method",
    "optimizer",
    "rng",
    "world_size",
    "history",
    "step",
    "sums",
    "config",
    "num_samples",
}


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write the checkpoint atomically: a crash while saving leaves the previous one intact."""
    write_atomic(path, torch_bytes({"format": FORMAT, **state}))


def remove_partial_writes(path: Path) -> None:
    """Delete temporary files a killed process left beside `path` (never `path` itself)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, *, num_samples: int, config: dict) -> dict:
    """Load a checkpoint safely and refuse one that does not belong to this run."""
    if not path.is_file():
        raise UserError(f"there is no checkpoint to resume from at {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err).upper():  # a class or function: unpickling would call it
            raise UserError(
                f"checkpoint {path} holds objects other than tensors and plain values; it is "
                "refused because loading it could run code"
            ) from None
        raise UserError(f"checkpoint {path} is corrupt or truncated (unreadable pickle)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise UserError(f"checkpoint {path} is corrupt or truncated ({_first_line(err)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not an asymco checkpoint of format {FORMAT}")
    missing = sorted(REQUIRED - state.keys())
    if missing:
        raise UserError(f"checkpoint {path} is incomplete (it lacks {', '.join(missing)})")
    if state.get("num_samples") != num_samples:
        raise UserError(
            f"checkpoint {path} was written for {state.get('num_samples')} training samples, "
            f"this run has {num_samples}"
        )
    if state.get("config") != config:
        diff = _differences(state.get("config") or {}, config)
        raise UserError(
            f"checkpoint {path} was written with another configuration ({'; '.join(diff[:5])})"
        )
    return state


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return out
