"""JoCoR (Wei et al., "Combating Noisy Labels by Agreement: A Joint Training Method with
Co-Regularization", CVPR 2020).

Rule (paper, Algorithm 1). Two nets see the same mini-batch and each sample gets one
joint loss
    l_i = (1 - lambda) * (CE(p1_i, y_i) + CE(p2_i, y_i))
          + lambda * (KL(p1_i || p2_i) + KL(p2_i || p1_i)),
the supervised terms plus a symmetric-KL co-regularisation that pulls the nets' predictions
together. The int(R(T) * B) samples with the smallest *joint* loss are kept and BOTH nets are
updated with the mean joint loss over them: one selection and one loss, not a cross update.
Why: Decoupling and Co-teaching+ keep the nets apart by design; JoCoR argues the opposite, that
samples whose labels both nets fit AND on which they agree are the reliable ones (agreement
maximisation, as in co-training), so a sample the nets disagree on has a large joint loss and
is dropped even if each net alone fits its label. R(T) is Co-teaching's schedule
(`coteaching.forget_rate_at`).

lambda = `co_lambda`, default 0.9. The official code's argparse default is 0.1, but its README
gives the best lambda as 0.9 for CIFAR-10 with 20% and 50% symmetric and 40% asymmetric noise,
0.65 for 80% noise and 0.85 for CIFAR-100; 0.9 is that CIFAR-10 value. lambda = 0 reduces the
method to selecting by, and training on, the summed cross-entropy of the two nets.

As in the official code (hongxin001/JoCoR), the KL terms are not detached: each KL direction
sends gradient into both nets (`F.kl_div` there is given a non-detached softmax target). The
official code sets the forget rate to noise_rate / 2 for its "asymmetric" noise type (the
class-dependent flips that change only some classes); for pair-flip and symmetric noise it is
the noise rate.

`selected()` is the joint selection of the epoch, the samples both nets were trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from asymco.errors import UserError
from asymco.methods.base import Batch
from asymco.methods.coteaching import (
    SmallLossPair,
    SmallLossSettings,
    masked_mean,
    num_remember,
    small_loss_mask,
)


@dataclass(frozen=True, kw_only=True)
class JoCoRSettings(SmallLossSettings):
    name: str = "jocor"
    co_lambda: float = 0.9
    """lambda: weight of the co-regularisation (symmetric KL) in the joint loss."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.co_lambda <= 1.0:
            raise UserError(f"method.co_lambda must be in [0, 1], got {self.co_lambda}")


def symmetric_kl(logits1: Tensor, logits2: Tensor) -> Tensor:
    """Per-sample KL(p1||p2) + KL(p2||p1) of the two nets' softmax predictions.

    The sum of both directions is sum_k (p1_k - p2_k) * (log p1_k - log p2_k), computed from
    log-softmax in float32 so it stays finite for confident logits. Not detached on either side.

    Args:
        logits1: (B, K) net1's logits.
        logits2: (B, K) net2's logits.

    Returns:
        (B,) non-negative co-regularisation terms.
    """
    log_p1 = F.log_softmax(logits1.float(), dim=1)
    log_p2 = F.log_softmax(logits2.float(), dim=1)
    return ((log_p1.exp() - log_p2.exp()) * (log_p1 - log_p2)).sum(1)


def jocor_loss(ce1: Tensor, ce2: Tensor, kl: Tensor, co_lambda: float) -> Tensor:
    """The per-sample joint loss (1 - lambda) * (ce1 + ce2) + lambda * kl, with `kl` symmetric."""
    return (1 - co_lambda) * (ce1 + ce2) + co_lambda * kl


class JoCoR(SmallLossPair):
    """JoCoR: joint small-loss selection by supervised loss + co-regularisation (module doc)."""

    Settings = JoCoRSettings
    packable = True
    settings: JoCoRSettings
    # The ACT paper's Tables 1-3, as `Standard.paper_numbers`.
    paper_numbers: ClassVar[Mapping[str, float]] = {
        "cifar100n-sym20": 53.01,
        "cifar100n-sym80": 15.49,
        "cifar100n-asym40": 32.70,
        "cifar80n-sym20": 59.99,
        "cifar80n-sym80": 12.85,
        "cifar80n-asym40": 39.37,
        "web-aircraft": 80.11,
        "web-bird": 79.19,
        "web-car": 85.10,
        "food101n": 77.94,
    }

    @property
    def co_lambda(self) -> float:
        """lambda, the weight of the co-regularisation term."""
        return self.settings.co_lambda

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        label = batch.label
        z1, z2, ce1, ce2, forget = self.forward_pair(batch)
        kl = symmetric_kl(z1, z2)
        joint = jocor_loss(ce1, ce2, kl, self.co_lambda)
        # One selection by the joint loss: a sample the nets disagree on ranks high even when
        # each net fits its label, so agreement is part of what "clean" means here.
        keep = small_loss_mask(joint, num_remember(len(label), 1 - forget))
        self._record(batch.index, keep)
        loss = masked_mean(joint, keep)  # both nets, the same samples, one loss
        with torch.no_grad():
            logs = {
                "loss_net1": masked_mean(ce1, keep),
                "loss_net2": masked_mean(ce2, keep),
                "co_reg": masked_mean(kl, keep),
            }
        return {"loss": loss, **logs, **self._common_logs(z1, z2, label, keep, forget)}
