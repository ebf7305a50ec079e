"""ACT's selection collapse: noticing it, avoiding it, and ranking labels through it (issue 15).

ACT selects the samples whose given label both nets predict (act-spec A.3.3). The paper starts
selecting after 50 warmup epochs on 50,000 images, when both nets fit most clean labels. A short
run on a few thousand images can end warmup with nets that fit a few percent of the labels; the
"both nets agree with the label" rule then keeps about 1 % of each batch, the RTM learns from a
handful of images an epoch and ends far below plain training. This module holds the pieces:

- `detect_collapse`: a pure function over a run's metrics rows that says, in plain words with
  what to do, when the selection was degenerate or the reported RTM trailed the NTM;
- the two avoidance rules the collapse guard turns on: `hold_warmup` (warmup goes on while the
  nets agree with too few labels) and `floor_selection` (each batch trains on at least a floor
  share, topped up with the samples whose given label the nets find most probable);
- `fallback_scores`: a label score that still ranks when the selection carried no information.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

COLLAPSE_SHARE = 0.05
"""A selection below this share of the training set is degenerate; the guard's floor defaults
to it."""
HOLD_AGREEMENT = 0.2
"""The guard's default `warmup_until_agreement`: warmup goes on until both nets fit the same
given label on this share of the samples. Chosen by measurement (docs/deviations.md): selection
that started at 5.5 % or 10.8 % agreement took the RTM from 9-12 % test accuracy to under 5 %
within one epoch."""
AGREEMENT_RATIO = 0.25
"""A selection below this share of what the weaker net fits (its training accuracy on the
given labels) is degenerate too: the nets fit labels but disagree on which."""
BEHIND_EPOCHS = 3
"""Consecutive robust epochs with the RTM clearly below the NTM before it is reported."""
BEHIND_POINTS = 1.0
BEHIND_RELATIVE = 0.1
"""'Clearly below': by more than max(BEHIND_POINTS, BEHIND_RELATIVE x the NTM's accuracy)."""


@dataclass(frozen=True)
class RunWarning:
    """Something a run's figures show that its user should know, with what to do about it."""

    kind: str
    """`degenerate_selection`, `rtm_behind_ntm` or `warmup_held`."""
    epoch: int
    """The 0-based epoch whose row first showed it."""
    message: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "epoch": self.epoch, "message": self.message}


def faithful_share(row: dict) -> float | None:
    """The share the selection rule itself chose in a robust row (without the guard's top-up)."""
    share = row.get("sel_fraction")
    if share is None:
        return None
    return max(0.0, share - (row.get("floor_share") or 0.0))


def is_degenerate(row: dict, *, floor: float = COLLAPSE_SHARE) -> bool:
    """Whether a robust row's selection is degenerate: below `floor`, or far below the share of
    labels the weaker net fits (`AGREEMENT_RATIO`)."""
    share = faithful_share(row)
    if row.get("phase") != "robust" or share is None:
        return False
    accs = [row.get(k) for k in ("train_acc_rtm", "train_acc_ntm")]
    support = min(accs) / 100 if None not in accs else 0.0
    return share < floor or share < AGREEMENT_RATIO * support


def detect_collapse(
    history: Sequence[dict],
    *,
    guard: bool = False,
    floor: float = COLLAPSE_SHARE,
    hold: float = HOLD_AGREEMENT,
) -> list[RunWarning]:
    """The warnings a run's metrics rows call for, each once, at the epoch that first shows it.

    `guard` says whether the collapse guard was on (the advice differs); `hold` is the run's
    `warmup_until_agreement`, quoted when warmup was held. Rows without ACT's columns
    (`test_acc_ntm`, the train accuracies) give no warning of that kind.
    """
    found: list[RunWarning] = []
    degenerate = next((row for row in history if is_degenerate(row, floor=floor)), None)
    if degenerate is not None:
        found.append(_degenerate_warning(degenerate, guard=guard))
    behind = _first_behind(history)
    if behind is not None:
        found.append(_behind_warning(behind, guard=guard))
    held = _held_warmup(history, hold)
    if held is not None:
        found.append(held)
    return sorted(found, key=lambda w: w.epoch)


