"""Co-teaching (Han et al., "Co-teaching: Robust Training of Deep Neural Networks with Extremely
Noisy Labels", NeurIPS 2018), plus the small-loss machinery Co-teaching+ and JoCoR share.

Rule (paper Algorithm 1). Two nets of the same architecture, initialised independently, see the
same mini-batch D. Each net f keeps its small-loss subset
    D_f = the int(R(T) * |D|) samples of D with the smallest cross-entropy under f,
and the nets cross-update: f is trained on g's selection D_g and g on f's selection D_f (each
loss the mean cross-entropy over that subset). Deep nets fit clean labels before noisy ones, so
small-loss samples are likely clean; exchanging them keeps one net's selection errors from
being fed straight back into itself (the two nets filter different errors).

Schedule. The share kept is R(T) = 1 - min(T / T_k * tau, tau) at epoch T, with tau the forget
rate (the papers assume the true noise rate) and T_k = `num_gradual` (10). Early on, while the
nets have not memorised noise yet, they keep (almost) everything; the share drops linearly to
1 - tau by epoch T_k. `exponent` c generalises the ramp to tau * min((T / T_k)^c, 1).

Deviations from the official code (bhanML/Co-teaching), all documented choices:
- the ramp: the code fills `np.linspace(0, tau ** c, T_k)`, so it reaches tau one epoch early
  (at T_k - 1) and puts the exponent on tau; we follow the paper's formula above;
- epochs are 0-based here (R(0) = 1); the code's first training epoch is its epoch 1;
- a subset of size 0 (only a last batch smaller than 1 / R can give one: the code drops
  incomplete batches) gives an exact zero loss that still touches every parameter, not NaN.

Engine warmup (`train.warmup_epochs`): the papers have none. The engine's convention is that a
warmup epoch counts every sample as selected, so a warmup epoch here keeps every sample (forget
rate 0: both nets train on plain cross-entropy). Set `train.warmup_epochs=0` for the papers'
protocol. The schedule always runs on the absolute epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from asymco.config import NoiseConfig
from asymco.errors import UserError
from asymco.methods.base import Batch, Method, MethodSettings

# ------------------------------------------------------------------------- pure functions


def forget_rate_at(
    epoch: int, forget_rate: float, num_gradual: int, exponent: float = 1.0
) -> float:
    """The share of a batch to drop at `epoch`: tau * min((T / T_k)^c, 1).

    With c = 1 this is the paper's min(T / T_k * tau, tau), so R(T) = 1 - forget_rate_at(T).

    Args:
        epoch: T, the 0-based epoch.
        forget_rate: tau, the final share dropped (the papers use the true noise rate).
        num_gradual: T_k, the epochs the ramp from 0 to tau takes; 0 = tau from the start.
        exponent: c, the shape of the ramp (1 = linear).

    Returns:
        The forget rate of this epoch, in [0, tau].
    """
    if num_gradual <= 0 or epoch >= num_gradual:
        return forget_rate
    return forget_rate * (max(epoch, 0) / num_gradual) ** exponent


def num_remember(count: int | Tensor, remember_rate: float) -> int | Tensor:
    """How many samples to keep out of `count`: int(remember_rate * count), as the codes do.

    Args:
        count: the number of candidates, a Python int or a 0-d integer tensor (a data-dependent
            count such as the size of a disagreement set; it stays on its device, no sync).
        remember_rate: R(T) = 1 - forget rate.

    Returns:
        An int for an int `count`, else a 0-d int64 tensor on `count`'s device.
    """
    if isinstance(count, Tensor):
        # float64: the same IEEE product Python's int(R * n) truncates, so an n whose product is
        # an exact integer in double precision is not pushed one below it by float32 rounding.
        return torch.floor(count.double() * remember_rate).long()
    return int(remember_rate * count)


def small_loss_mask(
    loss: Tensor, num_keep: int | Tensor, candidates: Tensor | None = None
) -> Tensor:
    """The `num_keep` smallest-loss samples (of the `candidates`, if given), as a (B,) bool mask.

    Sorting is on the detached loss and stable (ties go to the earlier batch position), and it
    runs without a Python loop or a host sync even when `num_keep` is a device tensor.

    Args:
        loss: (B,) per-sample losses.
        num_keep: how many to keep; an int or a 0-d tensor (at most the number of candidates).
        candidates: (B,) bool; only these may be kept (None = all samples).

    Returns:
        (B,) bool, True for the kept samples.
    """
    loss = loss.detach()
    order = torch.argsort(loss, stable=True)  # ascending loss
    if candidates is not None:
        # Second stable sort on "not a candidate": candidates move to the front, each group
        # keeping its ascending-loss order, so a non-candidate can never take a kept slot.
        outside = (~candidates[order]).to(torch.int32)
        order = order[torch.argsort(outside, stable=True)]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=loss.device)
    keep = rank < num_keep
    if candidates is not None:
        keep &= candidates
    return keep


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over `mask`; an empty mask gives an exact 0 that still depends on
    `values` (every parameter behind them gets a zero gradient, never NaN).

    `torch.where` rather than multiplying by the mask, so a non-finite value outside the mask
    cannot leak into the result (0 * inf = NaN).
    """
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1)


