"""Checkpoints: where training stands (`Position`), what a checkpoint holds, and the way back.

One dict per checkpoint, written atomically (a crash while saving keeps the previous one),
loaded with `weights_only=True` (a file that could run code is refused), checked against the
digest of its content it carries (a flipped bit inside a tensor loads without complaint
otherwise) and against the run, before anything in it is used. `restore` puts its state back
into this process.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import shutil
import warnings
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
from asymco.untrusted import decoding

logger = logging.getLogger(__name__)
FORMAT = 3  # 3: a digest of the content; 2: per-rank RNG states, mid-epoch position
READABLE = (2, 3)  # format 2 (written before the digest) loads without that check
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
_PLAIN = (str, int, float, bool, type(None))  # what metrics.jsonl rows hold
_FIX = "resume from a good copy, or train again into a new --out"


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
    state = {"format": FORMAT, **state}
    write_atomic(path, torch_bytes({**state, "digest": content_digest(state)}))


def content_digest(state: Any) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes, and every
    plain value, in order. It is computed on the values, not the file, because the file's
    bytes are torch's business (it may write the same values differently)."""
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(b"D%d" % len(value))
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(b"L%d" % len(value))
        for item in value:
            _feed(digest, item)
    else:
        digest.update(repr((type(value).__name__, value)).encode())


def remove_partial_writes(path: Path) -> None:
    """Delete temporary files a killed process left beside `path` (never `path` itself)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, *, num_samples: int, config: dict) -> dict:
    """Load a checkpoint safely and refuse one that does not belong to this run; any damage is
    one sentence (a damaged pickle can fail with any exception, or load as something else)."""
    if not path.is_file():
        raise UserError(f"there is no checkpoint to resume from at {path}")
    with decoding(path, "checkpoint", _FIX):
        state = _unpickled(path)
        _check_intact(state, path)
        _check_belongs(state, path, num_samples, config)
        _check_position(state, path)
    state["loaded_from"] = str(path)  # for `restore`'s sentences
    return state


def _unpickled(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if "GLOBAL" in str(err).upper():  # a class or function: unpickling would call it
                raise UserError(
                    f"checkpoint {path} holds objects other than tensors and plain values; it "
                    "is refused because loading it could run code"
                ) from None
            raise


def _check_intact(state: Any, path: Path) -> None:
    """A known format, and (from format 3) the content its digest was computed on."""
    if not isinstance(state, dict) or state.get("format") not in READABLE:
        raise UserError(f"{path} is not an asymco checkpoint of format {FORMAT}")
    if state["format"] >= 3 and state.pop("digest", None) != content_digest(state):
        raise UserError(
            f"checkpoint {path} is damaged (its content does not match the digest written "
            f"with it); {_FIX}"
        )


def _check_belongs(state: dict, path: Path, num_samples: int, config: dict) -> None:
    missing = sorted(REQUIRED - state.keys())
    if missing:
        raise UserError(f"checkpoint {path} is incomplete (it lacks {', '.join(missing)})")
    if type(state["num_samples"]) is not int or state["num_samples"] != num_samples:
        raise UserError(
            f"checkpoint {path} was written for {state['num_samples']!r} training samples, "
            f"this run has {num_samples}"
        )
    saved = _by_meaning(state["config"])
    if saved != config:
        diff = _differences(saved if isinstance(saved, dict) else {}, config)
        raise UserError(
            f"checkpoint {path} was written with another configuration ({'; '.join(diff[:5])})"
        )


def _check_position(state: dict, path: Path) -> None:
    """The position's values have the types training uses (a damaged pickle can load as
    other values, which would fail only later, mid-training)."""
    history, step, world = state["history"], state["step"], state["world_size"]
    rows_ok = isinstance(history, list) and all(
        isinstance(row, dict)
        and row.get("epoch") == i
        and all(type(row.get(k)) in (int, float) for k in ("test_acc", "epoch_seconds"))
        and all(isinstance(k, str) and type(v) in _PLAIN for k, v in row.items())
        for i, row in enumerate(history)
    )
    sums_ok = isinstance(state["sums"], list) and all(
        isinstance(s, dict) and all(isinstance(v, (Tensor, int, float)) for v in s.values())
        for s in state["sums"]
    )
    counts_ok = type(step) is int and step >= 0 and type(world) is int and world >= 1
    rng_ok = isinstance(state["rng"], list) and len(state["rng"]) >= 1
    if not (rows_ok and sums_ok and counts_ok and rng_ok) or (step and len(state["sums"]) < world):
        raise UserError(
            f"checkpoint {path} is damaged (its training position is unreadable); {_FIX}"
        )


def _by_meaning(config: Any) -> Any:
    """A saved configuration as this version writes it, so a checkpoint from before a setting
    moved (e.g. `optim.ntm_lr` to `method.ntm_lr`) still matches its run."""
    try:
        return to_dict(from_dict(config))
    except UserError:
        return config


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
    """Load a checkpoint's state into this process; where training stands. State that does
    not fit this run's networks or optimizer is one sentence naming what does not fit."""
    step, writers = state["step"], state["world_size"]
    path = state.get("loaded_from", "of this run")
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
    with decoding(path, "checkpoint", _FIX):
        _check_fits(state["method"], method.state_dict(), path, "networks")
        _check_optimizer(state["optimizer"], optimizer, path)
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        rngs = state["rng"]
        set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
    sums = state["sums"][dist.rank] if step else {}  # mid-epoch: same world size (above)
    return Position(list(state["history"]), step, dict(sums))


def _check_fits(saved: Any, expected: dict, path: str, what: str) -> None:
    """One sentence naming the keys of `saved` missing, unexpected or of another shape."""
    if not isinstance(saved, dict):
        raise UserError(f"checkpoint {path} holds no state for this run's {what}; {_FIX}")
    missing = [k for k in expected if k not in saved]
    unexpected = [str(k) for k in saved if k not in expected]
    wrong = [
        f"{k} {tuple(getattr(saved[k], 'shape', ()))} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in saved and isinstance(v, Tensor) and getattr(saved[k], "shape", None) != v.shape
    ]
    problems = [
        f"{label} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong", wrong))
        if keys
    ]
    if problems:
        raise UserError(
            f"checkpoint {path} does not fit this run's {what} ({'; '.join(problems)}); {_FIX}"
        )


def _check_optimizer(saved: Any, optimizer: torch.optim.Optimizer, path: str) -> None:
    """The optimizer state's tensors (momentum) have their parameters' shapes; torch checks
    only the group sizes, and a wrong shape would fail at the first step."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise UserError(f"checkpoint {path} holds no optimizer state for this run; {_FIX}")
    ids = [i for group in saved.get("param_groups", []) for i in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if len(ids) != len(params):
        raise UserError(f"checkpoint {path} does not fit this run's optimizer; {_FIX}")
    shapes = {i: p.shape for i, p in zip(ids, params, strict=True)}
    expected = {
        f"{i}.{name}": torch.empty(shapes.get(i, (0,)), device="meta")
        for i, entry in saved["state"].items()
        for name, value in entry.items()
        if isinstance(value, Tensor) and value.ndim
    }
    found = {
        f"{i}.{name}": value
        for i, entry in saved["state"].items()
        for name, value in entry.items()
        if isinstance(value, Tensor) and value.ndim
    }
    _check_fits(found, expected, path, "optimizer")


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
