"""ACT's side of the selection-collapse guard (issue 15; rules in `collapse.py`).

A mixin of `ACT`: its per-sample and per-epoch state, the hold-warmup decision at each epoch's
start, the floor on each batch's selection, and what the run reports about it (warnings, the
fallback label score and how far to trust label_issues.csv).

State, all in buffers (checkpointed, resumed exactly):
- `given_prob_sum` (N): the sum over epochs of the mean of both nets' probabilities of the given
  label (weak view, train mode), for the fallback label score;
- `epoch_agreed`: how many of this epoch's samples both nets fit (the hold-warmup rule);
- `rule_selected`: [samples the selection rule itself chose, samples seen] over robust steps;
- `warmup_held` (this epoch is a held warmup epoch) and `held_epochs` (how many were).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asymco.methods.base import MeanPrediction
from asymco.methods.collapse import (
    COLLAPSE_SHARE,
    HOLD_AGREEMENT,
    detect_collapse,
    fallback_scores,
    floor_selection,
    hold_warmup,
)

if TYPE_CHECKING:
    from asymco.config import RunConfig
    from asymco.methods.act import ACTSettings
    from asymco.methods.base import Processes

OWN_DATA = ("folder", "csv", "npz", "hf", "parquet")
"""`data.dataset` values of a user's own data: the guard's auto setting turns it on for them."""


def guard_on(settings: ACTSettings, cfg: RunConfig) -> bool:
    """The auto collapse guard: on for a user's own data and for a run held to a time budget
    (both pick short schedules on data of any size), off for the paper's presets."""
    if settings.collapse_guard is not None:
        return settings.collapse_guard
    return bool(cfg.train.budget) or cfg.data.dataset in OWN_DATA


def fallback_net(settings: ACTSettings, *, starved: bool) -> str:
    """The net reported once the selection collapsed: as set, else (with the guard, `auto`)
    both nets' mean while they only trained on every label (held warmup), the NTM once the RTM
    learned from a degenerate selection (`starved`: a starved RTM drags a mean down); without
    the guard, the RTM."""
    choice = settings.report_on_collapse
    if choice is None:
        choice = "auto" if settings.collapse_guard else "rtm"
    if choice == "auto":
        return "ntm" if starved else "mean"
    return choice


def guard_shares(settings: ACTSettings) -> tuple[float, float]:
    """(selection floor, hold-warmup threshold): as set, else `COLLAPSE_SHARE` and
    `HOLD_AGREEMENT` with the guard on, and 0 (the faithful rule) with it off."""
    on = bool(settings.collapse_guard)
    floor, hold = settings.selection_floor, settings.warmup_until_agreement
    return (
        (COLLAPSE_SHARE if on else 0.0) if floor is None else floor,
        (HOLD_AGREEMENT if on else 0.0) if hold is None else hold,
    )


