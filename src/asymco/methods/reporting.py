"""What a method reports: its metrics.jsonl row each epoch, its console line, and its figures in
summary.json. `Method` inherits these; a method overrides the hooks (`epoch_figures`,
`net_words`, `selection_words`, `paper_number`) for its own columns and words.

The engine hands a method its epoch's results (`EpochResults`: summed step figures, each net's
LR and test accuracy, each judgement scored against the truth) and writes the row it gets back,
plus timings; it names no column itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from asymco.config import MethodSettings

ROW_COLUMNS = (
    "epoch",
    "phase",
    "lr",
    "lr_ntm",
    "train_loss",
    "test_acc",
    "test_acc_ntm",
    "sel_precision",
    "sel_recall",
    "sel_f1",
    "sel_fraction",
    "mining_fraction",
    "empty_selection_batches",
)
"""Columns every metrics row has, whatever the method, null where it has no such figure: the
run-directory contract readers (the report, scripts over older runs) rely on. The ACT columns
(`*_ntm`, `mining_fraction`) are in it because ACT's runs defined the format first."""
NO_SCORES: Mapping[str, float | None] = dict.fromkeys(("precision", "recall", "f1", "fraction"))


@dataclass(frozen=True)
class EpochResults:
    """One finished epoch, as the engine measured it."""

    epoch: int
    sums: dict[str, float]
    """Each step figure summed over the epoch's batches (over every process)."""
    batches: int
    lrs: dict[str, float]
    """Each optimizer group's (net's) learning rate in this epoch."""
    test_acc: dict[str, float]
    """Each evaluated net's test accuracy (%)."""
    scores: dict[str, Mapping[str, float | None]]
    """Each of `Method.judgements()` scored against the clean mask: precision, recall, f1 and
    fraction; only the fraction when the truth is unknown (real noise)."""
    truth_known: bool
    """Whether the run knows which labels are wrong (synthetic noise, CIFAR-N)."""


class Reporting:
    """The reporting half of `Method` (mixed into it; see `methods/base.py`)."""

    reported_net: ClassVar[str]
    paper_numbers: ClassVar[Mapping[str, float]]
    settings: MethodSettings
    warmup: bool

    @property
    def phase(self) -> str:
        """The phase word of rows and console lines: `warmup` in the engine's warmup epochs,
        else `robust` (ACT's name for the epochs after warmup, kept for every method)."""
        return "warmup" if self.warmup else "robust"

    def epoch_row(self, results: EpochResults) -> dict:
        """One metrics.jsonl row: `ROW_COLUMNS` first, then this method's own figures
        (`epoch_figures`), then the epoch means of the step figures it did not report itself."""
        r = results
        means = {key: round(value / r.batches, 6) for key, value in r.sums.items()}
        sel = r.scores.get("selected", NO_SCORES)
        row = dict.fromkeys(ROW_COLUMNS)
        row.update(
            epoch=r.epoch,
            phase=self.phase,
            # A reported ensemble or average has no LR of its own: the first net's.
            lr=r.lrs.get(self.reported_net, next(iter(r.lrs.values()))),
            train_loss=means.pop("loss"),
            test_acc=r.test_acc[self.reported_net],
            sel_precision=sel["precision"],
            sel_recall=sel["recall"],
            sel_f1=sel["f1"],
            sel_fraction=sel["fraction"],
        )
        if "empty_selection" in r.sums:
            row["empty_selection_batches"] = round(r.sums["empty_selection"])
            del means["empty_selection"]
        row.update(self.epoch_figures(r, means))
        row.update(means)
        return row

    def epoch_figures(self, results: EpochResults, means: dict[str, float]) -> dict:
        """This method's own columns of the row; pop from `means` the step figures reported
        here under another name. By default: the other evaluated nets' test accuracies."""
        return {
            f"test_acc_{name}": acc
            for name, acc in results.test_acc.items()
            if name != self.reported_net
        }

    def describe(self, row: dict, epochs: int) -> str:
        """The console line of an epoch's row."""
        parts = [
            f"epoch {row['epoch'] + 1}/{epochs} {row['phase']}",
            f"lr {row['lr']:.3g}",
            f"loss {row['train_loss']:.3f}",
            f"test {row['test_acc']:.2f}%",
            *self.net_words(row),
            *self.selection_words(row),
            f"{row['epoch_seconds']:.1f}s",
        ]
        return " | ".join(parts)

    def net_words(self, row: dict) -> list[str]:
        """Console words on the nets besides the reported one."""
        return []

    def selection_words(self, row: dict) -> list[str]:
        """Console words on the selection: precision/recall and share, or only the share when
        the truth is unknown."""
        if row["sel_precision"] is not None:
            return [
                f"sel P/R {row['sel_precision']:.3f}/{row['sel_recall']:.3f} "
                f"({100 * row['sel_fraction']:.1f}%)"
            ]
        if row["sel_fraction"] is not None:
            return [f"selected {100 * row['sel_fraction']:.1f}%"]
        return []

    def summary_figures(
        self, history: list[dict], *, preset: str, preset_number: float | None
    ) -> dict:
        """This method's figures in summary.json: the final row's contract columns and the
        paper's number for this preset."""
        final = history[-1]
        return {
            "test_acc_ntm_final": final.get("test_acc_ntm"),
            "paper_test_acc": self.paper_number(preset, preset_number),
            "sel_precision_final": final.get("sel_precision"),
            "sel_recall_final": final.get("sel_recall"),
        }

    def run_warnings(self, history: list[dict]) -> list[dict]:
        """What the run's rows show that its user should know (`kind`, the 0-based `epoch`
        that first showed it, a plain-words `message` saying what to do), each once; the
        console prints each at its epoch and summary.json keeps them all (`warnings`)."""
        return []

    def new_warnings(self, history: list[dict]) -> list[str]:
        """The messages of `run_warnings` first shown by the last row of `history`."""
        last = history[-1]["epoch"]
        return [w["message"] for w in self.run_warnings(history) if w["epoch"] == last]

    def paper_number(self, preset: str, preset_number: float | None) -> float | None:
        """The paper's test accuracy for this method on `preset` (None where it has none).
        `preset_number` is the preset's own number, which is ACT's."""
        return self.paper_numbers.get(preset)
