"""The training loop: one function that reads top to bottom.

Per epoch: set each parameter group's LR from its plan, run the batches (training_step ->
backward -> step), evaluate every net on the test set, score the selection against the clean
mask, append one metrics row, and hand the new `Position` to `save` (checkpoint, metrics.jsonl).
With `checkpoint_steps`, `save` also gets a mid-epoch position every that many steps.

Under torchrun every rank runs this loop on its share of each batch; per-sample state and the
epoch's figures are combined over ranks before anything is scored or saved.

SIGTERM (what schedulers send before preempting a job) stops the run at the next step boundary
with a checkpoint, so a preempted run loses nothing; `PreemptedError` tells the caller.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor
from tqdm import tqdm

from asymco.data.folders import FolderLoader
from asymco.data.loader import ArrayLoader
from asymco.data.pil_loader import PilLoader
from asymco.engine.distributed import Dist, sync_rows
from asymco.engine.evaluate import Batches, accuracy, selection_scores
from asymco.engine.precision import Execution
from asymco.errors import PreemptedError, UserError
from asymco.methods.base import Method

logger = logging.getLogger(__name__)
Loader = ArrayLoader | PilLoader | FolderLoader
NO_BAD_STEP = 2**62
ALONE = Dist()
STOP_CHECK_STEPS = 10
"""With several processes, how often they agree on whether to stop (one tiny all-reduce)."""


class StopSignal:
    """Records SIGTERM while installed (main thread only) instead of dying on it."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _record(self, signum: int, frame: object) -> None:
        self.requested = True

    def agreed(self, dist: Dist, step: int, device: torch.device) -> bool:
        """Whether every rank stops now: any rank's request counts, checked by all ranks at the
        same steps (every step when running alone, where the check is free)."""
        if not dist.enabled:
            return self.requested
        if step % STOP_CHECK_STEPS:
            return False
        flag = torch.tensor(float(self.requested), device=device)
        return bool(dist.global_sum(flag) > 0)


@dataclass
class Position:
    """Where training stands: the finished epochs' metrics rows and, inside the next epoch, the
    steps already done with the sums of their figures (a mid-epoch checkpoint)."""

    history: list[dict]
    step: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return len(self.history)


def fit(
    method: Method,
    optimizer: torch.optim.Optimizer,
    loader: Loader,
    test: Batches,
    *,
    exe: Execution,
    plans: dict[str, list[float]],
    epochs: int,
    warmup_epochs: int,
    is_clean: Tensor | None,
    start: Position,
    save: Callable[[Position], None],
    checkpoint_steps: int = 0,
    dist: Dist = ALONE,
    progress: bool = True,
) -> list[dict]:
    """Train from `start` to the end of epoch `epochs`; returns the full per-epoch history."""
    scaler = exe.make_scaler()
    history, first_epoch = start.history, start.epoch  # history grows, first_epoch stays
    with StopSignal() as stop:
        for epoch in range(first_epoch, epochs):
            warmup = epoch < warmup_epochs
            for group in optimizer.param_groups:
                group["lr"] = plans[group["plan"]][epoch]
            method.train()
            resumed = start if epoch == first_epoch and start.step > 0 else Position(history)
            if resumed.step:  # the epoch's resets already happened before the checkpoint
                method.set_phase(epoch, warmup=warmup)
            else:
                method.on_epoch_start(epoch, warmup=warmup)
            began = time.perf_counter()
            epoch_run = _Epoch(method, optimizer, scaler, loader, exe, dist, epoch, resumed)
            sums, visits = epoch_run.run(epochs, progress, checkpoint_steps, save, stop)
            seconds = time.perf_counter() - began
            row = dist.on_main(
                partial(_epoch_row, method, sums, test, is_clean, optimizer, exe, epoch)
            )
            row.update(
                epoch_seconds=round(seconds, 3),
                images_per_second=round(loader.num_samples / max(seconds, 1e-9), 1),
                eval_seconds=round(time.perf_counter() - began - seconds, 3),
                visits_min=visits[0],
                visits_max=visits[1],
            )
            history.append(row)
            if dist.is_main:
                logger.info(_describe(row, epochs))
            save(Position(history))
            if epoch + 1 < epochs and stop.agreed(dist, 0, exe.device):
                raise PreemptedError(epoch + 1, 0)
    return history


