"""How long a run will take, measured before it trains, and the epochs a time budget allows.

Before the first epoch a run times a few real training steps of each phase (warmup, then the
method's main phase, which may cost several times more) and a few evaluation batches, on
throwaway copies of its nets and loaders. The random-number generators are restored afterwards,
so a run trains bit for bit as it would without the measurement. From these times come the
plan line with its ETA, the whole run's ETA shown after every epoch, and, with `train.budget`,
the number of epochs (`fit_budget`).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
from torch import nn

from asymco.config import RunConfig
from asymco.data.pipeline import Pipeline
from asymco.durations import format_duration, parse_duration
from asymco.engine.distributed import Dist
from asymco.engine.evaluate import batch_logits, forward_passes
from asymco.engine.loop import train_step, training_pass
from asymco.engine.precision import Execution
from asymco.errors import UserError
from asymco.lr_plan import MAX_EPOCH, rescale_decay
from asymco.methods.base import Method

logger = logging.getLogger(__name__)

TIMED_STEPS = 2
"""Steps timed at least per phase, after one untimed step (lazy initialisation, caches,
compilation)."""
TIMED_MAX_STEPS = 10
TIMED_SECONDS = 1.0
"""More steps are timed, up to `TIMED_MAX_STEPS`, until a phase has taken this long: one short
step's time varies by half from step to step, so two of them misplanned budgets by a quarter."""
TIMED_EVAL_BATCHES = 3
"""Test batches timed after the first one, which is timed on its own: its extra cost (a file
loader's workers starting, lazy initialisation) is paid once per pass, not once per batch."""


@dataclass(frozen=True)
class StepTimes:
    """Seconds per training step of each phase, and per epoch outside the steps."""

    warmup_step: float
    main_step: float
    epoch_extra: float
    """Evaluation on the test set (and a method's pass over the training set) per epoch."""
    final_extra: float
    """The end of the run: predictions over the training set for label_issues.csv."""
    steps: int
    """Steps per epoch."""

    def epoch_seconds(self, warmup: bool) -> float:
        step = self.warmup_step if warmup else self.main_step
        return self.steps * step + self.epoch_extra

    def run_seconds(self, epochs: int, warmup_epochs: int, first_epoch: int = 0) -> float:
        """Seconds from the start of `first_epoch` to the end of the run."""
        warm = max(0, min(warmup_epochs, epochs) - first_epoch)
        main = max(0, epochs - max(warmup_epochs, first_epoch))
        return warm * self.epoch_seconds(True) + main * self.epoch_seconds(False) + self.final_extra


@contextmanager
def rng_untouched(device: torch.device) -> Iterator[None]:
    """Run the body without moving any global random generator (python, numpy, torch)."""
    py, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    random.setstate(py)
    np.random.set_state(numpy_state)


def measure_steps(
    build: Callable[[], tuple[Method, torch.optim.Optimizer, Pipeline]],
    exe: Execution,
    dist: Dist,
    *,
    epochs: int,
    warmup_epochs: int,
    eval_batches: tuple[int, int],
) -> StepTimes:
    """Time the phases on what `build` makes (fresh nets, optimizer, loaders). `eval_batches`:
    the number of evaluation batches of one pass over the test set and the training set."""
    with rng_untouched(exe.device):
        method, optimizer, pipe = build()
        scaler = exe.make_scaler()
        steps = len(pipe.loader)
        # The main phase first, on nets that have trained nothing: a method that decides at an
        # epoch's start, from the finished epoch's figures, whether to run its main phase yet
        # has no figures then and runs it, as the plan assumes (timed after a few warmup steps
        # it may choose to stay in warmup, and the main phase would be timed as warmup).
        phases = [(warmup_epochs, False)] if warmup_epochs < epochs else []
        phases += [(0, True)] if warmup_epochs > 0 else []
        per_step = {
            # Processes step together (each step syncs gradients): under torchrun each times
            # the same fixed number of steps, since their clocks would stop at different steps.
            warm: _time_phase(
                method, optimizer, scaler, pipe, exe, epoch, warm, adaptive=not dist.enabled
            )
            for epoch, warm in phases
        }
        nets = method.eval_nets()
        per_net, startup, pass_seconds = _time_evaluation(method, nets, pipe, exe, eval_batches[1])
        evaluated, reported = forward_passes(nets), forward_passes(
            {method.reported_net: nets[method.reported_net]}
        )
        del method, optimizer, pipe, scaler
    gc.collect()
    if exe.device.type == "cuda":
        torch.cuda.empty_cache()
    figures = torch.tensor(
        [per_step.get(True, 0.0), per_step.get(False, 0.0), per_net, startup, pass_seconds],
        dtype=torch.float64,
    )
    if dist.enabled:  # every process must choose the same epochs: the mean of their times
        figures = dist.global_sum(figures.to(exe.device)).cpu() / dist.world
    warm, main, per_net, startup, pass_seconds = figures.tolist()
    test, train = eval_batches
    return StepTimes(
        warmup_step=warm or main,
        main_step=main or warm,
        epoch_extra=startup + per_net * evaluated * test + pass_seconds,
        final_extra=startup + per_net * reported * train,  # the reported net alone
        steps=steps,
    )


