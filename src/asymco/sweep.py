"""`asymco sweep`: a grid of presets x methods x seeds into one sweep directory.

Each run lives in `<sweep>/<preset>/<method>/seed<k>`. A run whose summary.json exists is
complete and skipped; one with a checkpoint but no summary was interrupted and is resumed. So an
interrupted sweep continues where it stopped when the same command is run again.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from asymco.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    preset: str
    method: str
    seed: int

    def run_dir(self, root: Path) -> Path:
        return root / self.preset / self.method / f"seed{self.seed}"

    def args(self, root: Path, overrides: list[str], data_dir: str | None) -> list[str]:
        """`asymco` arguments that start this run, or resume it if it was interrupted."""
        out = self.run_dir(root)
        if (out / "checkpoint.pt").is_file():
            return ["train", "--resume", "--out", str(out)]
        settings = [f"method.name={self.method}", f"train.seed={self.seed}", *overrides]
        args = ["train", "--preset", self.preset, "--out", str(out)]
        args += [arg for item in settings for arg in ("--set", item)]
        return args + (["--data-dir", data_dir] if data_dir else [])


def plan(presets: list[str], methods: list[str], seeds: list[int]) -> list[Cell]:
    from asymco.methods import METHODS
    from asymco.presets import PRESETS

    for name in presets:
        PRESETS.get(name)
    for name in methods:
        METHODS.get(name)
    return [Cell(*c) for c in itertools.product(presets, methods, seeds)]


def run_sweep(
    cells: list[Cell], root: Path, *, overrides: list[str], data_dir: str | None, parallel: int = 1
) -> list[Cell]:
    """Run every incomplete cell (in this process one after another, or `parallel` worker
    processes at a time). Returns the cells that failed."""
    todo = [c for c in cells if not (c.run_dir(root) / "summary.json").is_file()]
    logger.info(
        "sweep %s: %d runs, %d complete, %d to run",
        root,
        len(cells),
        len(cells) - len(todo),
        len(todo),
    )
    if parallel <= 1:
        from asymco.cli import main

        failed = []
        for i, cell in enumerate(todo, 1):
            logger.info("[%d/%d] %s / %s / seed %d", i, len(todo), *vars(cell).values())
            (cell.run_dir(root)).parent.mkdir(parents=True, exist_ok=True)
            status = main(cell.args(root, overrides, data_dir))
            if status == 130:  # Ctrl-C: stop the sweep; the same command resumes it
                raise KeyboardInterrupt
            if status != 0:
                failed.append(cell)
        return failed
    return _run_processes(todo, root, overrides, data_dir, parallel)


def _run_processes(
    todo: list[Cell], root: Path, overrides: list[str], data_dir: str | None, parallel: int
) -> list[Cell]:
    # Split the cores between the processes so their thread pools do not oversubscribe them.
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // parallel))}
    running: dict[subprocess.Popen, Cell] = {}
    failed, queue = [], list(todo)
    while queue or running:
        while queue and len(running) < parallel:
            cell = queue.pop(0)
            out = cell.run_dir(root)
            out.parent.mkdir(parents=True, exist_ok=True)
            log = (out.parent / f"seed{cell.seed}.log").open("w")
            args = cell.args(root, [*overrides, "train.progress=false"], data_dir)
            proc = subprocess.Popen(
                [sys.executable, "-m", "asymco", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            running[proc] = cell
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            cell = running.pop(proc)
            status = "done" if proc.returncode == 0 else f"failed ({proc.returncode})"
            logger.info("%s / %s / seed %d: %s", *vars(cell).values(), status)
            if proc.returncode != 0:
                failed.append(cell)
    return failed


def check_parallel(parallel: int) -> None:
    if parallel < 1:
        raise UserError("--parallel must be at least 1")