def _degenerate_warning(row: dict, *, guard: bool) -> RunWarning:
    share = faithful_share(row) or 0.0
    fits = ", ".join(
        f"the {net.upper()} {row[f'train_acc_{net}']:.1f}%"
        for net in ("rtm", "ntm")
        if row.get(f"train_acc_{net}") is not None
    )
    advice = (
        "the collapse guard topped each batch up to its floor; for ACT's selection to help, "
        "train more epochs or on more images"
        if guard
        else "turn on method.collapse_guard=true (warmup continues until the nets agree with "
        "enough labels, and each batch keeps a floor), or raise train.warmup_epochs"
    )
    return RunWarning(
        "degenerate_selection",
        row["epoch"],
        f"ACT's selection collapsed at epoch {row['epoch'] + 1}: it trusted only "
        f"{100 * share:.1f}% of the training labels (given labels fitted: {fits or 'unknown'}), "
        "so the robust model learns from almost nothing and will likely end below plain "
        f"training. What to do: {advice}. label_issues.csv then ranks by the nets' "
        "probabilities of the given labels instead of the selection.",
    )


def _first_behind(history: Sequence[dict]) -> dict | None:
    run = 0
    for row in history:
        rtm, ntm = row.get("test_acc_rtm", row.get("test_acc")), row.get("test_acc_ntm")
        if row.get("phase") != "robust" or rtm is None or ntm is None:
            run = 0
            continue
        margin = max(BEHIND_POINTS, BEHIND_RELATIVE * ntm)
        run = run + 1 if rtm < ntm - margin else 0
        if run == BEHIND_EPOCHS:
            return row
    return None


def _behind_warning(row: dict, *, guard: bool) -> RunWarning:
    what = (
        "more epochs or more images"
        if guard
        else "method.collapse_guard=true, a longer train.warmup_epochs, or more epochs"
    )
    return RunWarning(
        "rtm_behind_ntm",
        row["epoch"],
        f"the robust model (test {row.get('test_acc_rtm', row['test_acc']):.2f}% at epoch "
        f"{row['epoch'] + 1}) has been "
        f"clearly below the plainly trained reference model ({row['test_acc_ntm']:.2f}%) for "
        f"{BEHIND_EPOCHS} epochs: ACT is doing worse than standard training here. Try {what}.",
    )


def _held_warmup(history: Sequence[dict], hold: float) -> RunWarning | None:
    held = [row for row in history if row.get("warmup_held")]
    if not held:
        return None
    first, last = held[0], history[-1]
    if last.get("phase") == "warmup":
        tail = (
            "so far it never left warmup: it trains like standard training until both nets "
            "fit enough labels (more epochs or more images let ACT's selection start)"
        )
    else:
        tail = f"selection started at epoch {held[-1]['epoch'] + 2}"
    return RunWarning(
        "warmup_held",
        first["epoch"],
        f"the collapse guard continued warmup from epoch {first['epoch'] + 1}: both nets "
        f"fitted the same given label on fewer than {100 * hold:g}% of the samples, "
        f"too few to select from; {tail}.",
    )


# ------------------------------------------------------------------ the guard's two rules


def hold_warmup(*, previous_warmup: bool, agreement_share: float, threshold: float) -> bool:
    """Whether an epoch after `train.warmup_epochs` is warmup too: the epoch before it was, and
    both nets fitted the given label of fewer than `threshold` of its samples (0 = never)."""
    return threshold > 0 and previous_warmup and agreement_share < threshold


def floor_selection(selected: Tensor, score: Tensor, floor: float) -> Tensor:
    """`selected` (B,) bool topped up to at least ceil(floor x B) samples with the unselected
    ones of highest `score` (B,); unchanged where it already holds that many. Fixed shapes and
    no branch on tensor values (packed runs vmap it)."""
    k = math.ceil(floor * selected.shape[-1])
    if k == 0:
        return selected
    key = torch.where(selected, torch.full_like(score, math.inf), score)
    rank = key.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    return selected | (rank < k)


# ------------------------------------------------------------------ label scores


def fallback_scores(mean_given_prob: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(N,) clean scores in (0, 1) from each sample's mean probability of its given label over
    training (both nets, every epoch), relative to its class: s / (s + mean s of the class).
    A label the nets find as probable as its class's average scores 0.5; the per-class scale
    keeps hard classes from filling the top of the list."""
    s = mean_given_prob.float().clamp_min(1e-12)
    total = torch.zeros(num_classes, dtype=s.dtype, device=s.device).index_add_(0, labels, s)
    count = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(s.dtype)
    return s / (s + (total / count)[labels])
