"""SOP (Liu, Zhu, Qu & You, "Robust Training under Label Noise by Over-parameterization",
ICML 2022), a row of the ACT paper's Tables 1-3; SOP+ with `method.plus=true`.

Rule. Each training sample i owns a scalar u_i and a vector v_i (K), fitted by SGD beside the
net. With y_i the one-hot given label and p_i = softmax(f(x_i)), the label noise is modelled as
the sparse over-parameterised term
    s_i = U_i - V_i,  U_i = clamp(u_i^2 * y_i, 0, 1),  V_i = clamp(v_i^2 * (1 - y_i), 0, 1),
and the loss of a batch B is
    L = 1/|B| sum_i [ CE(q_i, y_i) + || onehot(argmax p_i) + U_i - V_i - y_i ||^2 ],
    q_i = clamp(n(clamp(p_i + U_i - sg(V_i), eps)), eps, 1),  n(a) = a / sum(a),  eps = 1e-4,
where sg() stops the gradient: v is fitted by the MSE term only, the net and u by the CE term
(and u, in the public code, by the MSE term too). Why: u, v start at ~0 (std 1e-8) and
gradient descent on a product u*u grows only the few coordinates that keep being pushed, an
implicit sparsity (L1) bias; so s absorbs the labels the net cannot fit (the noisy ones) and
the net is never pushed to memorise them. SOP+ adds, on a weak and a strong view,
    + ratio_consistency * 1/|B| sum_i KL(sg(p_i^weak) || p_i^strong)
    + ratio_balance * KL(uniform || mean_i q_i)    (the code's cross-entropy, minus log K).

Hyperparameters: the public code's CIFAR-100 config (PreActResNet18, 300 epochs, lr 0.02) uses
std 1e-8 for u and v, lr_u = 1 and lr_v = 10 (README: lr_u = 0.1, lr_v = 100 for asymmetric
noise), plain SGD without momentum or weight decay and no schedule for u, v, and for SOP+
ratio_consistency = 0.9 and ratio_balance = 0.1. They are kept as they are (`resolved` picks
the asymmetric pair by noise kind); only the net follows this protocol (cnn7, its SGD and LR
plan). The engine's warmup epochs use the SOP loss too (`warmup_loss=sop`): SOP has no warmup
and is a loss correction from the first step; `warmup_loss=ce` trains the net alone with
cross-entropy then (u, v frozen).

Per process (torchrun): the balance term's batch mean is over the process's share of the
batch. u and v are not inside a DDP net, so their gradients are not averaged: each process's
loss is its local batch mean, so their gradients are scaled by 1/world to equal one process's;
the engine then syncs their rows (`per_sample_state`).

`clean_scores()` = 1 - clamp(u_i^2, 0, 1): U_i is the probability the model had to add to the
given label to explain it, ~0 where the net agrees with the label and towards 1 where it does
not; v only mirrors where the net's own prediction went. `noise_size` logs its batch mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asymco.config import NoiseConfig, OptimConfig
from asymco.errors import UserError
from asymco.methods.base import Batch, LRPlan, Method, MethodSettings

EPS = 1e-4
"""The public code's floor for corrected probabilities (before and after normalising)."""
LRS_SYMMETRIC = (1.0, 10.0)
"""(lr_u, lr_v) of the public CIFAR-100 config (symmetric noise; also used for other kinds)."""
LRS_ASYMMETRIC = (0.1, 100.0)
"""(lr_u, lr_v) of the public README's CIFAR-100 40 % asymmetric command."""
PLUS_RATIOS = (0.9, 0.1)
"""SOP+ (ratio_consistency, ratio_balance) of the public CIFAR-100 config."""


