"""Which training labels are probably wrong: ACT's answer from one training run.

ACT decides every epoch which samples it trusts (the selection). A sample whose label is wrong
is rarely selected, and the robust model (RTM) rarely predicts its given label. The per-sample
table combines both signals; column names follow cleanlab's (`given_label`, `predicted_label`,
`label_score`, `is_label_issue`) so its users can read it without a manual.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from asymco.errors import UserError
from asymco.files import write_text_atomic
from asymco.text import csv_cell, csv_value
from asymco.untrusted import TABLE_LIMIT, decoding, read_text

COLUMNS = (
    "index",
    "path",
    "given_label",
    "given_class",
    "predicted_label",
    "predicted_class",
    "label_score",
    "is_label_issue",
    "selected_epochs",
    "selected_share",
    "given_label_prob",
    "predicted_label_prob",
)
TEXT_COLUMNS = ("path", "given_class", "predicted_class")
"""The user's text (file paths, class names): written with `csv_cell`, so a name a spreadsheet
would run as a formula is inert, and read back with `csv_value`. The other columns are numbers
and flags, written as they are."""
OPTIONAL_COLUMNS = ("predicted_label_prob",)
"""Columns added after the first release: a `label_issues.csv` of an older run lacks them."""


def label_quality(
    given_labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    selected_epochs: np.ndarray | None = None,
    epochs_after_warmup: int = 0,
    last_selected: np.ndarray | None = None,
    clean_score: np.ndarray | None = None,
    clean_cut: float = 0.5,
) -> dict[str, np.ndarray]:
    """Per-sample label quality from the RTM's predictions and ACT's selection history.

    Args:
        given_labels: (N,) observed labels.
        pred_probs: (N, K) the reported net's softmax on the un-augmented training images.
        selected_epochs: (N,) number of robust epochs in which each sample was selected, or
            None for a method without selection.
        epochs_after_warmup: how many epochs ran after warmup (the robust epochs of ACT).
        last_selected: (N,) bool selection of the last epoch (None: no selection).
        clean_score: (N,) the method's own judgement in [0, 1] that each label is correct
            (`Method.clean_scores`): when given, it is the `label_score`, and a score below
            `clean_cut` (the method's own line, `Method.clean_cut`) is a label issue.

    Returns:
        Columns `predicted_label`, `given_label_prob`, `predicted_label_prob` (the net's
        probability of its own prediction: what `asymco.suggest` needs to propose a new label),
        `selected_share`, `label_score` (in [0, 1], higher = more likely correct: the mean of
        the selected share and the given label's probability, or the probability alone without
        a selection history) and
        `is_label_issue` (not selected in the last robust epoch; without one, the prediction
        disagrees with the given label).
    """
    given = np.asarray(given_labels, dtype=np.int64)
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != given.shape[0]:
        raise UserError(f"pred_probs must have shape ({given.shape[0]}, K), got {probs.shape}")
    predicted = probs.argmax(1)
    given_prob = probs[np.arange(len(given)), given]
    if selected_epochs is not None and epochs_after_warmup > 0:
        share = np.clip(np.asarray(selected_epochs, dtype=np.float64) / epochs_after_warmup, 0, 1)
        score = 0.5 * (share + given_prob)
        issue = ~np.asarray(last_selected, dtype=bool)
    else:
        share = np.full(len(given), np.nan)
        score = given_prob
        issue = predicted != given
    if clean_score is not None:
        score = np.asarray(clean_score, dtype=np.float64)
        issue = score < clean_cut
    return {
        "predicted_label": predicted,
        "given_label_prob": given_prob,
        "predicted_label_prob": probs.max(1),
        "selected_share": share,
        "label_score": score,
        "is_label_issue": issue,
    }


def rank_label_issues(label_score: np.ndarray) -> np.ndarray:
    """Sample indices from most to least suspect (lowest score first; ties by index)."""
    return np.lexsort((np.arange(len(label_score)), label_score))


def write_label_issues(
    path: Path,
    quality: dict[str, np.ndarray],
    *,
    given_labels: np.ndarray,
    classes: list[str],
    selected_epochs: np.ndarray | None,
    paths: np.ndarray | None = None,
    sample_id: np.ndarray | None = None,
) -> None:
    """Write `label_issues.csv`: one row per training sample, most suspect first. `index` is
    `sample_id[i]` (the sample's position in the user's data) when given, else i."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for i in rank_label_issues(quality["label_score"]):
        given, predicted = int(given_labels[i]), int(quality["predicted_label"][i])
        share = quality["selected_share"][i]
        writer.writerow(
            [
                int(i if sample_id is None else sample_id[i]),
                "" if paths is None else csv_cell(str(paths[i])),
                given,
                csv_cell(classes[given]),
                predicted,
                csv_cell(classes[predicted]),
                f"{quality['label_score'][i]:.6f}",
                bool(quality["is_label_issue"][i]),
                "" if selected_epochs is None else int(selected_epochs[i]),
                "" if np.isnan(share) else f"{share:.6f}",
                f"{quality['given_label_prob'][i]:.6f}",
                f"{quality['predicted_label_prob'][i]:.6f}",
            ]
        )
    write_text_atomic(path, buffer.getvalue())


def read_label_issues(path: Path) -> list[dict[str, str]]:
    """The rows of a run directory's `label_issues.csv`, most suspect first, with the paths and
    class names as the run was given them (`TEXT_COLUMNS`)."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; is this an asymco run directory?")
    text = read_text(path, "the label table", TABLE_LIMIT)
    with decoding(path, "the label table", "is it the label_issues.csv a run wrote?"):
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    missing = set(COLUMNS) - set(OPTIONAL_COLUMNS) - set(rows[0] if rows else COLUMNS)
    if missing:
        raise UserError(f"{path} lacks the columns {sorted(missing)}")
    for row in rows:
        for column in TEXT_COLUMNS:
            if isinstance(row.get(column), str):  # None: a short row, the caller's to refuse
                row[column] = csv_value(row[column])
    return rows
