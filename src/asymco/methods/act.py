"""ACT: Asymmetric Co-Training (Sheng et al., "Enhancing Robustness in Learning with Noisy
Labels: An Asymmetric Co-Training Approach", ACM MM 2024). Spec: act-spec.md section A.

Two nets of the same architecture, trained asymmetrically:
- the **RTM** (robust training model, reported) learns from a selected, re-weighted subset plus a
  consistency term on a strong view;
- the **NTM** (normal training model) learns from every label with plain cross-entropy and only
  serves as the reference that selection compares the RTM against.

Warmup epochs train both nets on everything (the RTM with a confidence penalty). Robust epochs
select by agreement (ASS), mine samples only the NTM fits while the memorization gate is open
(ASM), weight each selected sample by the share of epochs it has been selected in (DSRW), and
add a consistency loss on the strong view towards EMA pseudo-labels (CR).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asymco.config import OptimConfig, RunConfig
from asymco.errors import UserError
from asymco.methods.act_guard import CollapseGuard, guard_on, guard_shares
from asymco.methods.base import Batch, EpochResults, LRPlan, Method, MethodSettings
from asymco.methods.selection import (
    confidence_penalty,
    historical_weights,
    memorization_gap_of_counts,
    mining_open,
    pseudo_labels,
    select,
)


@dataclass(frozen=True, kw_only=True)
class ACTSettings(MethodSettings):
    name: str = "act"
    tau: float = 0.025
    """Memorization threshold: mining is on while (Acc_NTM - Acc_RTM) / Acc_RTM < tau."""
    mining_gate: Literal["per_batch", "per_epoch", "latched"] = "per_batch"
    """`per_batch` (official: re-decided on every batch), `per_epoch` (decided once per epoch
    from the previous epoch's accuracies), `latched` (once closed, closed for good)."""
    selection_variant: Literal["paper_main", "web"] = "paper_main"
    """`paper_main`: Fig. 2 / main.py truth table; `web`: main_web.py, which also keeps samples
    only the RTM fits."""
    ema_momentum: float = 0.8
    """q <- ema_momentum * q + (1 - ema_momentum) * softmax(z_RTM)."""
    cr_weight: float = 0.2
    """L_RTM = (1 - cr_weight) * L_sel + cr_weight * L_CR."""
    conf_penalty_weight: float = 1.0
    """Weight of the negative-entropy penalty on the RTM during warmup."""
    conf_penalty_clamp_logits: bool = True
    """Official behaviour: clamp the logits (not the probabilities) at 1e-12 before the softmax."""
    use_ass: bool = True
    """Table 4 switch: agreement-based selection. Off = the RTM trains on every sample."""
    use_asm: bool = True
    """Table 4 switch: discrepancy-based mining while the tau gate is open."""
    use_dsrw: bool = True
    """Table 4 switch: historical re-weighting w = c / (epoch + 1); off = weight 1."""
    use_cr: bool = True
    """Table 4 switch: the consistency term on the strong view (and the 1 - cr_weight factor)."""
    ntm_lr_mode: Literal["same_as_rtm", "separate_cosine", "separate_step"] = "same_as_rtm"
    """The NTM's LR plan (act-spec A.4). `same_as_rtm`: official CIFAR code (lr1 is
    overwritten), the run's `optim` plan; `separate_cosine`: that plan rebuilt with `ntm_lr`
    (paper: NTM lr 0.08); `separate_step`: `ntm_lr` x0.1 at 60/120/150, no warmup lr
    (main_web.py). Also accepted as `optim.ntm_lr_mode`, its earlier name."""
    ntm_lr: float = 0.08
    """NTM learning rate in the separate modes (paper: 0.08); also `optim.ntm_lr`."""
    collapse_guard: bool | None = None
    """Avoid the selection collapse of nets still too weak to select from (docs/deviations.md,
    "The collapse guard"): `selection_floor` defaults to 0.05 and `warmup_until_agreement` to 0.2.
    None (auto): on for your own data and for runs with `train.budget`, off (faithful) for the
    paper's presets."""
    selection_floor: float | None = None
    """Each robust batch trains the RTM on at least this share of its samples, topped up with
    the samples whose given label both nets find most probable. None: 0.05 with the guard, else
    0 (the faithful rule)."""
    warmup_until_agreement: float | None = None
    """Warmup continues past `train.warmup_epochs` while both nets fitted the given label of
    fewer than this share of the last epoch's samples. None: 0.2 with the guard, else 0."""
    report_on_collapse: Literal["rtm", "ntm", "mean", "auto"] | None = None
    """The reported net once the selection collapsed (warmup held, or the rule chose under 5 %):
    `rtm` as always, `ntm`, `mean` (both nets' averaged prediction), or `auto`: the mean while
    the nets only trained on every label (held warmup), the NTM once the RTM learned from a
    degenerate selection. None: `auto` with the guard, else `rtm` (faithful)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        floor, hold = self.selection_floor or 0.0, self.warmup_until_agreement or 0.0
        for ok, key, message in (
            (self.tau > 0, "tau", "must be positive"),
            (0.0 <= self.ema_momentum < 1.0, "ema_momentum", "must be in [0, 1)"),
            (0.0 <= self.cr_weight <= 1.0, "cr_weight", "must be in [0, 1]"),
            (self.conf_penalty_weight >= 0, "conf_penalty_weight", "must be >= 0"),
            (self.ntm_lr > 0, "ntm_lr", "must be positive"),
            (0 <= floor < 1, "selection_floor", "must be in [0, 1)"),
            (0 <= hold < 1, "warmup_until_agreement", "must be in [0, 1)"),
        ):
            if not ok:
                raise UserError(f"method.{key} {message}")

    def for_run(self, cfg: RunConfig) -> ACTSettings:
        """The auto collapse guard decided for this run (`act_guard.guard_on`)."""
        return dataclasses.replace(self, collapse_guard=guard_on(self, cfg))


class ACT(CollapseGuard, Method):
    Settings = ACTSettings
    packable = True
    progress_figures = ("loss", "train_acc_rtm", "selected_share")

    settings: ACTSettings

    def setup(self, make_model: Callable[[], nn.Module], observed_labels: Tensor) -> None:
        self.add_net("rtm", make_model())  # two independent initialisations
        self.add_net("ntm", make_model())
        n, num_classes = self.num_samples, self.num_classes
        # Per-sample state (act-spec A.0). select_count is the DSRW memory bank c_i.
        self.register_buffer("select_count", torch.zeros(n, dtype=torch.int32))
        self.register_buffer("ema_probs", F.one_hot(observed_labels, num_classes).float())  # q_i
        self.register_buffer("is_selected", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("is_mined", torch.zeros(n, dtype=torch.bool))
        # Memorization-gate state: the latch, and this/last epoch's hit counts (per_epoch gate).
        self.register_buffer("gate_closed", torch.zeros((), dtype=torch.bool))
        self.register_buffer("epoch_hits", torch.zeros(3))  # rtm hits, ntm hits, samples
        self.register_buffer("last_epoch_hits", torch.zeros(3))
        self.setup_guard(observed_labels)

    @classmethod
    def unpackable_reason(cls, settings: MethodSettings) -> str | None:
        if isinstance(settings, ACTSettings) and guard_shares(settings)[1] > 0:
            return "method.warmup_until_agreement decides each run's warmup from its own nets"
        return None

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        rtm, ntm = super().param_groups(optim)  # both on the run's plan: official main.py
        s = self.settings
        if s.ntm_lr_mode == "separate_cosine":
            ntm["lr_plan"] = LRPlan(s.ntm_lr, s.ntm_lr, optim.lr_decay)
        elif s.ntm_lr_mode == "separate_step":  # main_web.py: lr1, step plan, no warmup lr
            ntm["lr_plan"] = LRPlan(s.ntm_lr, s.ntm_lr, "baseline")
        return [rtm, ntm]

    def on_epoch_start(self, epoch: int, *, warmup: bool) -> None:
        self.hold_this_epoch(epoch, warmup=warmup)  # reads the finished epoch's counts
        super().on_epoch_start(epoch, warmup=warmup)
        self.last_epoch_hits.copy_(self.epoch_hits)
        self.epoch_hits.zero_()
        self.is_selected.zero_()
        self.is_mined.zero_()

    def set_phase(self, epoch: int, *, warmup: bool) -> None:
        super().set_phase(epoch, warmup=warmup or bool(self.warmup_held))

    def train_views(self) -> tuple[str, ...]:
        return ("weak", "strong") if not self.warmup and self.settings.use_cr else ("weak",)

    def _mining_gate(self, gap: Tensor, acc_rtm: Tensor) -> Tensor:
        tau, mode = self.settings.tau, self.settings.mining_gate
        if mode == "per_epoch":  # decided from the previous epoch's whole-epoch accuracies
            rtm, ntm, _ = self.last_epoch_hits
            return mining_open((ntm - rtm) / rtm.clamp_min(1e-12), rtm, tau)
        is_open = mining_open(gap, acc_rtm, tau)
        if mode == "latched":  # the paper's "stopping point": once closed, closed for good
            self.gate_closed |= ~is_open
            return ~self.gate_closed
        return is_open  # per_batch: the official code re-decides on every batch

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        index, label = batch.index, batch.label
        strong = batch.views[1] if len(self.train_views()) > 1 else None
        if strong is None:
            z_rtm, z_strong = self.fwd["rtm"](batch.weak), None  # (B, K), train mode
        else:  # the CR view's forward, in the same call (one DDP forward per step)
            z_rtm, z_strong = self.fwd["rtm"](batch.weak, strong)
        z_ntm = self.fwd["ntm"](batch.weak)  # the same weak tensor for both nets
        rtm_hits = z_rtm.argmax(1) == label
        ntm_hits = z_ntm.argmax(1) == label
        self.record_given_probs(batch.index, label, z_rtm, z_ntm)
        # Hits, samples and both-fit samples of the global batch: with several processes the
        # memorization metric and the gates it drives must be the same on every rank.
        n = torch.tensor(len(label), device=label.device)
        both = (rtm_hits & ntm_hits).sum()
        counts = self.dist.global_sum(
            torch.stack([rtm_hits.sum(), ntm_hits.sum(), n, both]).float()
        )
        self.epoch_hits += counts[:3]
        self.epoch_agreed += counts[3]
        # Losses are means over the global batch: DDP averages gradients over the W ranks, so
        # each rank's batch mean is weighted by its share (exactly 1.0 when running alone).
        share = len(label) * self.dist.world / counts[2]
        loss_ntm = self.per_sample_ce(z_ntm, label).mean() * share
        if self.warmup:
            return self._warmup_step(index, label, z_rtm, loss_ntm, share, counts)
        hits = (rtm_hits, ntm_hits)
        return self._robust_step(batch, (z_rtm, z_ntm), z_strong, loss_ntm, share, counts, hits)

    def _warmup_step(
        self,
        index: Tensor,
        label: Tensor,
        z_rtm: Tensor,
        loss_ntm: Tensor,
        share: Tensor,
        counts: Tensor,
    ) -> dict[str, Tensor]:
        s = self.settings
        penalty = confidence_penalty(z_rtm, clamp_logits=s.conf_penalty_clamp_logits)
        loss_rtm = self.per_sample_ce(z_rtm, label).mean() + s.conf_penalty_weight * penalty
        loss_rtm = loss_rtm * share
        self.select_count[index] += 1  # warmup counts as "selected" for every sample
        self.is_selected[index] = True
        return {
            "loss": loss_rtm + loss_ntm,
            "loss_rtm": loss_rtm.detach(),
            "loss_ntm": loss_ntm.detach(),
            "train_acc_rtm": counts[0] / counts[2] * 100,
            "train_acc_ntm": counts[1] / counts[2] * 100,
            "agreement_share": counts[3] / counts[2],
        }

    def _robust_step(
        self,
        batch: Batch,
        z: tuple[Tensor, Tensor],
        z_strong: Tensor | None,
        loss_ntm: Tensor,
        share: Tensor,
        counts: Tensor,
        hits: tuple[Tensor, Tensor],
    ) -> dict[str, Tensor]:
        cfg, index, label = self.settings, batch.index, batch.label
        z_rtm = z[0]  # weak-view logits of the RTM (z[1]: the NTM's)
        rtm_hits, ntm_hits = hits  # this rank's samples; `counts` sums them over all ranks
        gap, acc_rtm = memorization_gap_of_counts(counts[0], counts[1], counts[2])
        mining = self._mining_gate(gap, acc_rtm)
        chosen, mined = select(
            rtm_hits,
            ntm_hits,
            mining,
            variant=cfg.selection_variant,
            use_ass=cfg.use_ass,
            use_asm=cfg.use_asm,
        )
        chosen, n_rule, n_chosen = self.floor(chosen, label, z, counts[2])  # guard's top-up
        # The memory bank counts the current selection before the weights are read (A.3.4).
        self.select_count[index] += chosen.int()  # indices are unique within a batch
        self.is_selected[index] = chosen
        self.is_mined[index] = mined
        weight = (
            historical_weights(self.select_count[index], self.epoch)
            if cfg.use_dsrw
            else torch.ones_like(label, dtype=torch.float)
        )
        # Mean over the selected samples of the global batch; a rank (or a whole batch) with none
        # gives an exact zero that still touches every RTM parameter (the official code would
        # produce NaN here). The world factor undoes DDP's averaging over ranks.
        per_sample = weight * self.per_sample_ce(z_rtm, label) * chosen
        loss_sel = per_sample.sum() * self.dist.world / n_chosen.clamp_min(1)
        # EMA label distribution of every batch sample, selected or not (A.3.7).
        probs = torch.softmax(z_rtm.detach().float(), dim=1)
        ema = cfg.ema_momentum * self.ema_probs[index] + (1 - cfg.ema_momentum) * probs
        self.ema_probs[index] = ema
        loss_rtm = loss_sel
        if z_strong is not None:
            target = pseudo_labels(chosen, label, ema)
            loss_cr = self.per_sample_ce(z_strong, target).mean() * share
            loss_rtm = (1 - cfg.cr_weight) * loss_sel + cfg.cr_weight * loss_cr
        return {
            "loss": loss_rtm + loss_ntm,
            "loss_rtm": loss_rtm.detach(),
            "loss_ntm": loss_ntm.detach(),
            "train_acc_rtm": acc_rtm,
            "train_acc_ntm": counts[1] / counts[2] * 100,
            "memorization_gap": gap,
            "mining_on": mining.float(),
            "selected_share": n_chosen.float() / counts[2],
            "empty_selection": (n_chosen == 0).float(),
            "floor_share": (n_chosen - n_rule).float() / counts[2],
            "agreement_share": counts[3] / counts[2],
        }

    # ------------------------------------------------------------------ what ACT reports

    def judgements(self) -> dict[str, Tensor]:
        return {"selected": self.is_selected, "mined": self.is_mined}

    def epoch_figures(self, results: EpochResults, means: dict[str, float]) -> dict:
        figures = super().epoch_figures(results, means)  # test_acc_rtm once it is not reported
        figures["test_acc_ntm"] = results.test_acc["ntm"]  # also when the NTM is the one reported
        figures.update(lr_ntm=results.lrs["ntm"], mining_fraction=means.pop("mining_on", None))
        figures["warmup_held"] = bool(self.warmup_held)
        if results.truth_known and not self.warmup:  # how good the mined samples were
            mined = results.scores["mined"]
            figures.update(
                mined_count=int(self.is_mined.sum()),
                mined_precision=mined["precision"],
                mined_recall=mined["recall"],
            )
        return figures

    def net_words(self, row: dict) -> list[str]:
        rtm = [f"rtm {row['test_acc_rtm']:.2f}%"] if "test_acc_rtm" in row else []
        return [*rtm, f"ntm {row['test_acc_ntm']:.2f}%"]

    def selection_words(self, row: dict) -> list[str]:
        words = super().selection_words(row)
        if row["mining_fraction"] is not None:
            words.append(f"mining {100 * row['mining_fraction']:.0f}%")
        if row.get("warmup_held"):
            words.append(f"warmup held (nets agree on {100 * row['agreement_share']:.1f}%)")
        if row.get("floor_share"):
            words.append(f"floor +{100 * row['floor_share']:.1f}%")
        return words

    def paper_number(self, preset: str, preset_number: float | None) -> float | None:
        return preset_number
