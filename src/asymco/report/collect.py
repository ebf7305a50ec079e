"""Find and read run directories: `config.yaml`, `metrics.jsonl` and `summary.json` only.

The report never imports the training code; everything it shows comes from these three files,
so it works on runs copied from another machine or written by an older version.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asymco.errors import UserError
from asymco.text import printable
from asymco.untrusted import TEXT_LIMIT, decoding, read_text

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE)


@dataclass
class Run:
    """One finished run, as read from its directory.

    Attributes:
        path: The run directory.
        config: The resolved configuration (`config.yaml`).
        metrics: One dict per epoch, in file order (`metrics.jsonl`).
        summary: The final figures (`summary.json`).
    """

    path: Path
    config: dict[str, Any] = field(repr=False)
    metrics: list[dict[str, Any]] = field(repr=False)
    summary: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        """The directory name, e.g. `quickstart-act-s123-20260101-120000`."""
        return self.path.name

    @property
    def title(self) -> str:
        """What the run is, e.g. `quickstart / act / seed 1 (seed1)`."""
        seed = "" if self.seed is None else f" / seed {self.seed}"
        return f"{self.preset} / {self.method}{seed} ({self.path.name})"

    @property
    def preset(self) -> str:
        """The preset name (summary first, then config)."""
        return str(self.summary.get("preset") or self.config.get("preset") or "?")

    @property
    def method(self) -> str:
        """The method name (summary first, then config `method.name`)."""
        return str(self.summary.get("method") or _section(self.config, "method").get("name") or "?")

    @property
    def seed(self) -> int | None:
        """The training seed (`train.seed`), or None when the config does not say."""
        seed = _section(self.config, "train").get("seed")
        return seed if isinstance(seed, int) else None

    @property
    def tau(self) -> float | None:
        """ACT's memorisation threshold (`method.tau`), or None."""
        tau = _section(self.config, "method").get("tau")
        return float(tau) if isinstance(tau, (int, float)) else None

    def series(self, key: str) -> list[float | None]:
        """One metric per epoch, None where an epoch did not record it.

        Args:
            key: A `metrics.jsonl` field, e.g. `test_acc`.

        Returns:
            A list as long as `metrics`.
        """
        values: list[float | None] = []
        for row in self.metrics:
            value = row.get(key)
            values.append(float(value) if isinstance(value, (int, float)) else None)
        return values

    def has(self, key: str) -> bool:
        """Whether any epoch recorded a number for `key`."""
        return any(value is not None for value in self.series(key))


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def _read_text(path: Path) -> str:
    return read_text(path, "run file", TEXT_LIMIT)


def load_run(path: Path | str) -> Run:
    """Read one run directory.

    Args:
        path: A directory holding `config.yaml`, `metrics.jsonl` and `summary.json`.

    Returns:
        The run.

    Raises:
        UserError: The directory is missing, lacks one of the files (named in the message),
            or a file cannot be parsed.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a directory")
    missing = [name for name in RUN_FILES if not (path / name).is_file()]
    if missing:
        raise UserError(
            f"{path} is not a complete run directory: missing {', '.join(missing)} "
            "(a run still training has no summary.json yet)"
        )
    with decoding(path / CONFIG_FILE, "run file", "copy the run again"):
        config = yaml.safe_load(_read_text(path / CONFIG_FILE))
    if not isinstance(config, dict):
        raise UserError(f"{path / CONFIG_FILE} does not hold a mapping of settings")
    metrics: list[dict[str, Any]] = []
    for number, line in enumerate(_read_text(path / METRICS_FILE).splitlines(), start=1):
        if not line.strip():
            continue
        with decoding(
            path / METRICS_FILE, "run file", f"fix its line {number} or copy the run again"
        ):
            row = json.loads(line)
        if not isinstance(row, dict):
            raise UserError(f"{path / METRICS_FILE} line {number} is not a JSON object")
        metrics.append(row)
    if not metrics:
        raise UserError(f"{path / METRICS_FILE} holds no epochs")
    with decoding(path / SUMMARY_FILE, "run file", "copy the run again"):
        summary = json.loads(_read_text(path / SUMMARY_FILE))
    if not isinstance(summary, dict) or not isinstance(
        summary.get("test_acc_last10_mean"), (int, float)
    ):
        raise UserError(f"{path / SUMMARY_FILE} has no number test_acc_last10_mean")
    return Run(path=path, config=config, metrics=metrics, summary=summary)


def _looks_like_run(directory: Path) -> bool:
    return any((directory / name).is_file() for name in RUN_FILES)


def _candidate_dirs(root: Path) -> list[Path]:
    """Directories under `root` (itself included) holding any run file; run dirs are not
    searched further."""
    if _looks_like_run(root):
        return [root]
    found: list[Path] = []
    for current, subdirs, _files in os.walk(root):
        subdirs.sort()
        here = Path(current)
        if here != root and _looks_like_run(here):
            found.append(here)
            subdirs.clear()
    return found


def find_runs(paths: list[Path] | list[str]) -> list[Run]:
    """Collect the complete runs in `paths`.

    Each path may be a run directory or a directory holding run directories at any depth.
    A directory that has some of the run files but not all of them (a run still training or
    a broken copy) is skipped with a logged warning. A run reached twice counts once.

    Args:
        paths: Run directories or directories containing them.

    Returns:
        The runs, in the order found (paths in the given order, each searched in name order).

    Raises:
        UserError: A path does not exist or is not a directory, or no complete run was found.
    """
    runs: list[Run] = []
    skipped: list[tuple[Path, UserError]] = []
    seen: set[Path] = set()
    for given in map(Path, paths):
        if not given.is_dir():
            raise UserError(
                f"{given} is not a directory (expected a run directory or a folder of them)"
            )
        for directory in _candidate_dirs(given):
            key = directory.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                runs.append(load_run(directory))
            except UserError as err:
                skipped.append((directory, err))
    if not runs and skipped:  # nothing to report: the reason is the one sentence
        more = len(skipped) - 1
        raise UserError(
            f"{skipped[0][1]}{f' ({more} more runs are unreadable too)' if more else ''}"
        )
    for directory, err in skipped:
        logger.warning("skipping %s: %s", printable(directory), err)
    if not runs:
        shown = ", ".join(str(p) for p in paths) or "(no paths given)"
        raise UserError(f"no complete run directory (with {', '.join(RUN_FILES)}) found in {shown}")
    return runs
