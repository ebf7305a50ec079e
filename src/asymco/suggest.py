"""What to do with each training label: keep it, relabel it to the predicted class, or have a
person review it (`asymco issues RUN --export FILE.csv`).

The rule, applied to each row of a run's `label_issues.csv`:

- **keep** when the run does not flag the label (`is_label_issue` is false);
- **relabel** to the predicted class X when the label is flagged, X differs from the given
  class and the net gives X a probability of at least `confident` (default 0.5). At 0.5 or
  more, X is more probable than every other class *together*, the given one included, so
  the net is not torn between X and a third class, and the given label has at most 1 - p(X);
- **review** when the label is flagged but the net is not that sure of another class: it
  spreads its belief over several classes, or agrees with the given class although the
  selection rejected the sample, or the run predates the `predicted_label_prob` column.

Class names and paths come from users, so every text cell that a spreadsheet would read as a
formula (one beginning with `=`, `+`, `-`, `@`, a tab or a carriage return) is written with a
leading apostrophe (OWASP's advice against CSV injection; `asymco.text.csv_cell`). Number cells
are written as they are.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from asymco.errors import UserError
from asymco.files import write_text_atomic
from asymco.label_issues import read_label_issues
from asymco.text import csv_cell

CONFIDENT = 0.5
"""Predicted-class probability from which a flagged label is relabelled instead of reviewed."""
EXPORT_COLUMNS = (
    "index",
    "path",
    "given_label",
    "given_class",
    "action",
    "suggested_label",
    "suggested_class",
    "predicted_class",
    "predicted_label_prob",
    "label_score",
)
Action = Literal["keep", "relabel", "review"]


@dataclass(frozen=True)
class Suspect:
    """One row of `label_issues.csv`, with typed values."""

    rank: int
    """Position in the file: 0 = the most suspect label."""
    index: int
    path: str
    given_label: int
    given_class: str
    predicted_label: int
    predicted_class: str
    label_score: float
    is_label_issue: bool
    selected_share: float
    """NaN for a method without a selection history."""
    given_label_prob: float
    predicted_label_prob: float
    """NaN for a run written before the column existed."""


def read_suspects(path: Path) -> list[Suspect]:
    """The rows of `label_issues.csv`, most suspect first; a damaged file is one `UserError`."""
    rows = read_label_issues(path)
    if not rows:
        raise UserError(f"{path} holds no rows; the run wrote no label table")
    suspects = []
    for rank, row in enumerate(rows):
        try:
            suspects.append(_suspect(rank, row))
        except (TypeError, ValueError) as err:  # None: a short row; ValueError: not a number
            raise UserError(f"{path} is damaged at data row {rank + 1} ({err})") from None
    return suspects


def _suspect(rank: int, row: dict[str, str]) -> Suspect:
    flag = row["is_label_issue"]
    if flag not in ("True", "False"):
        raise ValueError(f"is_label_issue is {flag!r}, not True or False")
    share, predicted_prob = row["selected_share"], row.get("predicted_label_prob") or ""
    suspect = Suspect(
        rank=rank,
        index=int(row["index"]),
        path=str(row["path"]),
        given_label=int(row["given_label"]),
        given_class=str(row["given_class"]),
        predicted_label=int(row["predicted_label"]),
        predicted_class=str(row["predicted_class"]),
        label_score=float(row["label_score"]),
        is_label_issue=flag == "True",
        selected_share=float(share) if share else math.nan,
        given_label_prob=float(row["given_label_prob"]),
        predicted_label_prob=float(predicted_prob) if predicted_prob else math.nan,
    )
    if suspect.index < 0 or suspect.given_label < 0 or suspect.predicted_label < 0:
        raise ValueError("a negative index or label")
    return suspect


def suggest(suspect: Suspect, *, confident: float = CONFIDENT) -> tuple[Action, str]:
    """The action for one label and the class it suggests (the module docstring's rule).

    Returns:
        ("keep", given class), ("relabel", predicted class) or ("review", "").
    """
    if not suspect.is_label_issue:
        return "keep", suspect.given_class
    other = suspect.predicted_label != suspect.given_label
    if other and suspect.predicted_label_prob >= confident:  # NaN (unknown) compares False
        return "relabel", suspect.predicted_class
    return "review", ""


def export_rows(suspects: list[Suspect], *, confident: float = CONFIDENT) -> list[list[str]]:
    """The export table's rows (`EXPORT_COLUMNS`), most suspect first, text cells made inert
    (`csv_cell`: `csv_value` reads each name back)."""
    rows = []
    for s in suspects:
        action, suggested = suggest(s, confident=confident)
        label = {"keep": s.given_label, "relabel": s.predicted_label}.get(action)
        probability = "" if math.isnan(s.predicted_label_prob) else f"{s.predicted_label_prob:.6f}"
        cells = [
            str(s.index),
            csv_cell(s.path),
            str(s.given_label),
            csv_cell(s.given_class),
            action,
            "" if label is None else str(label),
            csv_cell(suggested),
            csv_cell(s.predicted_class),
            probability,
            f"{s.label_score:.6f}",
        ]
        rows.append(cells)
    return rows


def write_export(path: Path, suspects: list[Suspect], *, confident: float = CONFIDENT) -> Path:
    """Write the suggested labels to `path` (CSV, atomically) and return it."""
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory; name a .csv file")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    writer.writerows(export_rows(suspects, confident=confident))
    try:
        write_text_atomic(path, buffer.getvalue())
    except OSError as err:
        raise UserError(f"cannot write {path} ({err.strerror})") from None
    return path


def action_counts(suspects: list[Suspect], *, confident: float = CONFIDENT) -> dict[str, int]:
    """How many labels get each action, e.g. {"keep": 950, "relabel": 30, "review": 20}."""
    counts = dict.fromkeys(("keep", "relabel", "review"), 0)
    for s in suspects:
        counts[suggest(s, confident=confident)[0]] += 1
    return counts