class CollapseGuard:
    """Mixed into `ACT` (an `nn.Module` with `settings`, `epoch_hits`, `select_count`)."""

    settings: ACTSettings
    num_samples: int
    num_classes: int
    run_warmup_epochs: int
    epoch: int
    warmup: bool
    epoch_hits: Tensor
    select_count: Tensor
    dist: Processes

    def setup_guard(self, observed_labels: Tensor) -> None:
        n = self.num_samples
        self.register_buffer("given_label", observed_labels.clone())
        self.register_buffer("given_prob_sum", torch.zeros(n))
        self.register_buffer("epoch_agreed", torch.zeros(()))
        self.register_buffer("rule_selected", torch.zeros(2))
        self.register_buffer("warmup_held", torch.zeros((), dtype=torch.bool))
        self.register_buffer("held_epochs", torch.zeros((), dtype=torch.int64))

    def hold_this_epoch(self, epoch: int, *, warmup: bool) -> None:
        """At an epoch's start, before the epoch counters reset: decide whether an epoch the
        engine calls robust stays warmup (the last one was warmup and too few samples had both
        nets fitting their label)."""
        seen = float(self.epoch_hits[2])
        previous_warmup = epoch - 1 < self.run_warmup_epochs or bool(self.warmup_held)
        share = float(self.epoch_agreed) / seen if seen else 1.0
        held = not warmup and hold_warmup(
            previous_warmup=previous_warmup,
            agreement_share=share,
            threshold=guard_shares(self.settings)[1],
        )
        self.warmup_held.fill_(held)
        self.held_epochs += int(held)
        self.epoch_agreed.zero_()

    def record_given_probs(
        self, index: Tensor, label: Tensor, z_rtm: Tensor, z_ntm: Tensor
    ) -> None:
        """Add this visit's mean probability of the given label (both nets) to the sum."""
        with torch.no_grad():
            p = F.softmax(z_rtm.float(), 1) + F.softmax(z_ntm.float(), 1)
            self.given_prob_sum[index] += 0.5 * p.gather(1, label[:, None]).squeeze(1)

    def floor(
        self, rule: Tensor, label: Tensor, z: tuple[Tensor, Tensor], samples: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The rule's selection topped up to the floor with the samples whose given label both
        nets (`z`: their logits) find most probable, unchanged without a floor (the faithful
        rule); with how many the rule and the result chose in the global batch of `samples`."""
        floor = guard_shares(self.settings)[0]
        chosen = rule
        if floor > 0:
            with torch.no_grad():
                logp = F.log_softmax(z[0].float(), 1) + F.log_softmax(z[1].float(), 1)
                chosen = floor_selection(rule, logp.gather(1, label[:, None]).squeeze(1), floor)
        n_rule, n_chosen = self.dist.global_sum(torch.stack([rule.sum(), chosen.sum()]))
        self.rule_selected += torch.stack([n_rule.float(), samples])
        return chosen, n_rule, n_chosen

    @property
    def reported_net(self) -> str:  # type: ignore[override]
        """The RTM, or both nets' mean once the selection collapsed (`report_on_collapse`)."""
        if not self.collapsed():
            return "rtm"
        return fallback_net(self.settings, starved=self.starved())

    def eval_nets(self) -> dict[str, nn.Module]:
        every = dict(self.nets)  # type: ignore[attr-defined]
        reported = self.reported_net
        if reported == "mean":  # not a submodule: no state_dict keys of its own
            return {"mean": MeanPrediction(list(every.values())), **every}
        return {reported: every[reported], **every}

    def starved(self) -> bool:
        """Whether the selection rule chose, over the robust epochs, under `COLLAPSE_SHARE` of
        the samples, or under the agreement the guard waited for (`warmup_until_agreement`):
        measured, an RTM trained on 6-8 % of the samples ended at half the NTM's accuracy
        although 5 % was passed (docs/deviations.md)."""
        chosen, seen = self.rule_selected.tolist()
        enough = max(COLLAPSE_SHARE, guard_shares(self.settings)[1])
        return seen > 0 and chosen / seen < enough

    def collapsed(self) -> bool:
        """Whether the selection carries too little to rank labels by: warmup is still held
        (selection never started), or the RTM was starved. A run whose held warmup ended and
        whose selection then went well is not collapsed: it reports the RTM as usual."""
        return bool(self.warmup_held) or self.starved()

    # ------------------------------------------------------------------ what it reports

    def warmup_epochs_run(self, scheduled: int) -> int:
        """The scheduled warmup epochs and the held ones (each counted everyone as selected)."""
        return scheduled + int(self.held_epochs)

    def clean_scores(self) -> Tensor | None:
        """The fallback score once the selection collapsed, else None (ACT's usual score)."""
        if not self.collapsed():
            return None
        mean = self.given_prob_sum / (self.epoch + 1)  # every sample is visited once an epoch
        return fallback_scores(mean, self.given_label, self.num_classes)

    def label_trust(self) -> dict:
        if self.collapsed():
            return {
                "level": "low",
                "message": (
                    "ACT's selection never started (the nets stayed too weak to select from)"
                    if self.warmup_held
                    else "ACT's selection collapsed (it chose too few labels to learn from)"
                )
                + ", so label_issues.csv ranks labels by how probable both nets found each "
                "given label over training, relative to its class. Expect a rough ranking: "
                "use it to order a review, not to relabel automatically; more epochs or more "
                "images make it sharper.",
            }
        return {
            "level": "usual",
            "message": "label_score combines ACT's selection history with the robust "
            "model's probability of each given label.",
        }

    def run_warnings(self, history: list[dict]) -> list[dict]:
        floor, hold = guard_shares(self.settings)
        found = detect_collapse(history, guard=floor > 0 or hold > 0, hold=hold)
        return [w.as_dict() for w in found]

    def summary_figures(
        self, history: list[dict], *, preset: str, preset_number: float | None
    ) -> dict:
        figures = super().summary_figures(  # type: ignore[misc]
            history, preset=preset, preset_number=preset_number
        )
        floor, hold = guard_shares(self.settings)
        figures["collapse_guard"] = {
            "selection_floor": floor,
            "warmup_until_agreement": hold,
            "warmup_epochs_held": int(self.held_epochs),
            "reported_net": self.reported_net,
        }
        return figures
