"""The engine <-> method seam.

A method owns its networks, losses, per-sample state and selection; the engine owns devices,
the optimizer and LR plans, backward/step, evaluation, checkpoints and logging. Per-sample state
lives in module buffers, so `state_dict()` checkpoints it with the nets and `.to(device)` moves it.

Under torchrun each process sees only its share of every batch. A method that needs a figure of
the whole global batch sums it with `self.dist.global_sum`; the engine keeps per-sample buffers
identical across processes (`per_sample_buffers`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asymco.config import MethodConfig
from asymco.data.loader import Batch
from asymco.engine.distributed import Dist


class Views(nn.Module):
    """One net on one or more views in a single call: `fwd["rtm"](weak, strong)`. A net used
    twice per step must be called once, because DistributedDataParallel expects one forward per
    backward; the views still go through the net one after the other (BatchNorm sees each view
    as its own batch, as in the reference code)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *views: Tensor) -> Tensor | tuple[Tensor, ...]:
        outs = tuple(self.net(v) for v in views)
        return outs[0] if len(outs) == 1 else outs


class Method(nn.Module):
    """Base class. Subclasses fill `self.nets` and implement `training_step`."""

    reported_net: str = "net"
    """The key of the net whose test accuracy is *the* result of a run."""

    def __init__(
        self,
        cfg: MethodConfig,
        *,
        num_classes: int,
        observed_labels: Tensor,
        make_model: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.num_samples = len(observed_labels)
        self.nets = nn.ModuleDict()
        # The callables training_step uses; the engine may wrap them (DDP, compile) without the
        # wrappers leaking into state_dict() keys.
        self.fwd: dict[str, nn.Module] = {}
        self.dist = Dist()
        self.epoch = 0
        self.warmup = False
        self.setup(make_model, observed_labels.long())

    def setup(self, make_model: Callable[[], nn.Module], observed_labels: Tensor) -> None:
        """Build the nets (with `add_net`) and register per-sample state buffers."""
        raise NotImplementedError

    def add_net(self, name: str, net: nn.Module) -> None:
        self.nets[name] = net
        self.fwd[name] = Views(net)

    def param_groups(self) -> list[dict]:
        """One optimizer group per net; `plan` names the LR plan ("main" or "ntm") it follows."""
        return [
            {"params": list(net.parameters()), "net": name, "plan": "main"}
            for name, net in self.nets.items()
        ]

    def set_phase(self, epoch: int, *, warmup: bool) -> None:
        """Which epoch runs; alone (without `on_epoch_start`'s resets) when a run resumes in the
        middle of an epoch."""
        self.epoch = epoch
        self.warmup = warmup

    def on_epoch_start(self, epoch: int, *, warmup: bool) -> None:
        self.set_phase(epoch, warmup=warmup)

    def per_sample_buffers(self) -> list[Tensor]:
        """The method's own buffers with one row per training sample (not the nets' buffers)."""
        return [
            buf
            for buf in self.buffers(recurse=False)
            if buf.dim() > 0 and buf.shape[0] == self.num_samples
        ]

    def needs_strong_view(self) -> bool:
        return False

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Return a dict with the scalar "loss" to backpropagate and other figures to log.

        Values must stay device tensors (no `.item()`), so an epoch runs without host syncs.
        """
        raise NotImplementedError

    def on_epoch_end(self) -> dict[str, float]:
        return {}

    def eval_nets(self) -> dict[str, nn.Module]:
        """Nets to evaluate on the test set, the reported one first."""
        return {self.reported_net: self.nets[self.reported_net]}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.nets[self.reported_net](x)

    def select_counts(self) -> Tensor | None:
        """(N,) int: in how many epochs so far each sample counted as clean (warmup included),
        or None if the method does not select. Selecting methods keep it in `select_count`."""
        return getattr(self, "select_count", None)

    def selected(self) -> Tensor | None:
        """(N,) bool: the samples this epoch treated as clean, or None if it does not select.
        Selecting methods keep it in an `is_selected` buffer."""
        return getattr(self, "is_selected", None)

    def per_sample_ce(self, logits: Tensor, target: Tensor) -> Tensor:
        """(B,) cross-entropy in float32 (logits may be bf16 under autocast), with the run's
        label smoothing."""
        return F.cross_entropy(
            logits.float(), target, reduction="none", label_smoothing=self.cfg.label_smoothing
        )


def zero_touch(logits: Tensor) -> Tensor:
    """A zero loss that still depends on `logits`, so every parameter receives a (zero)
    gradient: an empty selection must not leave parameters unused (DDP requires all of them)."""
    return logits.sum() * 0.0
