"""Whether a command starts, restarts or continues the run in a directory, decided under its lock.

A run directory is in one of four states, read from the files it holds:

- `empty`: no run files (or no directory yet);
- `unstarted`: config.yaml or the noisy labels, but no checkpoint: the run died before its first
  checkpoint. Nothing in it is worth keeping: its noisy labels follow from its configuration;
- `interrupted`: a checkpoint, no summary.json;
- `finished`: summary.json.

Without `resume` only an empty directory is accepted. With `resume` (start-or-resume: the same
command, run again by a scheduler's requeue or `torchrun --max-restarts`) an empty directory
starts, an unstarted one starts again from the beginning, an interrupted one continues from its
checkpoint, and a finished one is left alone; the command's settings must agree with the saved
ones, or the first that differs is named.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from asymco.config import RunConfig
from asymco.config_io import from_dict, to_dict
from asymco.engine.checkpoint import remove_partial_writes
from asymco.engine.distributed import Dist
from asymco.engine.lock import LOCK_NAME, RunLock
from asymco.engine.rundir import RunDir
from asymco.errors import PreemptedError, UserError

State = Literal["empty", "unstarted", "interrupted", "finished"]

EARLY_FILES = ("config.yaml", "noisy_labels.npy", "noise_transition.npy", "metrics.jsonl")
"""What a run writes before its first checkpoint (and TensorBoard's folder)."""

BUDGET_CHOSEN = ("train.epochs", "train.warmup_epochs", "optim.lr_decay")
"""Settings a time budget chooses when the run starts (`engine/timing.fit_budget`): a command
with the same budget agrees with whatever they became."""


def run_state(path: Path) -> State:
    """What the run directory `path` holds (see the module's docstring)."""
    if (path / "summary.json").is_file():
        return "finished"
    if (path / "checkpoint.pt").is_file():
        return "interrupted"
    if any((path / name).exists() for name in (*EARLY_FILES, "tensorboard")):
        return "unstarted"
    return "empty"


@dataclass
class Claim:
    """A run directory locked for this process, and how its run begins."""

    run: RunDir
    lock: RunLock | None
    """None on the ranks other than 0 (rank 0 alone writes the run)."""
    cfg: RunConfig
    """What trains: the command's configuration, or the saved one for a continued run."""
    resume: bool
    """Continue from the checkpoint."""


def claim_run(path: Path, cfg: RunConfig, *, resume: bool) -> Claim:
    """Lock `path` (creating it) and decide how `cfg` begins there; raises `UserError` when the
    directory holds a run this command may not touch."""
    run = RunDir.prepare(path)
    lock = RunLock.acquire(path)
    try:
        state = run_state(path)
        if state == "empty":
            return Claim(run, lock, cfg, resume=False)
        if not resume:
            hint = (
                "pass --resume (with the same command) to start it again"
                if state == "unstarted"
                else "pass --resume (with the same command) to continue it"
            )
            raise UserError(f"{path} already holds a run; {hint}, or choose another --out")
        if state == "finished":
            raise UserError(f"{path} holds a finished run; there is nothing to continue")
        if state == "unstarted":
            check_agrees(run, cfg, required=False)
            clear_early_files(path)
            return Claim(run, lock, cfg, resume=False)
        saved = check_agrees(run, cfg, required=True)
        return Claim(run, lock, saved, resume=True)
    except BaseException:
        lock.release()
        raise


def check_agrees(run: RunDir, cfg: RunConfig, *, required: bool) -> RunConfig | None:
    """The saved configuration, after checking `cfg` agrees with it. An unreadable one refuses
    a continuation (`required`) but not a fresh start."""
    try:
        saved = from_dict(run.read_config())
    except UserError:
        if required:
            raise
        return None
    difference = first_difference(to_dict(saved), to_dict(cfg), budget=saved.train.budget)
    if difference:
        raise UserError(
            f"this command differs from the run saved in {run.path}: {difference}; run the "
            "same command as the first time, or choose another --out"
        )
    return saved


def first_difference(saved: dict, given: dict, *, budget: str | None) -> str | None:
    """'KEY is V here but W in the saved run' for the first setting that differs, or None."""
    flat_saved, flat_given = _flat(saved), _flat(given)
    ignored = set(BUDGET_CHOSEN) if budget and budget == flat_given.get("train.budget") else set()
    for key in sorted(flat_saved.keys() | flat_given.keys()):
        if key in ignored:
            continue
        if flat_saved.get(key) != flat_given.get(key):
            return f"{key} is {flat_given.get(key)!r} here but {flat_saved.get(key)!r} in the run"
    return None


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def clear_early_files(path: Path) -> None:
    """Remove what a run that died before its first checkpoint wrote, so its restart writes
    everything anew (a stale noise_transition.npy or TensorBoard file would outlive it)."""
    for name in EARLY_FILES:
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / "tensorboard", ignore_errors=True)
    remove_partial_writes(path / "checkpoint.pt")


@contextmanager
def claimed(path: Path, cfg: RunConfig, dist: Dist, *, resume: bool) -> Iterator[Claim]:
    """`claim_run` on rank 0, its decision shared with every rank, the lock held for the body.

    A run stopped by a signal or Ctrl-C carries its directory (`run_dir`) for the hint to
    resume it; a run that fails before writing anything leaves no directory behind.
    """
    try:
        existed = path.exists()
    except OSError as err:  # e.g. a name longer than the file system allows
        raise UserError(f"cannot use {path} as the run directory ({err.strerror})") from None
    held: list[Claim] = []

    def claim() -> tuple[dict, bool]:
        held.append(claim_run(path, cfg, resume=resume))
        return to_dict(held[0].cfg), held[0].resume

    values, resuming = dist.on_main(claim)
    claim = held[0] if held else Claim(RunDir(path), None, from_dict(values), resuming)
    empty = False
    try:
        yield claim
    except (PreemptedError, KeyboardInterrupt) as stopped:
        stopped.run_dir = path
        raise
    except BaseException:
        empty = dist.is_main and not existed and _holds_nothing(path)
        raise
    finally:
        if claim.lock is not None:
            claim.lock.release()
        if empty:
            with suppress(OSError):
                path.rmdir()


def _holds_nothing(path: Path) -> bool:
    try:
        return {p.name for p in path.iterdir()} <= {LOCK_NAME}
    except OSError:
        return False
