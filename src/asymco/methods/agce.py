"""AGCE, the asymmetric generalized cross-entropy (Zhou, Liu, Zhai, Jiang & Ji, "Asymmetric Loss
Functions for Noise-tolerant Learning: Theory and Applications", TPAMI 2023; first as Zhou, Liu,
Jiang, Gao & Ji, "Asymmetric Loss Functions for Learning with Noisy Labels", ICML 2021), a row
of the ACT paper's Tables 1-2.

Rule. One net trained on every sample with

    AGCE(p, y) = ((a + 1)^q - (a + p_y)^q) / q,      a > 0, q > 0,

p = softmax(logits). It depends on p_y only and is bounded: 0 <= AGCE <= ((a+1)^q - a^q) / q.
Its gradient with respect to the logits is

    dAGCE/dz_j = -(a + p_y)^(q - 1) * p_y * (1[j = y] - p_j),

so a sample the net does not fit (p_y near 0) pushes weakly: why a wrong label is fitted late.
The paper proves AGCE "asymmetric" (hence noise-tolerant under clean-majority noise) for these
(a, q). No clamp is needed: a + p_y >= a > 0. The TPAMI paper also pairs AGCE as the passive
term with NCE (`normalized_ce`, robust_loss.py): alpha * NCE + beta * AGCE, here
`nce_weight` and `agce_weight` (default 0 and 1: AGCE alone, the ACT paper's row).

Hyperparameters (public code hitcszx/ALFs, lnl/config.py): AGCE alone a = 0.6, q = 0.6 for
CIFAR-100 (the same as its CIFAR-10 entry), the defaults here for every preset; NCE+AGCE on
CIFAR-100: alpha 10, beta 0.1, a 1.8, q 3. Their CIFAR-100 protocol: ResNet-34, 200 epochs,
SGD lr 0.1 momentum 0.9 wd 1e-5, cosine to 0, batch 128, gradient norm clipped at 5 (CIFAR-10:
their 8-layer CNN, 120 epochs, lr 0.01, wd 1e-4). Here the harness's: cnn7, 150 epochs (50 at
the constant warmup LR), SGD nesterov lr 0.01 wd 5e-4 cosine to 5e-4, batch 128, no clipping
(the engine has none). AGCE is used from the first step (the paper has no warmup), which
`robust_loss.py` describes with the rest of the shared one-net behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from asymco.errors import UserError
from asymco.methods.base import MethodSettings
from asymco.methods.robust_loss import RobustLossMethod, normalized_ce


@dataclass(frozen=True, kw_only=True)
class AGCESettings(MethodSettings):
    name: str = "agce"
    a: float = 0.6
    """AGCE's offset a > 0 (the paper's CIFAR-100 value for AGCE alone: 0.6)."""
    q: float = 0.6
    """AGCE's exponent q > 0 (the paper's CIFAR-100 value for AGCE alone: 0.6)."""
    nce_weight: float = 0.0
    """alpha: weight of an NCE term added to AGCE (0: AGCE alone; the TPAMI NCE+AGCE: 10)."""
    agce_weight: float = 1.0
    """beta: weight of the AGCE term (1: AGCE alone; the TPAMI NCE+AGCE on CIFAR-100: 0.1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("a", "q", "agce_weight"):
            if not getattr(self, key) > 0:
                raise UserError(f"method.{key} must be positive, got {getattr(self, key)}")
        if not self.nce_weight >= 0:
            raise UserError(f"method.nce_weight must be >= 0, got {self.nce_weight}")
        try:  # the loss's bound (a + 1)^q: past float range, every loss would overflow
            bound = (self.a + 1.0) ** self.q
        except OverflowError:
            bound = math.inf
        if not math.isfinite(bound):
            raise UserError(
                f"method.a={self.a:g} and method.q={self.q:g} make (a + 1)^q overflow; "
                "use a smaller q (the paper's: 0.6)"
            )


def asymmetric_gce(logits: Tensor, target: Tensor, *, a: float, q: float) -> Tensor:
    """AGCE per sample: sum_k t_k * ((a + 1)^q - (a + p_k)^q) / q (module docstring).

    Args:
        logits: (B, K) logits (promoted to float32).
        target: (B, K) target distributions (one-hot rows give the paper's loss of p_y).
        a, q: AGCE's parameters, both positive.

    Returns:
        (B,) per-sample losses in [0, ((a + 1)^q - a^q) / q].
    """
    p = torch.softmax(logits.float(), dim=1)  # (B, K)
    per_class = ((a + 1.0) ** q - (a + p) ** q) / q  # (B, K): the loss were k the label
    return (target * per_class).sum(1)


class AGCE(RobustLossMethod):
    """One net trained with AGCE (or NCE + AGCE) on every sample (module docstring)."""

    Settings = AGCESettings
    packable = True
    # The ACT paper's Tables 1-2 (see Standard.paper_numbers for the cells).
    paper_numbers: ClassVar[Mapping[str, float]] = {
        "cifar100n-sym20": 59.38,
        "cifar100n-sym80": 27.41,
        "cifar100n-asym40": 43.04,
        "cifar80n-sym20": 60.24,
        "cifar80n-sym80": 25.39,
        "cifar80n-asym40": 44.06,
        "web-aircraft": 84.22,
        "web-bird": 75.60,
        "web-car": 85.16,
    }

    def loss_terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        s = self.settings
        agce = asymmetric_gce(logits, target, a=s.a, q=s.q).mean()
        nce = normalized_ce(logits, target).mean()
        # NCE is always logged (a figure of fit in [0, 1]); it is trained only if weighted.
        loss = s.agce_weight * agce + (s.nce_weight * nce if s.nce_weight else 0.0)
        return {"loss": loss, "loss_agce": agce.detach(), "loss_nce": nce.detach()}
