"""Checkpoints: where training stands (`Position`), what a checkpoint holds, and the way back.

One dict per checkpoint, written atomically (a crash while saving keeps the previous one),
loaded with `weights_only=True` (a file that could run code is refused) and checked against the
run before anything in it is used. `restore` puts its state back into this process.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asymco.config_io import from_dict, to_dict
from asymco.engine.distributed import Dist
from asymco.engine.seeding import rng_state, set_rng_state
from asymco.errors import UserError
from asymco.files import torch_bytes, write_atomic

logger = logging.getLogger(__name__)
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


@dataclass
class Position:
    """Where training stands: the finished epochs' metrics rows and, inside the next epoch, the
    steps already done with the sums of their figures (a mid-epoch checkpoint)."""

    history: list[dict]
    step: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return len(self.history)


def checkpoint_state(
    position: Position,
    *,
    method: nn.Module,
    optimizer: torch.optim.Optimizer,
    dist: Dist,
    config: dict,
    num_samples: int,
) -> dict:
    """Everything a checkpoint holds. Every rank calls this (it gathers every rank's RNG states
    and running figure sums, each rank holding its own share's); rank 0 then saves it."""
    rngs = dist.gather(rng_state())  # in rank order
    sums = dist.gather({k: torch.as_tensor(v).cpu() for k, v in position.sums.items()})
    return {
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rngs,
        "world_size": dist.world,
        "history": position.history,
        "step": position.step,
        "sums": sums,
        "config": config,
        "num_samples": num_samples,
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
    saved = _by_meaning(state.get("config"))
    if saved != config:
        diff = _differences(saved if isinstance(saved, dict) else {}, config)
        raise UserError(
            f"checkpoint {path} was written with another configuration ({'; '.join(diff[:5])})"
        )
    return state


def _by_meaning(config: Any) -> Any:
    """A saved configuration as this version writes it, so a checkpoint from before a setting
    moved (e.g. `optim.ntm_lr` to `method.ntm_lr`) still matches its run."""
    try:
        return to_dict(from_dict(config))
    except UserError:
        return config


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


def restore(
    state: dict, method: nn.Module, optimizer: torch.optim.Optimizer, dist: Dist
) -> Position:
    """Load a checkpoint's state into this process; where training stands."""
    step, writers = state["step"], state["world_size"]
    if writers != dist.world:
        if step:
            raise UserError(
                f"the checkpoint was written in the middle of an epoch by {writers} "
                f"process(es); resume it with {writers} (torchrun --nproc-per-node {writers})"
            )
        if dist.is_main:
            logger.warning(
                "the checkpoint was written by %d process(es), this run has %d: it continues "
                "at the epoch boundary, but not bit-identically",
                writers,
                dist.world,
            )
    method.load_state_dict(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    rngs = state["rng"]
    set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
    sums = state["sums"][dist.rank] if step else {}  # mid-epoch: same world size (above)
    return Position(list(state["history"]), step, dict(sums))


def check_free_space(path: Path, method: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Fail before training when the disk cannot hold the checkpoint twice (the atomic write
    keeps the previous one until the new one is complete)."""
    params = (p for group in optimizer.param_groups for p in group["params"])
    tensors = [*method.state_dict().values(), *params]  # nets and state, plus SGD momentum
    checkpoint = sum(t.numel() * t.element_size() for t in tensors)
    need = 2 * checkpoint + 16 * 2**20  # two copies, plus metrics, labels and label issues
    free = shutil.disk_usage(path).free
    if free < need:
        raise UserError(
            f"only {free / 2**20:.0f} MB are free under {path}; this run's checkpoints need "
            f"about {need / 2**20:.0f} MB"
        )
