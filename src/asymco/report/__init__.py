"""`asymco report`: tables and plots from finished run directories.

Reads only each run's `config.yaml`, `metrics.jsonl` and `summary.json`, never the training
code, and writes `report.md` (with one PNG per run next to it) and a self-contained
`report.html`.

Example:
    >>> from pathlib import Path
    >>> from asymco.report import make_report
    >>> md, page = make_report([Path("runs")], Path("runs/report"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

from asymco.report.collect import Run, find_runs, load_run
from asymco.report.render import write_report
from asymco.report.tables import TableRow, build_rows, markdown_table
from asymco.text import printable

logger = logging.getLogger(__name__)


def make_report(paths: list[Path], out_dir: Path) -> tuple[Path, Path]:
    """Find the runs under `paths` and write the report into `out_dir`.

    Args:
        paths: Run directories, or directories holding run directories at any depth.
            Incomplete runs are skipped with a logged warning.
        out_dir: Where `report.md`, its PNG files and `report.html` go (created if missing).

    Returns:
        The paths of `report.md` and `report.html`.

    Raises:
        asymco.errors.UserError: A path is not a directory, or no complete run was found.
    """
    runs = find_runs(list(paths))
    markdown_path, html_path = write_report(runs, Path(out_dir))
    logger.info(
        "report on %d runs: %s, %s", len(runs), printable(markdown_path), printable(html_path)
    )
    return markdown_path, html_path


__all__ = [
    "Run",
    "TableRow",
    "build_rows",
    "find_runs",
    "load_run",
    "make_report",
    "markdown_table",
    "write_report",
]
