"""Co-teaching+ (Yu et al., "How does Disagreement Help Generalization against Label
Corruption?", ICML 2019).

Rule (paper Algorithm 1). Two nets see the same mini-batch D and:
1. keep only the disagreement set D' = {i : argmax f(x_i) != argmax g(x_i)};
2. within D', each net keeps its small-loss fraction R(T): the int(R(T) * |D'|) samples of D'
   with the smallest cross-entropy under that net;
3. cross update, as in Co-teaching: f trains on g's selection, g on f's.
Why: Co-teaching's two nets drift into agreeing with each other, and then their exchange
degenerates into self-training (the peer filters the same errors). Updating only on samples the
nets disagree on keeps them diverged, as in Decoupling, while the small-loss filter inside D'
keeps the noisy labels out.

For the first `init_epoch` epochs the method is plain Co-teaching (no disagreement filter), as
in the official code (xingruiyu/coteaching_plus): init_epoch = 20 for CIFAR-10, 5 for
CIFAR-100, 0 for MNIST and NEWS, 100 for Tiny-ImageNet; the default here is 20. The filter only
makes sense once the nets have learned something: from a random start their argmaxes disagree
on most samples for unrelated reasons.

The forget-rate schedule R(T) is Co-teaching's (`coteaching.forget_rate_at`), as the official
code's `fr_type='type_1'`. The code also holds, commented out, a `type_2` that keeps raising the
forget rate from tau to 2 tau between T_k and the last epoch; it is not used, and it would need
the total number of epochs, which a method does not know.

Details where the official code is quirky, and what we do:
- the code applies the cross-entropy to softmax outputs in the disagreement phase (a double
  softmax); we use the logits, as the paper's loss and the code's own Co-teaching phase do;
- when int(R * |D'|) = 0 but D' is not empty, the code keeps all of D' (its fallback, in the
  spirit of Co-teaching's "a subset of at least R times the batch"); we do the same;
- when D' is empty the code trains on the whole batch during its first 5000 "steps" (an
  epoch x batch-index product) and on nothing after; we train on nothing: an exact zero loss
  that still touches every parameter, never NaN.

`selected()` is net1's selection of the epoch (the samples net2 was trained on); samples the
nets agree on are never selected after `init_epoch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from asymco.errors import UserError
from asymco.methods.base import Batch
from asymco.methods.coteaching import (
    SmallLossPair,
    SmallLossSettings,
    coteaching_losses,
    num_remember,
)


@dataclass(frozen=True, kw_only=True)
class CoTeachingPlusSettings(SmallLossSettings):
    name: str = "coteaching_plus"
    init_epoch: int = 20
    """Epochs of plain Co-teaching before the disagreement step starts."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_epoch < 0:
            raise UserError("method.init_epoch must be >= 0")


class CoTeachingPlus(SmallLossPair):
    """Co-teaching+: the Co-teaching cross update restricted to the nets' disagreement set."""

    Settings = CoTeachingPlusSettings
    packable = True
    settings: CoTeachingPlusSettings
    # The ACT paper's Tables 1-3, as `Standard.paper_numbers`.
    paper_numbers: ClassVar[Mapping[str, float]] = {
        "cifar100n-sym20": 49.27,
        "cifar100n-sym80": 13.44,
        "cifar100n-asym40": 33.62,
        "cifar80n-sym20": 53.97,
        "cifar80n-sym80": 12.29,
        "cifar80n-asym40": 43.01,
        "web-aircraft": 74.80,
        "web-bird": 70.12,
        "web-car": 76.77,
        "food101n": 81.61,
    }

    def in_init_phase(self) -> bool:
        """Plain Co-teaching (no disagreement filter) in the first `init_epoch` epochs and in
        engine warmup epochs."""
        return self.warmup or self.epoch < self.settings.init_epoch

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        label = batch.label
        z1, z2, ce1, ce2, forget = self.forward_pair(batch)
        # Predictions only decide membership: no gradient flows through the argmax.
        disagree = z1.detach().argmax(1) != z2.detach().argmax(1)
        if self.in_init_phase():  # a Python decision per epoch, not per sample
            pool = None
            num_keep: int | Tensor = num_remember(len(label), 1 - forget)
        else:
            pool = disagree
            size = disagree.sum()  # stays a device tensor: no host sync
            num_keep = num_remember(size, 1 - forget)
            # Official fallback: a non-empty D' whose fraction rounds down to 0 is kept whole.
            num_keep = num_keep.where(num_keep > 0, size)
        loss1, loss2, keep1 = coteaching_losses(ce1, ce2, num_keep, pool)
        self._record(batch.index, keep1)
        return {
            "loss": loss1 + loss2,  # empty pool: exact 0 that still touches every parameter
            "loss_net1": loss1.detach(),
            "loss_net2": loss2.detach(),
            "disagree_fraction": disagree.float().mean(),
            **self._common_logs(z1, z2, label, keep1, forget),
        }