def run_epoch(
    method: Method,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loader: Loader,
    exe: Execution,
    epoch: int,
) -> dict[str, Tensor]:
    """One whole pass in this process, without checkpoints or progress bar (benchmarks);
    returns the sums of the step figures."""
    run = _Epoch(method, optimizer, scaler, loader, exe, ALONE, epoch, Position([]))
    return run.run(epoch + 1, False, 0, lambda position: None, StopSignal())[0]


class _Epoch:
    """One pass over the training set, possibly resumed at `start.step`. Figures stay device
    tensors until the epoch ends, so a GPU never waits for the host; only on a CPU (where
    reading is free) the progress bar shows them."""

    def __init__(
        self,
        method: Method,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        loader: Loader,
        exe: Execution,
        dist: Dist,
        epoch: int,
        start: Position,
    ) -> None:
        self.method, self.optimizer, self.scaler = method, optimizer, scaler
        self.loader, self.exe, self.dist, self.epoch = loader, exe, dist, epoch
        self.start = start
        self.sums = {k: torch.as_tensor(v).to(exe.device) for k, v in start.sums.items()}
        self.first_bad = torch.full((), -1, dtype=torch.long, device=exe.device)
        # How often this rank trained on each sample this epoch: the rows it owns.
        self.visits = torch.zeros(loader.num_samples, dtype=torch.int32, device=exe.device)
        for index in loader.plan.batches(epoch)[: start.step]:
            self.visits[index.to(exe.device)] += 1

    def run(
        self,
        epochs: int,
        progress: bool,
        checkpoint_steps: int,
        save: Callable[[Position], None],
        stop: StopSignal,
    ) -> tuple[dict[str, Tensor], tuple[int, int]]:
        method, exe = self.method, self.exe
        batches = tqdm(
            self.loader.epoch(
                self.epoch, strong=method.needs_strong_view(), start_step=self.start.step
            ),
            total=len(self.loader),
            initial=self.start.step,
            desc=f"epoch {self.epoch + 1}/{epochs}",
            leave=False,
            disable=not (progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        show = progress and exe.device.type == "cpu"
        refresh = max(1, len(self.loader) // 10)
        for step, batch in enumerate(batches, start=self.start.step):
            with exe.autocast():
                out = method.training_step(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out["loss"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.visits[batch.index] += 1
            bad_now = ~torch.isfinite(out["loss"].detach()) & (self.first_bad < 0)
            self.first_bad = torch.where(
                bad_now, torch.full_like(self.first_bad, step), self.first_bad
            )
            for key, value in out.items():
                self.sums[key] = self.sums.get(key, 0) + value.detach().float()
            self.sums["batches"] = self.sums.get("batches", 0) + 1
            if show and step % refresh == 0:
                keys = ("loss", "train_acc_rtm", "train_acc", "selected_share")
                batches.set_postfix({k: f"{v.item():.3g}" for k, v in out.items() if k in keys})
            done = step + 1
            if done < len(self.loader):  # the epoch's end has its own checkpoint, in `fit`
                self._between_steps(done, checkpoint_steps, save, stop)
        visits = self._agree()
        sums = dict(self.sums)
        if self.dist.enabled:  # each figure: the mean over every rank's batches
            keys = sorted(sums)
            totals = self.dist.global_sum(torch.stack([torch.as_tensor(sums[k]) for k in keys]))
            sums = dict(zip(keys, totals, strict=True))
        if visits != (1, 1):
            raise RuntimeError(f"epoch {self.epoch} visited samples {visits} times (min, max)")
        return sums, visits

    def _between_steps(
        self, done: int, checkpoint_steps: int, save: Callable[[Position], None], stop: StopSignal
    ) -> None:
        """A mid-epoch checkpoint when one is due, or when the run is asked to stop."""
        stopping = stop.agreed(self.dist, done, self.exe.device)
        if stopping or (checkpoint_steps and done % checkpoint_steps == 0):
            self._agree()
            save(Position(self.start.history, done, dict(self.sums)))
        if stopping:
            raise PreemptedError(self.epoch, done)

    def _agree(self) -> tuple[int, int]:
        """Stop on a non-finite loss (before anything is saved), then make the per-sample state
        identical on every rank. Returns the fewest and most visits of any sample so far over
        all ranks (one device read per epoch or checkpoint)."""
        global_visits = self.dist.global_sum(self.visits)
        bad = self.dist.global_min(torch.where(self.first_bad < 0, NO_BAD_STEP, self.first_bad))
        bad, fewest, most = torch.stack([bad, global_visits.min(), global_visits.max()]).tolist()
        if bad != NO_BAD_STEP:
            raise UserError(
                f"the training loss became non-finite at epoch {self.epoch}, batch {bad}; "
                "lower the learning rate or use train.precision=fp32 (the last good checkpoint "
                "is kept)"
            )
        sync_rows(self.method.per_sample_buffers(), self.visits > 0, global_visits > 0, self.dist)
        return fewest, most


def _epoch_row(
    method: Method,
    sums: dict[str, Tensor],
    test: Batches,
    is_clean: Tensor | None,
    optimizer: torch.optim.Optimizer,
    exe: Execution,
    epoch: int,
) -> dict:
    sums = dict(sums)
    warmup = method.warmup
    batches = float(sums.pop("batches"))
    means = {k: round(float(v) / batches, 6) for k, v in sums.items()}  # one sync per figure
    lrs = {g["net"]: g["lr"] for g in optimizer.param_groups}
    with exe.autocast():
        accs = {name: accuracy(net, test) for name, net in method.eval_nets().items()}
    selected = method.selected()
    scores = dict.fromkeys(("precision", "recall", "f1", "fraction"))
    if selected is not None and is_clean is not None:
        scores = selection_scores(selected, is_clean)
    elif selected is not None:  # real noise: the truth is unknown, the share is not
        scores["fraction"] = float(selected.float().mean())
    row = {
        "epoch": epoch,
        "phase": "warmup" if warmup else "robust",
        "lr": lrs[method.reported_net],
        "lr_ntm": lrs.get("ntm"),
        "train_loss": means.pop("loss"),
        "test_acc": accs[method.reported_net],
        "test_acc_ntm": accs.get("ntm"),
        "sel_precision": scores["precision"],
        "sel_recall": scores["recall"],
        "sel_f1": scores["f1"],
        "sel_fraction": scores["fraction"],
        "mining_fraction": means.pop("mining_on", None),
        "empty_selection_batches": (
            round(float(sums["empty_selection"])) if "empty_selection" in sums else None
        ),
    }
    means.pop("empty_selection", None)
    mined = getattr(method, "is_mined", None)
    if mined is not None and is_clean is not None and not warmup:
        mined_scores = selection_scores(mined, is_clean)
        row.update(
            mined_count=int(mined.sum()),
            mined_precision=mined_scores["precision"],
            mined_recall=mined_scores["recall"],
        )
    for name, acc in accs.items():  # a second net that is not an NTM (Co-teaching's net2)
        if name not in (method.reported_net, "ntm"):
            row[f"test_acc_{name}"] = acc
    row.update(means)
    return row


def _describe(row: dict, epochs: int) -> str:
    parts = [
        f"epoch {row['epoch'] + 1}/{epochs} {row['phase']}",
        f"lr {row['lr']:.3g}",
        f"loss {row['train_loss']:.3f}",
        f"test {row['test_acc']:.2f}%",
    ]
    if row["test_acc_ntm"] is not None:
        parts.append(f"ntm {row['test_acc_ntm']:.2f}%")
    if row["sel_precision"] is not None:
        parts.append(
            f"sel P/R {row['sel_precision']:.3f}/{row['sel_recall']:.3f} "
            f"({100 * row['sel_fraction']:.1f}%)"
        )
    elif row["sel_fraction"] is not None:  # real noise: no truth to score against
        parts.append(f"selected {100 * row['sel_fraction']:.1f}%")
    if row["mining_fraction"] is not None:
        parts.append(f"mining {100 * row['mining_fraction']:.0f}%")
    parts.append(f"{row['epoch_seconds']:.1f}s")
    return " | ".join(parts)