def coteaching_losses(
    ce1: Tensor, ce2: Tensor, num_keep: int | Tensor, candidates: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The Co-teaching cross update on per-sample losses.

    Args:
        ce1: (B,) net1's per-sample losses (with their graph).
        ce2: (B,) net2's per-sample losses.
        num_keep: samples each net keeps.
        candidates: (B,) bool pool to select from (None = the whole batch).

    Returns:
        (loss1, loss2, keep1): net1's loss, the mean of ce1 over net2's small-loss samples;
        net2's loss, the mean of ce2 over net1's; and net1's selection (B,) bool.
    """
    keep1 = small_loss_mask(ce1, num_keep, candidates)  # net1 judges which samples look clean
    keep2 = small_loss_mask(ce2, num_keep, candidates)
    # The exchange: a net never learns from its own selection, so its own mistakes are not
    # reinforced; the peer, initialised differently, filters different errors.
    return masked_mean(ce1, keep2), masked_mean(ce2, keep1), keep1


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True, kw_only=True)
class SmallLossSettings(MethodSettings):
    """The forget-rate schedule Co-teaching, Co-teaching+ and JoCoR share."""

    forget_rate: float | None = None
    """tau: share of each batch dropped as large-loss once the schedule has ramped up. None =
    the true noise rate (`noise.rate`), as those papers assume; a new run writes the value it
    used to config.yaml."""
    num_gradual: int = 10
    """T_k: epochs over which the dropped share ramps up from 0."""
    exponent: float = 1.0
    """c: shape of the ramp, forget_rate * min((T / T_k)^c, 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.forget_rate is not None and not 0.0 <= self.forget_rate < 1.0:
            raise UserError(f"method.forget_rate must be in [0, 1), got {self.forget_rate}")
        if self.num_gradual < 0:
            raise UserError("method.num_gradual must be >= 0")
        if self.exponent <= 0:
            raise UserError("method.exponent must be positive")

    def resolved(self, noise: NoiseConfig) -> SmallLossSettings:
        """The true noise rate as the forget rate, unless one is set."""
        if self.forget_rate is not None:
            return self
        if noise.kind not in ("symmetric", "asymmetric"):
            raise UserError(
                f"method.name={self.name} needs method.forget_rate for {noise.kind} noise, "
                "whose rate is not known in advance"
            )
        return dataclasses.replace(self, forget_rate=noise.rate)


@dataclass(frozen=True, kw_only=True)
class CoTeachingSettings(SmallLossSettings):
    name: str = "coteaching"


# ---------------------------------------------------------------------------- the methods


class SmallLossPair(Method):
    """Shared base of the two-net small-loss methods (Co-teaching, Co-teaching+, JoCoR).

    Builds "net1" (reported) and "net2", keeps the per-epoch selection and the selection counts
    in buffers, and reads the forget-rate schedule from the settings.
    Subclasses implement `training_step` and call `_record` with the selection to report.
    """

    Settings = SmallLossSettings
    reported_net = "net1"
    packable = True

    settings: SmallLossSettings

    def setup(self, make_model: Callable[[], nn.Module], observed_labels: Tensor) -> None:
        self.add_net("net1", make_model())  # two independent initialisations: the nets must
        self.add_net("net2", make_model())  # differ to filter different errors
        n = self.num_samples
        # Buffers, so they checkpoint with the nets and follow .to(device).
        self.register_buffer("is_selected", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("select_count", torch.zeros(n, dtype=torch.int32))
        _ = self.forget_rate  # unresolved settings are refused before any training

    @property
    def forget_rate(self) -> float:
        """tau, the final forget rate; there is no default because the papers set it to the
        true noise rate, which only the run knows."""
        tau = self.settings.forget_rate
        if tau is None:
            raise UserError(
                f"method.forget_rate is not set: {type(self).__name__} drops that share of every "
                "batch and the paper sets it to the true noise rate; set method.forget_rate "
                "(e.g. to noise.rate)"
            )
        return float(tau)

    def forward_pair(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
        """Both nets on the same weak view: (z1, z2, per-sample CE of each, forget rate)."""
        z1 = self.fwd["net1"](batch.weak)
        z2 = self.fwd["net2"](batch.weak)
        ce1, ce2 = self.per_sample_ce(z1, batch.label), self.per_sample_ce(z2, batch.label)
        return z1, z2, ce1, ce2, self.current_forget_rate()

    def current_forget_rate(self) -> float:
        """The forget rate of `self.epoch`; 0 in engine warmup epochs (everything counts)."""
        if self.warmup:
            return 0.0
        return forget_rate_at(
            self.epoch,
            self.forget_rate,
            self.settings.num_gradual,
            self.settings.exponent,
        )

    def on_epoch_start(self, epoch: int, *, warmup: bool) -> None:
        super().on_epoch_start(epoch, warmup=warmup)
        self.is_selected.zero_()  # selected() reports this epoch only

    def _record(self, index: Tensor, chosen: Tensor) -> None:
        # Each sample is visited once per epoch (indices are unique within a batch), so the
        # count grows by at most one per epoch.
        self.is_selected[index] = chosen
        self.select_count[index] += chosen.to(torch.int32)

    def _common_logs(
        self, z1: Tensor, z2: Tensor, label: Tensor, chosen: Tensor, forget: float
    ) -> dict[str, Tensor]:
        n_chosen = chosen.sum()
        return {
            "keep_fraction": n_chosen.float() / len(label),
            "forget_rate": torch.full((), forget, device=label.device),
            "empty_selection": (n_chosen == 0).float(),
            "train_acc_net1": (z1.argmax(1) == label).float().mean() * 100,
            "train_acc_net2": (z2.argmax(1) == label).float().mean() * 100,
        }


class CoTeaching(SmallLossPair):
    """Co-teaching: each net trains on its peer's small-loss samples (module docstring).

    `selected()` is net1's selection of the epoch, i.e. the samples net2 was trained on.
    """

    Settings = CoTeachingSettings
    # The ACT paper's Tables 1-3, as `Standard.paper_numbers`.
    paper_numbers: ClassVar[Mapping[str, float]] = {
        "cifar100n-sym20": 43.73,
        "cifar100n-sym80": 15.15,
        "cifar100n-asym40": 28.35,
        "cifar80n-sym20": 60.38,
        "cifar80n-sym80": 16.59,
        "cifar80n-asym40": 42.42,
        "web-aircraft": 79.54,
        "web-bird": 76.68,
        "web-car": 84.95,
        "food101n": 61.91,
    }

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        label = batch.label
        z1, z2, ce1, ce2, forget = self.forward_pair(batch)
        loss1, loss2, keep1 = coteaching_losses(ce1, ce2, num_remember(len(label), 1 - forget))
        self._record(batch.index, keep1)
        return {
            "loss": loss1 + loss2,  # one backward, one optimizer over both nets' parameters
            "loss_net1": loss1.detach(),
            "loss_net2": loss2.detach(),
            **self._common_logs(z1, z2, label, keep1, forget),
        }