def _time_phase(
    method: Method,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    pipe: Pipeline,
    exe: Execution,
    epoch: int,
    warmup: bool,
    *,
    adaptive: bool = True,
) -> float:
    """Seconds per step of `epoch` (after one untimed step), its data loading included."""
    method.train()
    method.on_epoch_start(epoch, warmup=warmup)
    if method.training_pass_nets():
        training_pass(method, pipe.train_eval, exe)
    batches = _steps_from(pipe, method, epoch)
    first = next(batches, None)
    if first is None:
        return 0.0
    train_step(method, optimizer, scaler, exe, first)
    _synchronize(exe)
    began, timed = time.perf_counter(), 0
    for batch in batches:
        train_step(method, optimizer, scaler, exe, batch)
        timed += 1
        enough = not adaptive or time.perf_counter() - began >= TIMED_SECONDS
        if timed >= TIMED_MAX_STEPS or (timed >= TIMED_STEPS and enough):
            break
    _synchronize(exe)
    return (time.perf_counter() - began) / timed if timed else 0.0


def _steps_from(pipe: Pipeline, method: Method, epoch: int) -> Iterator:
    """The batches of `epoch`, then of the epochs after it: a data set of one batch an epoch
    has its steps timed too (timed within one epoch, they were never timed: 0 s a step, and a
    40 s budget planned 455 epochs that took 4 minutes)."""
    while True:
        empty = True
        for batch in pipe.loader.epoch(epoch, views=method.train_views()):
            empty = False
            yield batch
        if empty:
            return
        epoch += 1


def _time_evaluation(
    method: Method,
    nets: dict[str, nn.Module],
    pipe: Pipeline,
    exe: Execution,
    train_batches: int,
) -> tuple[float, float, float]:
    """(seconds per test batch and net run of `nets` (the method's `eval_nets`), the extra
    seconds of a pass's first batch, seconds of the method's pass over the training set per
    epoch, 0 without one)."""
    with exe.evaluation():
        for net in nets.values():
            net.eval()
        # Loading counts: a file loader starts its workers on every pass.
        ends = [time.perf_counter()]
        with torch.no_grad():
            for images, _ in islice(pipe.test(), 1 + TIMED_EVAL_BATCHES):
                batch_logits(nets, images)  # as the epoch's evaluation runs them
                _synchronize(exe)
                ends.append(time.perf_counter())
    first, *rest = np.diff(ends).tolist() or [0.0]
    per_batch = sum(rest) / len(rest) if rest else first
    startup = first - per_batch if first > per_batch else 0.0
    per_net = per_batch / max(1, forward_passes(nets))
    passes = len(method.training_pass_nets())
    return per_net, startup, (startup + per_net * train_batches) * passes


def _synchronize(exe: Execution) -> None:
    if exe.device.type == "cuda":
        torch.cuda.synchronize(exe.device)


def remaining_seconds(
    times: StepTimes, history: list[dict], epochs: int, warmup_epochs: int
) -> float:
    """Seconds left after the epochs in `history`: each phase at the mean of its finished
    epochs where there are some, else at the measured estimate."""
    done = len(history)
    left = 0.0
    for warm in (True, False):
        seen = [
            row["epoch_seconds"] + row.get("eval_seconds", 0.0)
            for row in history
            if (row["epoch"] < warmup_epochs) == warm
        ]
        per_epoch = sum(seen) / len(seen) if seen else times.epoch_seconds(warm)
        todo = range(done, epochs)
        left += per_epoch * sum((e < warmup_epochs) == warm for e in todo)
    return left + times.final_extra


def fit_budget(cfg: RunConfig, times: StepTimes, spent: float) -> RunConfig:
    """`cfg` with the epochs its `train.budget` allows, `spent` seconds already gone; the warmup
    share and the LR plan's shape are kept."""
    t = cfg.train
    budget = parse_duration(t.budget)
    share = t.warmup_epochs / t.epochs
    mean_epoch = share * times.epoch_seconds(True) + (1 - share) * times.epoch_seconds(False)
    left = budget - spent - times.final_extra
    epochs = int(left // mean_epoch) if mean_epoch > 0 else t.epochs
    least = 2 if t.warmup_epochs else 1
    if epochs < least:
        need = spent + times.final_extra + least * mean_epoch
        raise UserError(
            f"train.budget={t.budget} is too short: {least} epoch(s) take about "
            f"{format_duration(need)} here, setup included; give at least that, or train on "
            "fewer images (data.subset)"
        )
    if not t.budget_fill:
        epochs = min(epochs, t.epochs)
    epochs = min(epochs, MAX_EPOCH)  # a tiny set under a long budget: the plan's own limit
    warmup = min(max(1, round(epochs * share)), epochs - 1) if t.warmup_epochs else 0
    decay = rescale_decay(cfg.optim.lr_decay, epochs=t.epochs, new_epochs=epochs)
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(t, epochs=epochs, warmup_epochs=warmup),
        optim=dataclasses.replace(cfg.optim, lr_decay=decay),
    )


def describe_plan(cfg: RunConfig, times: StepTimes, *, first_epoch: int, chosen: bool) -> str:
    """The plan line a run prints before it trains: its epochs, step times and ETA."""
    t = cfg.train
    why = f" to fit train.budget={t.budget}" if chosen else ""
    seconds = times.run_seconds(t.epochs, t.warmup_epochs, first_epoch)
    finish = time.strftime("%H:%M", time.localtime(time.time() + seconds))
    steps = f"{times.steps} steps/epoch at {times.warmup_step:.3g}s"
    if 0 < t.warmup_epochs < t.epochs:
        steps += f" (warmup), {times.main_step:.3g}s (after warmup)"
    start = f", from epoch {first_epoch + 1}" if first_epoch else ""
    return (
        f"plan: {t.epochs} epochs ({t.warmup_epochs} warmup){why}{start} | {steps}, "
        f"{times.epoch_extra:.3g}s evaluation per epoch | ETA {format_duration(seconds)} "
        f"(about {finish})"
    )
