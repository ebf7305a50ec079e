"""label_issues.csv: the per-sample table, its ranking, and `asymco issues`."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from asymco.cli import main
from asymco.errors import UserError
from asymco.label_issues import (
    COLUMNS,
    label_quality,
    rank_label_issues,
    read_label_issues,
    write_label_issues,
)

PROBS = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
GIVEN = np.array([0, 0, 1, 1])


def test_score_combines_selection_share_and_given_label_probability():
    q = label_quality(GIVEN, PROBS, selected_epochs=np.array([4, 0, 2, 4]), epochs_after_warmup=4,
                      last_selected=np.array([True, False, False, True]))
    np.testing.assert_allclose(q["selected_share"], [1.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(q["given_label_prob"], [0.9, 0.2, 0.4, 0.5])
    np.testing.assert_allclose(q["label_score"], [0.95, 0.1, 0.45, 0.75])
    assert q["is_label_issue"].tolist() == [False, True, True, False]  # last non-selection
    assert q["predicted_label"].tolist() == [0, 1, 0, 0]
    assert ((q["label_score"] >= 0) & (q["label_score"] <= 1)).all()


def test_without_selection_history_the_prediction_decides():
    q = label_quality(GIVEN, PROBS)
    np.testing.assert_allclose(q["label_score"], [0.9, 0.2, 0.4, 0.5])
    assert q["is_label_issue"].tolist() == [False, True, True, True]
    assert np.isnan(q["selected_share"]).all()


def test_ranking_is_lowest_score_first_ties_by_index():
    assert rank_label_issues(np.array([0.5, 0.1, 0.5, 0.0])).tolist() == [3, 1, 0, 2]


def test_bad_shapes_are_refused():
    with pytest.raises(UserError, match="pred_probs"):
        label_quality(GIVEN, PROBS[:3])


def test_csv_rows_sorted_with_class_names_and_cli_prints_them(tmp_path, capsys):
    q = label_quality(GIVEN, PROBS, selected_epochs=np.array([4, 0, 2, 4]), epochs_after_warmup=4,
                      last_selected=np.array([True, False, False, True]))
    write_label_issues(tmp_path / "label_issues.csv", q, given_labels=GIVEN,
                       classes=["cat", "dog"], selected_epochs=np.array([4, 0, 2, 4]),
                       paths=np.array(["a.jpg", "b.jpg", "c.jpg", "d.jpg"]))
    with (tmp_path / "label_issues.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert [r["index"] for r in rows] == ["1", "2", "3", "0"]
    assert rows[0]["given_class"] == "cat" and rows[0]["predicted_class"] == "dog"
    assert rows[0]["path"] == "b.jpg" and rows[0]["is_label_issue"] == "True"
    assert read_label_issues(tmp_path / "label_issues.csv") == rows
    assert main(["issues", str(tmp_path), "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2 of 4 training labels flagged")
    assert "b.jpg" in out[2] and "c.jpg" in out[3] and len(out) == 4


def test_issues_command_on_a_missing_run_is_one_sentence(tmp_path, capsys):
    assert main(["issues", str(tmp_path)]) == 2
    assert "label_issues.csv does not exist" in capsys.readouterr().err
