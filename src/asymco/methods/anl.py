"""ANL, the active negative loss (Ye, Li, Dai, Liu, Sun & Tong, "Active Negative Loss
Functions for Learning with Noisy Labels", NeurIPS 2023), a row of the ACT paper's Tables 1-2.
Implemented: ANL-CE, the paper's main variant (ANL-FL, with focal losses, is not).

Rule. One net trained on every sample with

    L = alpha * NCE(p, y) + beta * NNCE(p, y) + delta * ||w||_1,

    NCE(p, y)  = -log p_y / sum_k -log p_k                       (normalized CE, active)
    NNCE(p, y) = 1 - (A + log p'_y) / sum_k (A + log p'_k)         (normalized negative CE)

with p'_k = max(p_k, p_min) and A = -log p_min, so each A + log p'_k = log(p'_k / p_min) is
in [0, A]: the paper's "vertical flip" of the clamped CE, A - CE_k, then normalised. Both terms
lie in [0, 1]. NNCE replaces APL's MAE as the passive loss: its gradient is largest for the
samples the net already fits (p_y high), so it sharpens the clean majority while NCE, bounded,
cannot be driven far by a wrong label. ||w||_1 is the L1 norm of every parameter of the net,
which the paper adds because the bounded losses let the weights grow (its code uses weight
decay 0 alongside it).

Hyperparameters (public code Virusdoll/Active-Negative-Loss, config/cifar100_anl_ce.json):
alpha 10, beta 1, delta 5e-7, p_min 1e-7 on CIFAR-100 (CIFAR-10: 5, 5, 5e-5, 1e-7), the
defaults here for every preset. Their CIFAR-100 protocol: ResNet-34, 200 epochs, SGD lr 0.1
momentum 0.9, weight decay 0, cosine to 0, batch 128, gradient norm clipped at 5 (CIFAR-10:
an 8-layer CNN, 120 epochs, lr 0.01). Here the harness's: cnn7, 150 epochs (50 at the constant
warmup LR), SGD nesterov lr 0.01 wd 5e-4 cosine to 5e-4, batch 128, no clipping (the engine
has none); `--set optim.weight_decay=0` gives the paper's L1-only regularisation. The L1 term
is a loss term over the net's parameters, as in the code (not a proximal or decay step).

Per process: NCE and NNCE are averaged over the process's share of the batch (DDP averages the
gradients: the global mean). The L1 term is the same on every process, so its gradient, averaged
over processes, is itself: added once per process, it is counted once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asymco.errors import UserError
from asymco.methods.base import MethodSettings
from asymco.methods.robust_loss import RobustLossMethod, normalized_ce


@dataclass(frozen=True, kw_only=True)
class ANLSettings(MethodSettings):
    name: str = "anl"
    alpha: float = 10.0
    """Weight of the active loss NCE (the paper's CIFAR-100 value: 10)."""
    beta: float = 1.0
    """Weight of the negative loss NNCE (the paper's CIFAR-100 value: 1)."""
    delta: float = 5e-7
    """Weight of the L1 norm of the net's parameters (the paper's CIFAR-100 value: 5e-7)."""
    min_prob: float = 1e-7
    """p_min: NNCE clamps probabilities at it, so log(0) never happens (the paper: 1e-7)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("alpha", "beta", "delta"):
            if not getattr(self, key) >= 0:
                raise UserError(f"method.{key} must be >= 0, got {getattr(self, key)}")
        if not self.alpha + self.beta > 0:
            raise UserError("method.alpha and method.beta must not both be 0 (nothing to learn)")
        if not 0 < self.min_prob < 0.5:
            raise UserError(f"method.min_prob must be in (0, 0.5), got {self.min_prob}")


def normalized_negative_ce(logits: Tensor, target: Tensor, *, min_prob: float) -> Tensor:
    """NNCE per sample: 1 - sum_k t_k v_k / sum_k v_k with v_k = log(max(p_k, p_min) / p_min).

    The clamp is taken on log p (the same, since log is monotone) from `log_softmax`, which
    stays finite where softmax underflows to 0; a clamped class passes no gradient, as in the
    paper's code. Needs p_min < 1/K, so that the largest v_k is positive.

    Args:
        logits: (B, K) logits (promoted to float32).
        target: (B, K) target distributions (one-hot rows give the paper's loss).
        min_prob: p_min.

    Returns:
        (B,) per-sample losses in [0, 1].
    """
    log_min = math.log(min_prob)
    v = F.log_softmax(logits.float(), dim=1).clamp(min=log_min) - log_min  # (B, K), in [0, A]
    return 1.0 - (target * v).sum(1) / v.sum(1)


def l1_norm(net: nn.Module) -> Tensor:
    """0-d float32: the sum of |w| over every parameter of `net`."""
    return torch.stack([p.float().abs().sum() for p in net.parameters()]).sum()


class ANL(RobustLossMethod):
    """One net trained with ANL-CE on every sample (module docstring)."""

    Settings = ANLSettings
    # The ACT paper's Tables 1-2 (see Standard.paper_numbers for the cells).
    paper_numbers: ClassVar[Mapping[str, float]] = {
        "cifar100n-sym20": 60.20,
        "cifar100n-sym80": 23.39,
        "cifar100n-asym40": 44.15,
        "cifar80n-sym20": 61.35,
        "cifar80n-sym80": 20.74,
        "cifar80n-asym40": 47.31,
        "web-aircraft": 81.78,
        "web-bird": 79.46,
        "web-car": 86.47,
    }

    def setup(self, make_model: Callable[[], nn.Module], observed_labels: Tensor) -> None:
        super().setup(make_model, observed_labels)
        if self.settings.min_prob * self.num_classes >= 1:
            raise UserError(
                f"method.min_prob must be below 1/{self.num_classes} (the number of classes), "
                f"got {self.settings.min_prob}"
            )

    def loss_terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        s = self.settings
        nce = normalized_ce(logits, target).mean()
        nnce = normalized_negative_ce(logits, target, min_prob=s.min_prob).mean()
        # The raw net's parameters: the same tensors the engine's wrapped forward uses.
        l1 = l1_norm(self.nets["net"])
        loss = s.alpha * nce + s.beta * nnce + s.delta * l1
        return {
            "loss": loss,
            "loss_nce": nce.detach(),
            "loss_nnce": nnce.detach(),
            "l1_norm": l1.detach(),
        }
