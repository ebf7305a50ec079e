"""The engine <-> method seam.

A method owns its networks, losses, per-sample state, selection, settings and the figures it
reports; the engine owns devices, the optimizer and LR plans, backward/step, evaluation,
checkpoints and logging, and asks the method for everything method-specific: its parameter
groups and their LR plans, its per-epoch row and console words (`reporting.py`), the
judgements to score against the truth (which the method itself never sees).

Per-sample state lives in module buffers (or parameters, for per-sample variables the optimizer
fits), so `state_dict()` checkpoints it with the nets and `.to(device)` moves it. Under torchrun
each process sees only its share of every batch; a method that needs a figure of the whole
global batch sums it with `self.dist.global_sum`, and the engine keeps per-sample state
identical across processes (`per_sample_state`).

What a method may ask of the engine besides its batches:
- several views of each image (`train_views`: any number of weak and strong draws);
- the un-augmented training set through some of its nets at the start of an epoch
  (`training_pass_nets`, answered through `on_training_pass`);
- extra optimizer groups with their own LR plans and options (`param_groups`);
- an exponential moving average of a net, updated after every optimizer step (`add_average`);
- its own per-sample clean score for label_issues.csv (`clean_scores`, cut at `clean_cut`);
- the run's schedule (`run_epochs`, `run_warmup_epochs`).

A new method is one file: a `Method` subclass with a `Settings` class, registered in
`methods/__init__.py` (see docs/new-method.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asymco.batch import Batch
from asymco.config import MethodSettings, OptimConfig
from asymco.lr_plan import LRPlan
from asymco.methods.reporting import EpochResults, Reporting

__all__ = [
    "Batch",
    "EpochResults",
    "LRPlan",
    "Method",
    "MethodSettings",
    "Processes",
    "Views",
    "zero_touch",
]


class Processes(Protocol):
    """What a method may ask of the other training processes (the engine's `Dist`)."""

    @property
    def world(self) -> int: ...

    def global_sum(self, value: Tensor) -> Tensor:
        """`value` summed over every process (itself when running alone)."""
        ...


class _Alone:
    world = 1

    def global_sum(self, value: Tensor) -> Tensor:
        return value


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


class MeanPrediction(nn.Module):
    """A reported net made of several: the log of their mean softmax (so its softmax is that
    mean). Evaluation that also runs the members reuses their logits (`combine`)."""

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(nets)

    def forward(self, x: Tensor) -> Tensor:
        return self.combine([net(x) for net in self.members])

    @staticmethod
    def combine(logits: Sequence[Tensor]) -> Tensor:
        probs = torch.stack([F.softmax(out.float(), dim=1) for out in logits])
        return probs.mean(0).clamp_min(1e-12).log()


class Method(Reporting, nn.Module):
    """Base class. Subclasses set `Settings`, fill `self.nets` in `setup` and implement
    `training_step`."""

    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    """This method's settings class (`--set method.<key>=...`)."""
    reported_net: ClassVar[str] = "net"
    """The key of the net whose test accuracy is *the* result of a run."""
    progress_figures: ClassVar[tuple[str, ...]] = ("loss",)
    """Step figures the CPU progress bar shows."""
    packable: ClassVar[bool] = False
    """Whether runs of this method can train packed (`engine/pack.py`): its `training_step` is
    a function of its tensors alone (no random draws, no Python branch on a tensor's value, no
    data-dependent shapes) and it keeps no averaged nets. Checked by tests/test_pack.py."""
    paper_numbers: ClassVar[Mapping[str, float]] = {}
    """The ACT paper's number for this method, by preset (Tables 1-3), for the report."""

    def __init__(
        self,
        settings: MethodSettings,
        *,
        num_classes: int,
        observed_labels: Tensor,
        make_model: Callable[[], nn.Module],
        epochs: int = 0,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__()
        self.settings = settings
        # The run's schedule (train.epochs, train.warmup_epochs; 0 where unknown, as in unit
        # tests), for rules whose own schedules are fractions of it.
        self.run_epochs, self.run_warmup_epochs = epochs, warmup_epochs
        self.num_classes = num_classes
        self.num_samples = len(observed_labels)
        self.nets = nn.ModuleDict()
        self.averages = nn.ModuleDict()  # EMA copies of nets: evaluated and saved, not trained
        self.average_of: dict[str, tuple[str, float]] = {}
        # The callables training_step uses; the engine may wrap them (DDP, compile) without the
        # wrappers leaking into state_dict() keys.
        self.fwd: dict[str, nn.Module] = {}
        self.dist: Processes = _Alone()
        self.epoch = 0
        self.warmup = False
        self.setup(make_model, observed_labels.long())

    @classmethod
    def unpackable_reason(cls, settings: MethodSettings) -> str | None:
        """Why runs with these settings cannot train packed although the method is `packable`
        (a setting that makes a per-run decision outside the tensors), or None."""
        return None

    def setup(self, make_model: Callable[[], nn.Module], observed_labels: Tensor) -> None:
        """Build the nets (with `add_net`) and register per-sample state buffers."""
        raise NotImplementedError

    def add_net(self, name: str, net: nn.Module) -> None:
        self.nets[name] = net
        self.fwd[name] = Views(net)

    def add_average(self, name: str, of: str, decay: float) -> None:
        """Keep `name`, an exponential moving average of net `of` (a mean teacher): after each
        optimizer step its parameters become `decay * average + (1 - decay) * net`, and its
        buffers (BatchNorm statistics) copy the net's. It starts equal to the net."""
        average = copy.deepcopy(self.nets[of]).requires_grad_(False)
        self.averages[name] = average
        self.average_of[name] = (of, decay)

    @torch.no_grad()
    def after_step(self) -> None:
        """Called by the engine after every optimizer step: updates the averages."""
        for name, (of, decay) in self.average_of.items():
            net, average = self.nets[of], self.averages[name]
            for mean, value in zip(average.parameters(), net.parameters(), strict=True):
                mean.lerp_(value.detach(), 1.0 - decay)
            for mean, value in zip(average.buffers(), net.buffers(), strict=True):
                mean.copy_(value)

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        """One optimizer group per net: its parameters, its name (`net`) and the LR plan it
        follows (`lr_plan`); by default every net follows the run's `optim` plan. A method may
        add groups of its own parameters (named by `net`), with their own plan and optimizer
        options (`momentum`, `weight_decay`)."""
        plan = LRPlan(optim.lr, optim.warmup_lr, optim.lr_decay)
        return [
            {"params": list(net.parameters()), "net": name, "lr_plan": plan}
            for name, net in self.nets.items()
        ]

    def set_phase(self, epoch: int, *, warmup: bool) -> None:
        """Which epoch runs; alone (without `on_epoch_start`'s resets) when a run resumes in the
        middle of an epoch."""
        self.epoch = epoch
        self.warmup = warmup

    def on_epoch_start(self, epoch: int, *, warmup: bool) -> None:
        self.set_phase(epoch, warmup=warmup)

    def per_sample_state(self) -> list[Tensor]:
        """The method's own buffers and parameters with one row per training sample (not the
        nets')."""
        own = [*self.buffers(recurse=False), *self.parameters(recurse=False)]
        return [t for t in own if t.dim() > 0 and t.shape[0] == self.num_samples]

    def train_views(self) -> tuple[str, ...]:
        """The views each training batch carries (`Batch.views`), named from
        `batch.VIEW_NAMES`; the first is always `weak`. May change with the phase."""
        return ("weak",)

    def training_pass_nets(self) -> tuple[str, ...]:
        """Nets whose logits over the whole un-augmented training set (eval mode) the method
        wants before this epoch's first step; asked after `on_epoch_start`, answered through
        `on_training_pass`. Every process computes the whole pass, so a rule computed from it
        is the same on every rank."""
        return ()

    def on_training_pass(self, logits: dict[str, Tensor]) -> None:
        """(N, K) float32 logits of each net of `training_pass_nets`, in sample order."""

    def clean_scores(self) -> Tensor | None:
        """(N,) float in [0, 1]: the method's own judgement that each given label is correct,
        for label_issues.csv's `label_score` (a score below 0.5 marks a label issue); None to
        rank by the reported net's probability of the given label and the selection history."""
        return None

    def label_trust(self) -> dict | None:
        """How far to trust label_issues.csv (`level`: "usual" or "low", and a `message`
        for the console, summary.json and the suspects' page), or None for no statement."""
        return None

    def clean_cut(self) -> float:
        """The `clean_scores` value below which a label counts as an issue: 0.5 unless the
        method's own rule draws the line elsewhere."""
        return 0.5

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Return a dict with the scalar "loss" to backpropagate and other figures to log.

        Values must stay device tensors (no `.item()`), so an epoch runs without host syncs.
        An `empty_selection` figure (1.0 for a batch that selected nothing) is counted per
        epoch in the `empty_selection_batches` column.
        """
        raise NotImplementedError

    def eval_nets(self) -> dict[str, nn.Module]:
        """Nets to evaluate on the test set: every net and average, the reported one first."""
        every = {**self.nets, **self.averages}
        return {self.reported_net: every[self.reported_net], **every}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.eval_nets()[self.reported_net](x)

    def select_counts(self) -> Tensor | None:
        """(N,) int: in how many epochs so far each sample counted as clean (warmup included),
        or None if the method does not select. Selecting methods keep it in `select_count`."""
        return getattr(self, "select_count", None)

    def warmup_epochs_run(self, scheduled: int) -> int:
        """How many epochs were warmup epochs of the `scheduled` (`train.warmup_epochs`, capped
        at the epochs trained): the schedule's, unless the method extended its warmup."""
        return scheduled

    def selected(self) -> Tensor | None:
        """(N,) bool: the samples this epoch treated as clean, or None if it does not select.
        Selecting methods keep it in an `is_selected` buffer."""
        return getattr(self, "is_selected", None)

    def judgements(self) -> dict[str, Tensor]:
        """(N,) bool masks the engine scores against the clean mask each epoch (precision,
        recall; the method never sees the truth): `selected` for the metrics' `sel_*`
        columns, and any other mask a method wants scored (`EpochResults.scores`)."""
        selected = self.selected()
        return {} if selected is None else {"selected": selected}

    def per_sample_ce(self, logits: Tensor, target: Tensor) -> Tensor:
        """(B,) cross-entropy in float32 (logits may be bf16 under autocast), with the run's
        label smoothing."""
        return F.cross_entropy(
            logits.float(), target, reduction="none", label_smoothing=self.settings.label_smoothing
        )


def zero_touch(logits: Tensor) -> Tensor:
    """A zero loss that still depends on `logits`, so every parameter receives a (zero)
    gradient: an empty selection must not leave parameters unused (DDP requires all of them)."""
    return logits.sum() * 0.0
