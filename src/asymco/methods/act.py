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

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asymco.config import MethodConfig
from asymco.data.loader import Batch
from asymco.methods.base import Method
from asymco.methods.selection import (
    confidence_penalty,
    historical_weights,
    memorization_gap_of_counts,
    mining_open,
    pseudo_labels,
    select,
)


class ACT(Method):
    reported_net = "rtm"

    cfg: MethodConfig

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

    def param_groups(self) -> list[dict]:
        return [
            {"params": list(self.nets["rtm"].parameters()), "net": "rtm", "plan": "main"},
            {"params": list(self.nets["ntm"].parameters()), "net": "ntm", "plan": "ntm"},
        ]

    def eval_nets(self) -> dict[str, nn.Module]:
        return {"rtm": self.nets["rtm"], "ntm": self.nets["ntm"]}

    def on_epoch_start(self, epoch: int, *, warmup: bool) -> None:
        super().on_epoch_start(epoch, warmup=warmup)
        self.last_epoch_hits.copy_(self.epoch_hits)
        self.epoch_hits.zero_()
        self.is_selected.zero_()
        self.is_mined.zero_()

    def needs_strong_view(self) -> bool:
        return not self.warmup and self.cfg.use_cr

    def _mining_gate(self, gap: Tensor, acc_rtm: Tensor) -> Tensor:
        tau, mode = self.cfg.tau, self.cfg.mining_gate
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
        strong = batch.strong if self.needs_strong_view() else None
        if strong is None:
            z_rtm, z_strong = self.fwd["rtm"](batch.weak), None  # (B, K), train mode
        else:  # the CR view's forward, in the same call (one DDP forward per step)
            z_rtm, z_strong = self.fwd["rtm"](batch.weak, strong)
        z_ntm = self.fwd["ntm"](batch.weak)  # the same weak tensor for both nets
        rtm_hits = z_rtm.argmax(1) == label
        ntm_hits = z_ntm.argmax(1) == label
        # Hits and samples of the global batch: with several processes the memorization metric
        # and the gate it drives must be the same on every rank.
        counts = self.dist.global_sum(
            torch.stack(
                [rtm_hits.sum(), ntm_hits.sum(), torch.tensor(len(label), device=label.device)]
            ).float()
        )
        self.epoch_hits += counts
        # Losses are means over the global batch: DDP averages gradients over the W ranks, so
        # each rank's batch mean is weighted by its share (exactly 1.0 when running alone).
        share = len(label) * self.dist.world / counts[2]
        loss_ntm = self.per_sample_ce(z_ntm, label).mean() * share
        if self.warmup:
            return self._warmup_step(index, label, z_rtm, loss_ntm, share, counts)
        hits = (rtm_hits, ntm_hits)
        return self._robust_step(batch, z_rtm, z_strong, loss_ntm, share, counts, hits)

    def _warmup_step(
        self,
        index: Tensor,
        label: Tensor,
        z_rtm: Tensor,
        loss_ntm: Tensor,
        share: Tensor,
        counts: Tensor,
    ) -> dict[str, Tensor]:
        penalty = confidence_penalty(z_rtm, clamp_logits=self.cfg.conf_penalty_clamp_logits)
        loss_rtm = self.per_sample_ce(z_rtm, label).mean() + self.cfg.conf_penalty_weight * penalty
        loss_rtm = loss_rtm * share
        self.select_count[index] += 1  # warmup counts as "selected" for every sample
        self.is_selected[index] = True
        return {
            "loss": loss_rtm + loss_ntm,
            "loss_rtm": loss_rtm.detach(),
            "loss_ntm": loss_ntm.detach(),
            "train_acc_rtm": counts[0] / counts[2] * 100,
            "train_acc_ntm": counts[1] / counts[2] * 100,
        }

    def _robust_step(
        self,
        batch: Batch,
        z_rtm: Tensor,
        z_strong: Tensor | None,
        loss_ntm: Tensor,
        share: Tensor,
        counts: Tensor,
        hits: tuple[Tensor, Tensor],
    ) -> dict[str, Tensor]:
        cfg, index, label = self.cfg, batch.index, batch.label
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
        # The memory bank counts the current selection before the weights are read (A.3.4).
        self.select_count[index] += chosen.int()  # indices are unique within a batch
        self.is_selected[index] = chosen
        self.is_mined[index] = mined
        weight = (
            historical_weights(self.select_count[index], self.epoch)
            if cfg.use_dsrw
            else torch.ones_like(label, dtype=torch.float)
        )
        n_chosen = self.dist.global_sum(chosen.sum())
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
        }
