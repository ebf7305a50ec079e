"""The training loop: one function that reads top to bottom.

Per epoch: set each net's LR from its plan, run the batches (training_step -> backward -> step),
evaluate every net the method names on the test set, score the method's judgements against the
clean mask, let the method make its metrics row, and hand the new `Position` to `save`
(checkpoint, metrics.jsonl). With `checkpoint_steps`, `save` also gets a mid-epoch position every
that many steps.

Under torchrun every rank runs this loop on its share of each batch; per-sample state and the
epoch's figures are combined over ranks before anything is scored or saved.

SIGTERM stops the run at the next step boundary with a checkpoint, so a preempted run loses
nothing; `PreemptedError` tells the caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from asymco.batch import Batch, EvalBatches
from asymco.durations import format_duration
from asymco.engine.checkpoint import Position
from asymco.engine.distributed import Dist, sync_rows
from asymco.engine.evaluate import accuracies, logits, score_judgement
from asymco.engine.precision import Execution
from asymco.engine.stop import StopSignal
from asymco.errors import PreemptedError, UserError
from asymco.methods.base import EpochResults, Method

logger = logging.getLogger(__name__)
NO_BAD_STEP = 2**62
ALONE = Dist()


class StepPlan(Protocol):
    def batches(self, epoch: int) -> list[Tensor]:
        """This process's sample indices of each step of `epoch`."""
        ...


class TrainLoader(Protocol):
    """What the loop needs of a training loader (`data/pipeline.py` chooses and builds it)."""

    plan: StepPlan

    @property
    def num_samples(self) -> int: ...

    def __len__(self) -> int:
        """Steps per epoch."""
        ...

    def epoch(self, epoch: int, *, views: tuple[str, ...], start_step: int = 0) -> Iterator[Batch]:
        """This process's batches of `epoch` with `views`, from step `start_step` on."""
        ...