@dataclass(frozen=True, kw_only=True)
class SOPSettings(MethodSettings):
    name: str = "sop"
    lr_u: float | None = None
    """Constant SGD learning rate of u. None = by noise kind: 1 (0.1 for asymmetric noise)."""
    lr_v: float | None = None
    """Constant SGD learning rate of v. None = by noise kind: 10 (100 for asymmetric noise)."""
    init_std: float = 1e-8
    """Standard deviation of the zero-mean normal initialisation of u and v."""
    plus: bool = False
    """SOP+: consistency between a weak and a strong view and the class-balance term on."""
    ratio_consistency: float | None = None
    """Weight of KL(p_weak || p_strong). None = 0.9 with `plus`, else 0."""
    ratio_balance: float | None = None
    """Weight of KL(uniform || batch-mean corrected prediction). None = 0.1 with `plus`, else 0."""
    u_from_mse: bool = True
    """The MSE term also updates u (the public code); false: u is fitted by the CE term only."""
    warmup_loss: Literal["sop", "ce"] = "sop"
    """Loss in the engine's warmup epochs: `sop` (the paper: no warmup) or plain `ce`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("lr_u", "lr_v"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise UserError(f"method.{key} must be positive, got {value}")
        if not self.init_std >= 0:
            raise UserError(f"method.init_std must be >= 0, got {self.init_std}")
        for key in ("ratio_consistency", "ratio_balance"):
            value = getattr(self, key)
            if value is not None and not value >= 0:
                raise UserError(f"method.{key} must be >= 0, got {value}")

    def resolved(self, noise: NoiseConfig) -> SOPSettings:
        lr_u, lr_v = LRS_ASYMMETRIC if noise.kind == "asymmetric" else LRS_SYMMETRIC
        consistency, balance = self.ratios()
        return replace(
            self,
            lr_u=lr_u if self.lr_u is None else self.lr_u,
            lr_v=lr_v if self.lr_v is None else self.lr_v,
            ratio_consistency=consistency,
            ratio_balance=balance,
        )

    def ratios(self) -> tuple[float, float]:
        """(ratio_consistency, ratio_balance), the unset ones from `plus`."""
        consistency, balance = PLUS_RATIOS if self.plus else (0.0, 0.0)
        if self.ratio_consistency is not None:
            consistency = self.ratio_consistency
        if self.ratio_balance is not None:
            balance = self.ratio_balance
        return consistency, balance


def noise_terms(u_rows: Tensor, v_rows: Tensor, onehot: Tensor) -> tuple[Tensor, Tensor]:
    """(U, V), each (B, K): clamp(u^2 * y, 0, 1) and clamp(v^2 * (1 - y), 0, 1).

    Args:
        u_rows: (B, 1) the batch's rows of u.
        v_rows: (B, K) the batch's rows of v.
        onehot: (B, K) one-hot given labels.
    """
    return (u_rows**2 * onehot).clamp(0, 1), (v_rows**2 * (1 - onehot)).clamp(0, 1)


def corrected_prediction(logits: Tensor, big_u: Tensor, big_v: Tensor) -> Tensor:
    """(B, K) q = clamp(normalise(clamp(softmax + U - sg(V), eps)), eps, 1): the prediction the
    label is compared with; V enters without gradient (v is fitted by the MSE term)."""
    raw = (logits.float().softmax(1) + big_u - big_v.detach()).clamp_min(EPS)
    return F.normalize(raw, p=1, dim=1, eps=EPS).clamp(EPS, 1.0)


def sop_loss(
    logits: Tensor, big_u: Tensor, big_v: Tensor, onehot: Tensor, target: Tensor, u_from_mse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The CE and MSE terms (each a batch mean) and the corrected prediction q.

    Args:
        logits: (B, K) the net's logits.
        big_u, big_v: (B, K) from `noise_terms`.
        onehot: (B, K) one-hot given labels (the MSE target).
        target: (B, K) the CE target: `onehot`, or its label-smoothed form.
        u_from_mse: let the MSE term's gradient reach u (the public code does).
    """
    q = corrected_prediction(logits, big_u, big_v)
    ce = -(target * q.log()).sum(1).mean()
    predicted = F.one_hot(logits.detach().argmax(1), onehot.shape[1]).float()
    fit = predicted + (big_u if u_from_mse else big_u.detach()) - big_v
    mse = ((fit - onehot) ** 2).sum(1).mean()
    return ce, mse, q


def consistency_kl(weak_logits: Tensor, strong_logits: Tensor) -> Tensor:
    """SOP+'s batch mean of KL(sg(p_weak) || p_strong): the strong view learns the weak one's
    prediction, not the other way round."""
    p_weak = weak_logits.detach().float().softmax(1)
    log_strong = strong_logits.float().log_softmax(1)
    return F.kl_div(log_strong, p_weak, reduction="none").sum(1).mean()


def balance_kl(q: Tensor) -> Tensor:
    """SOP+'s KL(uniform || mean_i q_i) over the batch: no class may take over the corrected
    predictions. The code writes it as the cross-entropy, log K more; the gradient is equal."""
    mean = q.mean(0).clamp(EPS, 1.0)
    k = q.shape[1]
    return -(mean.log().mean()) - math.log(k)


