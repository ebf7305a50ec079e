"""The results table: one row per (preset, method), aggregated over seeds.

Each run contributes one number, its summary's `test_acc_last10_mean` (the mean test accuracy
of its last 10 epochs, the paper's protocol). A row shows the mean of those numbers over the
row's runs ± their sample standard deviation (ddof = 1; 0 when the row has a single run), the
paper's number for the cell (summary `paper_test_acc`) and the difference mean − paper.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field

from asymco.report.collect import Run
from asymco.text import printable

logger = logging.getLogger(__name__)

FORGET_RATE_METHODS = ("coteaching", "coteaching_plus", "jocor")
"""Baselines that drop a share `method.forget_rate` of each batch; None means `noise.rate`."""
NO_FORGET_RATE_METHODS = ("act", "standard")
"""Methods that ignore `method.forget_rate` (it stays in their config.yaml as null)."""

FORGET_RATE_NOTE = "forget rate = true noise rate (as those papers assume)"
FORGET_RATE_MARK = "†"
SHORTENED_MARK = "‡"
SHORTENED_NOTE = (
    "shortened runs (a data subset, or other epochs than the preset's): the paper's number is "
    "shown for reference only, not compared"
)
STD_NOTE = (
    "Each run's figure is the mean test accuracy (%) of its last 10 epochs (the paper's "
    "protocol). A row gives the mean ± sample standard deviation (ddof = 1) of that figure over "
    "the row's runs (seeds); a row with a single run shows ± 0.00. "
    "Paper: the paper's number for this method in this cell (summary.json paper_test_acc); "
    "— where it reports none."
)
COLUMNS = (
    "preset",
    "method",
    "seeds",
    "n",
    "test acc. last 10 (%)",
    "paper (%)",
    "mean − paper",
)


@dataclass(frozen=True)
class TableRow:
    """One (preset, method) cell aggregated over its runs.

    Attributes:
        preset: The preset name.
        method: The method name.
        seeds: Each run's `train.seed` (None where unknown), in run order.
        values: Each run's `test_acc_last10_mean`, in run order.
        mean: Mean of `values`.
        std: Sample standard deviation of `values` (ddof = 1), 0.0 for a single run.
        paper: The paper's number for the cell, or None.
        diff: `mean - paper`, or None without a paper number.
        true_noise_forget_runs: How many runs set the forget rate from the true noise rate.
        run_names: The run directory names, in run order.
        shortened: Some run left its preset's data or schedule (summary `paper_protocol`
            false): `diff` is then None.
    """

    preset: str
    method: str
    seeds: list[int | None]
    values: list[float]
    mean: float
    std: float
    paper: float | None
    diff: float | None
    true_noise_forget_runs: int = 0
    run_names: list[str] = field(default_factory=list)
    shortened: bool = False

    @property
    def n(self) -> int:
        """Number of runs (seeds) in the row."""
        return len(self.values)

    def cells(self) -> list[str]:
        """The row as display strings, in `COLUMNS` order (not escaped)."""
        method = self.method
        if self.true_noise_forget_runs:
            method += f" {FORGET_RATE_MARK}"
        if self.shortened:
            method += f" {SHORTENED_MARK}"
        seeds = ", ".join("?" if s is None else str(s) for s in self.seeds)
        return [
            self.preset,
            method,
            seeds,
            str(self.n),
            f"{self.mean:.2f} ± {self.std:.2f}",
            "—" if self.paper is None else f"{self.paper:.2f}",
            "—" if self.diff is None else f"{self.diff:+.2f}",
        ]


def forget_rate_is_true_noise(run: Run) -> bool:
    """Whether a small-loss baseline dropped the true noise rate's share of each batch.

    True for a method that uses `method.forget_rate` when that is null (filled from
    `noise.rate` at run time) or equals `noise.rate`.

    Args:
        run: The run.

    Returns:
        Whether the footnote applies to the run.
    """
    method = run.config.get("method") if isinstance(run.config.get("method"), dict) else {}
    noise = run.config.get("noise") if isinstance(run.config.get("noise"), dict) else {}
    forget = method.get("forget_rate")
    if run.method in NO_FORGET_RATE_METHODS:
        return False
    if run.method not in FORGET_RATE_METHODS and forget is None:
        return False
    if forget is None:
        return True
    rate = noise.get("rate")
    return isinstance(rate, (int, float)) and math.isclose(float(forget), float(rate))


def _paper(runs: list[Run]) -> float | None:
    numbers = {
        float(r.summary["paper_test_acc"])
        for r in runs
        if isinstance(r.summary.get("paper_test_acc"), (int, float))
    }
    if len(numbers) > 1:
        logger.warning(
            "runs of %s / %s disagree on the paper's number %s; showing the first",
            printable(runs[0].preset),
            printable(runs[0].method),
            sorted(numbers),
        )
    for run in runs:
        value = run.summary.get("paper_test_acc")
        if isinstance(value, (int, float)):
            return float(value)
    return None


def build_rows(runs: list[Run]) -> list[TableRow]:
    """Group runs by (preset, method) and aggregate each group.

    Args:
        runs: Runs as returned by `find_runs`.

    Returns:
        One row per (preset, method), sorted by preset then method.
    """
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.preset, run.method), []).append(run)
    rows: list[TableRow] = []
    for (preset, method), members in sorted(groups.items()):
        values = [float(r.summary["test_acc_last10_mean"]) for r in members]
        seeds = [r.seed for r in members]
        known = [s for s in seeds if s is not None]
        if len(set(known)) < len(known):
            logger.warning(
                "%s / %s has several runs with the same seed: %s",
                printable(preset),
                printable(method),
                [r.name for r in members],
            )
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        paper = _paper(members)
        shortened = paper is not None and any(
            r.summary.get("paper_protocol") is False for r in members
        )
        rows.append(
            TableRow(
                preset=preset,
                method=method,
                seeds=seeds,
                values=values,
                mean=mean,
                std=std,
                paper=paper,
                diff=None if paper is None or shortened else mean - paper,
                true_noise_forget_runs=sum(forget_rate_is_true_noise(r) for r in members),
                run_names=[r.name for r in members],
                shortened=shortened,
            )
        )
    return rows


def footnotes(rows: list[TableRow]) -> list[str]:
    """The notes printed under the table (plain text, not escaped).

    Args:
        rows: The table rows.

    Returns:
        The standard-deviation note, then the forget-rate and shortened-run notes when a row
        needs them.
    """
    notes = [STD_NOTE]
    partial = [r for r in rows if 0 < r.true_noise_forget_runs < r.n]
    if any(r.true_noise_forget_runs for r in rows):
        note = f"{FORGET_RATE_MARK} {FORGET_RATE_NOTE}"
        if partial:
            detail = "; ".join(
                f"{r.preset} / {r.method}: {r.true_noise_forget_runs} of {r.n} runs"
                for r in partial
            )
            note += f" ({detail})"
        notes.append(note + ".")
    if any(r.shortened for r in rows):
        notes.append(f"{SHORTENED_MARK} {SHORTENED_NOTE}.")
    return notes


def markdown_escape(text: str) -> str:
    """Make file text safe inside a Markdown table cell: no HTML, pipes or line breaks.

    Args:
        text: Any text read from a run's files.

    Returns:
        The text with `&`, `<`, `>` as entities, `|` escaped and newlines as spaces.
    """
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(rows: list[TableRow]) -> str:
    """The table as GitHub-flavoured Markdown, with its footnotes below.

    Args:
        rows: The table rows.

    Returns:
        Markdown text ending in a newline.
    """
    align = ["---", "---", "---", "--:", "--:", "--:", "--:"]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(markdown_escape(c) for c in row.cells()) + " |")
    lines.append("")
    lines.extend(f"{markdown_escape(note)}\n" for note in footnotes(rows))
    return "\n".join(lines)
