"""Decoupling (Malach & Shalev-Shwartz, "Decoupling 'when to update' from 'how to update'",
NeurIPS 2017), a row of the ACT paper's Tables 1-3.

Rule (paper Algorithm 1, "update by disagreement"). Two nets h1, h2 of the same architecture,
initialised independently, see the same mini-batch. Only the samples their predictions disagree
on,
    D' = {i : argmax h1(x_i) != argmax h2(x_i)},
update the nets, each with its own cross-entropy averaged over D': the usual update decides *how*
to update, the disagreement decides *when*. Why: from a random start the nets disagree on nearly
everything and both learn; as they fit the clean majority they agree on it and stop updating on
it, so a wrong label that both nets overrule with the same (true) class is never fitted. The
paper's analysis (for perceptrons) bounds the number of such updates.

Choices, since the paper's code and protocol are not this one's:
- the loss of each net is its cross-entropy summed over D' of the *global* batch divided by the
  global |D'|, so several processes (torchrun) train exactly as one would;
- an empty D' gives an exact zero that still touches every parameter (never NaN);
- engine warmup epochs (`train.warmup_epochs`) update on every sample, the engine's convention
  for warmup (as for the Co-teaching family); the paper has none: `train.warmup_epochs=0`.

Decoupling makes no clean/noisy judgement: D' holds the samples in doubt, not the clean ones.
So `selected()` is None, the `sel_*` columns are null, and label_issues.csv ranks by the
reported net's (h1's) probability of the given label. `disagree_fraction` logs |D'| / |batch|.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from asymco.methods.base import Batch, Method, MethodSettings, zero_touch


@dataclass(frozen=True, kw_only=True)
class DecouplingSettings(MethodSettings):
    name: str = "decoupling"


def disagreement_losses(
    z1: Tensor, z2: Tensor, ce1: Tensor, ce2: Tensor, update: Tensor, count: Tensor, world: int
) -> tuple[Tensor, Tensor]:
    """Each net's mean cross-entropy over the update set.

    Args:
        z1, z2: (B, K) the nets' logits (only to keep the graph when nothing is updated).
        ce1, ce2: (B,) the nets' per-sample cross-entropies.
        update: (B,) bool, the samples to update on.
        count: 0-d, the size of the update set over every process's share of the batch.
        world: the number of processes (their gradients are averaged, so each rank's sum is
            scaled by it).

    Returns:
        (loss1, loss2); an exact 0 that still depends on every logit when the set is empty.
    """
    scale = world / count.clamp_min(1)
    loss1 = torch.where(update, ce1, torch.zeros_like(ce1)).sum() * scale + zero_touch(z1)
    loss2 = torch.where(update, ce2, torch.zeros_like(ce2)).sum() * scale + zero_touch(z2)
    return loss1, loss2


class Decoupling(Method):
    """Decoupling: two nets, each updated only on the samples they disagree on (module doc)."""

    Settings = DecouplingSettings
    reported_net = "net1"
    packable = True
    progress_figures = ("loss", "disagree_fraction")
    # The ACT paper's Tables 1-3 (see Standard.paper_numbers for the cells).
    paper_numbers: ClassVar[Mapping[str, float]] = {
        "cifar100n-sym20": 33.10,
        "cifar100n-sym80": 3.89,
        "cifar100n-asym40": 26.11,
        "cifar80n-sym20": 43.49,
        "cifar80n-sym80": 10.1,
        "cifar80n-asym40": 33.74,
        "web-aircraft": 75.91,
        "web-bird": 71.61,
        "web-car": 79.41,
        "food101n": 85.53,
    }

    def setup(self, make_model: Callable[[], nn.Module], observed_labels: Tensor) -> None:
        self.add_net("net1", make_model())  # independent initialisations: identical nets
        self.add_net("net2", make_model())  # would agree everywhere and never update

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        label = batch.label
        z1, z2 = self.fwd["net1"](batch.weak), self.fwd["net2"](batch.weak)  # (B, K) each
        # Predictions only decide membership: no gradient flows through the argmax.
        disagree = z1.detach().argmax(1) != z2.detach().argmax(1)
        update = disagree | self.warmup
        size = torch.tensor(len(label), device=label.device)
        counts = self.dist.global_sum(torch.stack([update.sum(), disagree.sum(), size]).float())
        ce1, ce2 = self.per_sample_ce(z1, label), self.per_sample_ce(z2, label)
        loss1, loss2 = disagreement_losses(z1, z2, ce1, ce2, update, counts[0], self.dist.world)
        return {
            "loss": loss1 + loss2,  # the nets share no parameters: one backward for both
            "loss_net1": loss1.detach(),
            "loss_net2": loss2.detach(),
            "disagree_fraction": counts[1] / counts[2],
            "empty_selection": (counts[0] == 0).float(),
            "train_acc_net1": (z1.argmax(1) == label).float().mean() * 100,
            "train_acc_net2": (z2.argmax(1) == label).float().mean() * 100,
        }

    def net_words(self, row: dict) -> list[str]:
        return [f"net2 {row['test_acc_net2']:.2f}%"]

    def selection_words(self, row: dict) -> list[str]:
        return [f"disagree {100 * row['disagree_fraction']:.1f}%"]
