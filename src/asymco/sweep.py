"""`asymco sweep`: a grid of presets x methods x seeds trained into one sweep directory.

Each run lives in `<sweep>/<preset>/<method>/seed<k>`, and every cell follows `train --resume`'s
rule (start-or-resume, `engine/claim.py`): a finished run is skipped, an interrupted one
continues from its checkpoint, one that died before its first checkpoint starts again, and a
run whose saved settings differ from the sweep's fails, naming the setting. So an interrupted
sweep continues where it stopped when the same command is run again.

Runs are driven through the Python API (`asymco.api`), never through the command line: in this
process one after another, with `pack` several at once as one batched model (`api.train_pack`),
or with `parallel` in that many worker processes that call the same function, each writing its
output to `<sweep>/<preset>/<method>/seed<k>.log`. A run (or pack) that fails is logged and
counted, and the sweep goes on; Ctrl-C and SIGTERM stop the whole sweep (a run
stopped by SIGTERM saves its checkpoint first).
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from asymco import api
from asymco.errors import PreemptedError, UserError
from asymco.files import describe_os_error

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from asymco.config import RunConfig

logger = logging.getLogger(__name__)
EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 130, 143  # a worker process's exit codes


@dataclass(frozen=True)
class Cell:
    preset: str
    method: str
    seed: int

    def __str__(self) -> str:
        return f"{self.preset} / {self.method} / seed {self.seed}"

    def run_dir(self, root: Path) -> Path:
        return root / self.preset / self.method / f"seed{self.seed}"

    def config(self, root: Path, overrides: list[str], data_dir: str | None) -> RunConfig:
        """What this cell trains: the preset with the cell's method and seed, then the sweep's
        overrides. A run already in the cell's directory must agree with it (start-or-resume)."""
        settings = [f"method.name={self.method}", f"train.seed={self.seed}", *overrides]
        return api.resolve_config(self.preset, settings, data_dir=data_dir)

    def train(self, root: Path, overrides: list[str], data_dir: str | None) -> api.RunResult:
        """Train this run in this process: start it, start it again if it died before its first
        checkpoint, or continue it from its checkpoint."""
        cfg = self.config(root, overrides, data_dir)
        self.run_dir(root).parent.mkdir(parents=True, exist_ok=True)
        return api.train(cfg, out_dir=self.run_dir(root), resume=True)


def plan(presets: list[str], methods: list[str], seeds: list[int]) -> list[Cell]:
    from asymco.methods import METHODS
    from asymco.presets import PRESETS

    for name in presets:
        PRESETS.get(name)
    for name in methods:
        METHODS.get(name)
    return [Cell(*c) for c in itertools.product(presets, methods, seeds)]


def run_sweep(
    cells: list[Cell],
    root: Path,
    *,
    overrides: list[str],
    data_dir: str | None,
    parallel: int = 1,
    pack: int = 1,
) -> list[Cell]:
    """Run every incomplete cell (in this process one after another, `parallel` worker
    processes at a time, or in packs of up to `pack` runs trained together). Returns the cells
    that failed.

    KeyboardInterrupt and PreemptedError (SIGTERM) stop the sweep and propagate."""
    todo = [c for c in cells if not (c.run_dir(root) / "summary.json").is_file()]
    logger.info(
        "sweep %s: %d runs, %d complete, %d to run",
        root,
        len(cells),
        len(cells) - len(todo),
        len(todo),
    )
    if parallel > 1:
        return _run_processes(todo, root, overrides, data_dir, parallel)
    groups = packs(todo, root, overrides, data_dir, pack) if pack > 1 else [[c] for c in todo]
    failed = []
    for i, group in enumerate(groups, 1):
        logger.info("[%d/%d] %s", i, len(groups), " + ".join(map(str, group)))
        if len(group) == 1:
            failed += [] if run_cell(group[0], root, overrides, data_dir) else group
        elif not run_cells_packed(group, root, overrides, data_dir):
            # One member's problem (a damaged checkpoint, a diverging loss) must not cost the
            # others: each continues alone from its own checkpoint, or fails on its own.
            logger.warning("the pack failed; training its %d runs one at a time", len(group))
            failed += [c for c in group if not run_cell(c, root, overrides, data_dir)]
    return failed


def packs(
    cells: list[Cell], root: Path, overrides: list[str], data_dir: str | None, size: int
) -> list[list[Cell]]:
    """The cells in packs of up to `size`: runs that can share a pack (`pack_key`, a packable
    method) are put together, the rest train alone. A cell whose settings fail is left alone,
    so it fails with its own message."""
    from asymco.engine.pack import pack_key, why_unpackable
    from asymco.methods import METHODS

    together: dict[str, list[Cell]] = {}
    alone = []
    for cell in cells:
        try:
            cfg = cell.config(root, overrides, data_dir)
        except UserError:
            alone.append([cell])
            continue
        if why_unpackable(cfg, METHODS.get(cfg.method.name)):
            alone.append([cell])
        else:
            together.setdefault(pack_key(cfg), []).append(cell)
    chunks = [
        group[i : i + size] for group in together.values() for i in range(0, len(group), size)
    ]
    return chunks + alone