class SOP(Method):
    """SOP / SOP+: per-sample over-parameterised label noise fitted beside the net (module doc)."""

    Settings = SOPSettings
    settings: SOPSettings
    reported_net = "net"
    progress_figures = ("loss", "noise_size")
    # The ACT paper's Tables 1-2 (SOP re-run by the ACT authors).
    paper_numbers: ClassVar[Mapping[str, float]] = {
        "cifar100n-sym20": 58.63,
        "cifar100n-sym80": 34.23,
        "cifar100n-asym40": 49.87,
        "cifar80n-sym20": 60.17,
        "cifar80n-sym80": 34.05,
        "cifar80n-asym40": 53.34,
        "web-aircraft": 84.06,
        "web-bird": 79.40,
        "web-car": 85.71,
    }

    def setup(self, make_model: Callable[[], nn.Module], observed_labels: Tensor) -> None:
        self.add_net("net", make_model())
        n, k, std = self.num_samples, self.num_classes, self.settings.init_std
        # Parameters of the method itself: checkpointed and synced as per-sample state.
        self.u = nn.Parameter(torch.randn(n, 1) * std)
        self.v = nn.Parameter(torch.randn(n, k) * std)

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        if optim.name != "sgd":
            raise UserError(
                f"method.name=sop needs optim.name=sgd, not {optim.name}: u and v have a row "
                "per sample, and Adam would move the rows a step did not touch"
            )
        s = self.settings
        lr_u = LRS_SYMMETRIC[0] if s.lr_u is None else s.lr_u
        lr_v = LRS_SYMMETRIC[1] if s.lr_v is None else s.lr_v
        # The public code's plain SGD: no momentum, no weight decay, a constant rate.
        plain = {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
        return [
            *super().param_groups(optim),
            {"params": [self.u], "net": "u", "lr_plan": LRPlan(lr_u, lr_u, "constant"), **plain},
            {"params": [self.v], "net": "v", "lr_plan": LRPlan(lr_v, lr_v, "constant"), **plain},
        ]

    def _sop_on(self) -> bool:
        return not (self.warmup and self.settings.warmup_loss == "ce")

    def train_views(self) -> tuple[str, ...]:
        consistency, _ = self.settings.ratios()
        return ("weak", "strong") if consistency > 0 and self._sop_on() else ("weak",)

    def _rows(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """The batch's rows of u and v; under torchrun their gradients scaled by 1/world, since
        no DDP averages them and each process's loss is its local batch mean."""
        u_rows, v_rows = self.u[index], self.v[index]
        world = self.dist.world
        if world > 1:
            for rows in (u_rows, v_rows):
                rows.register_hook(lambda grad: grad / world)
        return u_rows, v_rows

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        outs = self.fwd["net"](*batch.views)
        weak = outs[0] if isinstance(outs, tuple) else outs  # (B, K)
        label = batch.label
        hits = (weak.detach().argmax(1) == label).float().mean() * 100
        noise_size = (self.u.detach()[batch.index] ** 2).clamp(0, 1).mean()
        if not self._sop_on():
            ce = self.per_sample_ce(weak, label).mean()  # warmup_loss=ce: u, v stay frozen
            return {"loss": ce, "train_acc": hits, "noise_size": noise_size}
        onehot = F.one_hot(label, self.num_classes).float()
        smoothing = self.settings.label_smoothing  # 0 in the paper; the CE term's target only
        target = onehot * (1 - smoothing) + smoothing / self.num_classes
        big_u, big_v = noise_terms(*self._rows(batch.index), onehot)
        ce, mse, q = sop_loss(weak, big_u, big_v, onehot, target, self.settings.u_from_mse)
        loss = ce + mse
        figures = {"loss_ce": ce.detach(), "loss_mse": mse.detach()}
        consistency, balance = self.settings.ratios()
        if balance > 0:
            term = balance_kl(q)
            loss = loss + balance * term
            figures["loss_balance"] = term.detach()
        if consistency > 0 and isinstance(outs, tuple):
            term = consistency_kl(weak, outs[1])
            loss = loss + consistency * term
            figures["loss_consistency"] = term.detach()
        return {"loss": loss, "train_acc": hits, "noise_size": noise_size, **figures}

    def clean_scores(self) -> Tensor:
        return 1.0 - (self.u.detach()[:, 0] ** 2).clamp(0, 1)