def train_epochs(
    method: Method,
    optimizer: torch.optim.Optimizer,
    loader: TrainLoader,
    test: EvalBatches,
    *,
    train_eval: EvalBatches,
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
    eta: Callable[[list[dict]], float] | None = None,
) -> list[dict]:
    """Train from `start` to the end of epoch `epochs`; returns the full per-epoch history.
    `plans` holds each net's (optimizer group's) learning rate per epoch; `train_eval` is the
    un-augmented training set, for methods that look at it before an epoch; `eta` gives the
    seconds the run has left after the epochs of a history (shown after each epoch)."""
    scaler = exe.make_scaler()
    history, first_epoch = start.history, start.epoch  # history grows, first_epoch stays
    with StopSignal() as stop:
        for epoch in range(first_epoch, epochs):
            warmup = epoch < warmup_epochs
            for group in optimizer.param_groups:
                group["lr"] = plans[group["net"]][epoch]
            resumed = start if epoch == first_epoch and start.step > 0 else Position(history)
            method.train()
            if resumed.step:  # the epoch's resets already happened before the checkpoint
                method.set_phase(epoch, warmup=warmup)
            else:
                method.on_epoch_start(epoch, warmup=warmup)
                training_pass(method, train_eval, exe)
            began = time.perf_counter()
            epoch_run = EpochRun(method, optimizer, scaler, loader, exe, dist, epoch, resumed)
            epoch_run.note = _run_left(eta, history)
            sums, visits = epoch_run.run(epochs, progress, checkpoint_steps, save, stop)
            seconds = time.perf_counter() - began
            row = dist.on_main(
                partial(epoch_row, method, sums, test, is_clean, optimizer, exe, epoch)
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
                _log_epoch(method, history, epochs, _run_left(eta, history))
            save(Position(history))
            if epoch + 1 < epochs and stop.agreed(dist, 0, exe.device):
                raise PreemptedError(epoch + 1, 0)
    return history


def _log_epoch(method: Method, history: list[dict], epochs: int, left: str) -> None:
    """The epoch's console line, then any warning its row is the first to call for."""
    logger.info(method.describe(history[-1], epochs) + (f" | {left}" if left else ""))
    for message in method.new_warnings(history):
        logger.warning("warning: %s", message)


def _run_left(eta: Callable[[list[dict]], float] | None, history: list[dict]) -> str:
    return "" if eta is None else f"run left ~{format_duration(eta(history))}"


def training_pass(method: Method, train_eval: EvalBatches, exe: Execution) -> None:
    """Hand the method the logits it asked for over the un-augmented training set."""
    names = method.training_pass_nets()
    if names:
        with exe.evaluation():
            nets = method.eval_nets()
            method.on_training_pass({name: logits(nets[name], train_eval) for name in names})


def train_step(
    method: Method,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    exe: Execution,
    batch: Batch,
) -> dict[str, Tensor]:
    """One optimisation step on `batch`; returns the method's step figures."""
    with exe.autocast():
        out = method.training_step(batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    method.after_step()
    return out


def run_epoch(
    method: Method,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loader: TrainLoader,
    exe: Execution,
    epoch: int,
) -> dict[str, Tensor]:
    """One whole pass in this process, without checkpoints or progress bar (benchmarks);
    returns the sums of the step figures."""
    run = EpochRun(method, optimizer, scaler, loader, exe, ALONE, epoch, Position([]))
    return run.run(epoch + 1, False, 0, lambda position: None, StopSignal())[0]


class EpochRun:
    """One pass over the training set, possibly resumed at `start.step`. Figures stay device
    tensors until the epoch ends, so a GPU never waits for the host; only on a CPU (where
    reading is free) the progress bar shows them."""

    def __init__(
        self,
        method: Method,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        loader: TrainLoader,
        exe: Execution,
        dist: Dist,
        epoch: int,
        start: Position,
    ) -> None:
        self.method, self.optimizer, self.scaler = method, optimizer, scaler
        self.loader, self.exe, self.dist, self.epoch = loader, exe, dist, epoch
        self.start = start
        self.note = ""
        """Appended to the progress bar's description (the whole run's ETA)."""
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
            self.loader.epoch(self.epoch, views=method.train_views(), start_step=self.start.step),
            total=len(self.loader),
            initial=self.start.step,
            desc=f"epoch {self.epoch + 1}/{epochs}" + (f" ({self.note})" if self.note else ""),
            leave=False,
            disable=not (progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        show = progress and exe.device.type == "cpu"
        refresh = max(1, len(self.loader) // 10)
        for step, batch in enumerate(batches, start=self.start.step):
            out = train_step(method, self.optimizer, self.scaler, exe, batch)
            self.record(step, batch.index, out)
            if show and step % refresh == 0:
                keys = method.progress_figures
                batches.set_postfix({k: f"{v.item():.3g}" for k, v in out.items() if k in keys})
            done = step + 1
            if done < len(self.loader):  # the epoch's end has its own checkpoint, in `fit`
                self._between_steps(done, checkpoint_steps, save, stop)
        visits = self.agree()
        sums = dict(self.sums)
        if self.dist.enabled:  # each figure: the mean over every rank's batches
            keys = sorted(sums)
            totals = self.dist.global_sum(torch.stack([torch.as_tensor(sums[k]) for k in keys]))
            sums = dict(zip(keys, totals, strict=True))
        if visits != (1, 1):
            raise RuntimeError(f"epoch {self.epoch} visited samples {visits} times (min, max)")
        return sums, visits

    def record(self, step: int, index: Tensor, out: dict[str, Tensor]) -> None:
        """Count a finished step: its samples' visits, a non-finite loss, its figures."""
        self.visits[index] += 1
        bad_now = ~torch.isfinite(out["loss"].detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad_now, torch.full_like(self.first_bad, step), self.first_bad)
        for key, value in out.items():
            self.sums[key] = self.sums.get(key, 0) + value.detach().float()
        self.sums["batches"] = self.sums.get("batches", 0) + 1

    def _between_steps(
        self, done: int, checkpoint_steps: int, save: Callable[[Position], None], stop: StopSignal
    ) -> None:
        """A mid-epoch checkpoint when one is due, or when the run is asked to stop."""
        stopping = stop.agreed(self.dist, done, self.exe.device)
        if stopping or (checkpoint_steps and done % checkpoint_steps == 0):
            self.agree()
            save(Position(self.start.history, done, dict(self.sums)))
        if stopping:
            raise PreemptedError(self.epoch, done)

    def agree(self) -> tuple[int, int]:
        """Stop on a non-finite loss (before anything is saved), then make the per-sample state
        identical on every rank. Returns the fewest and most visits of any sample so far over
        all ranks (one device read per epoch or checkpoint)."""
        global_visits = self.dist.global_sum(self.visits)
        bad = self.dist.global_min(torch.where(self.first_bad < 0, NO_BAD_STEP, self.first_bad))
        bad, fewest, most = torch.stack([bad, global_visits.min(), global_visits.max()]).tolist()
        if bad != NO_BAD_STEP:
            raise UserError(
                f"the training loss became non-finite at epoch {self.epoch + 1}, batch {bad + 1}; "
                "lower the learning rate or use train.precision=fp32 (the last good checkpoint "
                "is kept)"
            )
        sync_rows(self.method.per_sample_state(), self.visits > 0, global_visits > 0, self.dist)
        return fewest, most


def epoch_row(
    method: Method,
    sums: dict[str, Tensor],
    test: EvalBatches,
    is_clean: Tensor | None,
    optimizer: torch.optim.Optimizer,
    exe: Execution,
    epoch: int,
) -> dict:
    """The method's metrics row for the epoch, from what the engine measured."""
    figures = {key: float(value) for key, value in sums.items()}  # one sync per figure
    batches = figures.pop("batches")
    with exe.evaluation():
        accs = accuracies(method.eval_nets(), test)
    judgements = method.judgements().items()
    results = EpochResults(
        epoch=epoch,
        sums=figures,
        batches=int(batches),
        lrs={group["net"]: group["lr"] for group in optimizer.param_groups},
        test_acc=accs,
        scores={name: score_judgement(mask, is_clean) for name, mask in judgements},
        truth_known=is_clean is not None,
    )
    return method.epoch_row(results)