def run_cells_packed(
    cells: list[Cell], root: Path, overrides: list[str], data_dir: str | None
) -> bool:
    """Train cells as one pack (new or interrupted, each as its directory says); False if it
    failed. KeyboardInterrupt and PreemptedError propagate, as in `run_cell`."""
    try:
        cfgs = [cell.config(root, overrides, data_dir) for cell in cells]
        for cell in cells:
            cell.run_dir(root).parent.mkdir(parents=True, exist_ok=True)
        results = api.train_pack(
            cfgs, [c.run_dir(root) for c in cells], resume=True
        )
    except PreemptedError:
        raise
    except UserError as err:
        logger.error("pack of %d (%s): %s", len(cells), cells[0], _one_line(err))
        return False
    except Exception as err:  # a crash in one pack must not lose the other runs
        logger.error("pack of %d (%s): %s: %s", len(cells), cells[0], type(err).__name__, err)
        return False
    for result in results:
        logger.info(api.describe_run(result.summary, result.run_dir))
    return True


def run_cell(cell: Cell, root: Path, overrides: list[str], data_dir: str | None) -> bool:
    """Train one cell in this process and log how it ended; False if it failed.

    A failed run is one line in the log and the sweep goes on; KeyboardInterrupt and
    PreemptedError propagate, as they stop the sweep."""
    try:
        result = cell.train(root, overrides, data_dir)
    except PreemptedError:
        raise
    except UserError as err:
        logger.error("%s: %s", cell, _one_line(err))
        return False
    except OSError as err:  # a full disk: the run keeps its last checkpoint
        logger.error("%s: %s", cell, describe_os_error(err))
        return False
    except Exception as err:  # a crash in one run must not lose the others
        logger.error("%s: %s: %s", cell, type(err).__name__, _one_line(err))
        return False
    logger.info(api.describe_run(result.summary, result.run_dir))
    return True


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).splitlines())


class SweepPreemptedError(PreemptedError):
    """SIGTERM reached a parallel sweep: it stopped its worker processes, whose runs saved their
    checkpoints, and stops too."""

    def __init__(self, root: Path) -> None:
        Exception.__init__(self, "stopped by SIGTERM; the runs in progress saved checkpoints")
        self.epoch = self.step = None
        self.run_dir = root


def _run_processes(
    todo: list[Cell], root: Path, overrides: list[str], data_dir: str | None, parallel: int
) -> list[Cell]:
    # Split the cores between the processes so their thread pools do not oversubscribe them.
    threads = max(1, (os.cpu_count() or 1) // parallel)
    context = multiprocessing.get_context("spawn")
    overrides = [*overrides, "train.progress=false"]
    running: dict[BaseProcess, Cell] = {}
    failed, queue = [], list(todo)
    with _environment(OMP_NUM_THREADS=str(threads)), _sigterm_raises(root):
        try:
            while queue or running:
                while queue and len(running) < parallel:
                    cell = queue.pop(0)
                    cell.run_dir(root).parent.mkdir(parents=True, exist_ok=True)
                    args = (cell, str(root), overrides, data_dir, threads)
                    proc = context.Process(target=_worker, args=args, name=str(cell))
                    proc.start()
                    running[proc] = cell
                wait([proc.sentinel for proc in running])
                for proc in [p for p in running if p.exitcode is not None]:
                    cell = running.pop(proc)
                    if proc.exitcode == 0:
                        logger.info("%s: done", cell)
                        _log_summary(cell.run_dir(root))
                    else:
                        logger.error(
                            "%s: failed (exit code %s; see %s)",
                            cell,
                            proc.exitcode,
                            _log_file(cell, root),
                        )
                        failed.append(cell)
        except BaseException:  # Ctrl-C or SIGTERM: the runs in progress stop too
            _stop(list(running))
            raise
    return failed


def _worker(
    cell: Cell, root: str, overrides: list[str], data_dir: str | None, threads: int
) -> None:
    """A worker process: train one cell with its output in the cell's .log file."""
    fd = os.open(_log_file(cell, Path(root)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    torch.set_num_threads(threads)
    status = 0
    try:
        status = 0 if run_cell(cell, Path(root), overrides, data_dir) else EXIT_FAILED
    except KeyboardInterrupt:
        logger.error("%s: interrupted", cell)
        status = EXIT_INTERRUPTED
    except PreemptedError as stopped:
        logger.error("%s: %s", cell, stopped)
        status = EXIT_TERMINATED
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(status)


def _log_file(cell: Cell, root: Path) -> Path:
    return cell.run_dir(root).parent / f"seed{cell.seed}.log"


def _log_summary(run_dir: Path) -> None:
    from asymco.untrusted import TEXT_LIMIT, decoding, read_text

    path = run_dir / "summary.json"
    try:  # a line of the log: a damaged summary is a warning, and the sweep goes on
        with decoding(path, "run file"):
            line = api.describe_run(json.loads(read_text(path, "run file", TEXT_LIMIT)), run_dir)
    except UserError as err:
        logger.warning("%s", err)
    else:
        logger.info(line)


def _stop(procs: list[BaseProcess]) -> None:
    """SIGTERM each worker (a run in training saves its checkpoint and ends), then wait for
    them; a second Ctrl-C stops the waiting and kills them."""
    for proc in procs:
        proc.terminate()
    try:
        for proc in procs:
            proc.join()
    except BaseException:
        for proc in procs:
            proc.kill()
        raise


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """These environment variables set while worker processes start (they inherit them)."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _sigterm_raises(root: Path) -> Iterator[None]:
    """SIGTERM raises SweepPreemptedError (main thread only), so the workers are stopped, not left
    running without this process."""

    def stop(signum: int, frame: object) -> None:
        raise SweepPreemptedError(root)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_parallel(parallel: int, pack: int = 1) -> None:
    if parallel < 1:
        raise UserError("--parallel must be at least 1")
    if pack < 1:
        raise UserError("--pack must be at least 1")
    if parallel > 1 and pack > 1:
        raise UserError(
            "use --parallel (several processes) or --pack (one batched process), not both"
        )
