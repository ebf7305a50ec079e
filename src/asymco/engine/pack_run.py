"""Training a pack of runs (`engine/pack.py`) start to end, member by member where the runs
differ and together where they step.

Each member is set up exactly as `run_training` sets up a plain run (seed, data with its own
noisy labels, method, optimizer, loaders, run directory files, checkpoint on resume), so its
nets start from the same initialisation and its batches, augmentation draws and epoch order are
the plain run's. Per epoch each member runs its own hooks and LR plan; the steps run packed;
then every member is evaluated, scored and saved into its own run directory. A member's
checkpoint is a plain run's checkpoint: a pack resumes as a pack, or any member alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from asymco.config import RunConfig
from asymco.data.pipeline import Pipeline, workers_for
from asymco.data.prepare import NoisyData, describe_data, prepare_data
from asymco.engine.build import build_method, build_optimizer
from asymco.engine.checkpoint import Position
from asymco.engine.loop import ALONE, EpochRun, epoch_row, train_epochs, training_pass
from asymco.engine.pack import PackedModel
from asymco.engine.precision import Execution
from asymco.engine.run import RunFiles, Trained, run_pipeline, set_up_process
from asymco.engine.rundir import RunDir
from asymco.engine.stop import StopSignal
from asymco.errors import PreemptedError, UserError
from asymco.methods.base import Method
from asymco.text import printable

logger = logging.getLogger(__name__)


@dataclass
class Member:
    """One run of a pack: what `run_training` would hold for it."""

    cfg: RunConfig
    run: RunDir
    data: NoisyData
    method: Method
    optimizer: torch.optim.Optimizer
    plans: dict[str, list[float]]
    pipe: Pipeline
    files: RunFiles
    start: Position

    def log(self, message: str) -> None:
        logger.info("[%s] %s", printable(self.run.path), message)


def build_member(run: RunDir, cfg: RunConfig, exe: Execution, *, resume: bool) -> Member:
    """A member set up as `run_training` sets up a plain run, up to where training starts."""
    set_up_process(cfg, ALONE)  # this member's seed: its nets' initialisation
    data = prepare_data(cfg.data, cfg.noise, workers=workers_for(cfg.data))
    method = build_method(cfg, data, exe, ALONE)
    optimizer, plans = build_optimizer(method, cfg)
    pipe = run_pipeline(cfg, data, exe, ALONE)
    files = RunFiles(run, cfg, ALONE, method, optimizer, data)
    start = files.restore() if resume else files.first_files()
    member = Member(cfg, run, data, method, optimizer, plans, pipe, files, start)
    member.log(describe_data(data, cfg.noise))
    return member


def train_members(members: list[Member], exe: Execution, started: float) -> list[Trained]:
    """Train members that stand at the same position together to the end, then write each
    one's label_issues.csv and summary.json."""
    at = {(m.start.epoch, m.start.step) for m in members}
    if len(at) != 1:
        raise RuntimeError(f"a pack's members must stand at one position, not {sorted(at)}")
    if len(members) == 1:  # nothing to batch with: the plain loop, bit for bit a plain run
        histories = [_train_alone(members[0], exe)]
    else:
        histories = _PackLoop(members, exe).run()
    trained = []
    for member, history in zip(members, histories, strict=True):
        summary = member.files.finish(history, exe, member.pipe, started, pack=len(members))
        model = member.method.eval_nets()[member.method.reported_net].eval()
        trained.append(Trained(summary, history, model))
    return trained


def _train_alone(member: Member, exe: Execution) -> list[dict]:
    m, t = member, member.cfg.train
    return train_epochs(
        m.method,
        m.optimizer,
        m.pipe.loader,
        m.pipe.test,
        train_eval=m.pipe.train_eval,
        exe=exe,
        plans=m.plans,
        epochs=t.epochs,
        warmup_epochs=t.warmup_epochs,
        is_clean=None if m.data.is_clean is None else torch.from_numpy(m.data.is_clean),
        start=m.start,
        save=m.files.save,
        checkpoint_steps=t.checkpoint_steps,
        progress=t.progress,
    )


def _agree(member: Member, run: EpochRun) -> tuple[int, int]:
    """`EpochRun.agree`, with the run named when its loss became non-finite (every member's
    last good checkpoint is kept)."""
    try:
        return run.agree()
    except UserError as err:
        raise UserError(f"{member.run.path}: {err}") from None


class _PackLoop:
    """`loop.train_epochs` for a pack: the same epoch, phase and checkpoint rules, per member."""

    def __init__(self, members: list[Member], exe: Execution) -> None:
        self.members, self.exe = members, exe
        self.cfg = members[0].cfg.train  # the schedule every member shares (pack_key)
        self.packed = PackedModel([m.method for m in members], [m.optimizer for m in members])
        self.histories = [m.start.history for m in members]

    def run(self) -> list[list[dict]]:
        # Fixed now: `start.history` is the list the epochs append to.
        first_epoch, first_step = self.members[0].start.epoch, self.members[0].start.step
        with StopSignal() as stop:
            for epoch in range(first_epoch, self.cfg.epochs):
                resumed = epoch == first_epoch and first_step > 0
                runs = self._start_epoch(epoch, resumed)
                began = time.perf_counter()
                self._steps(epoch, runs, stop)
                seconds = time.perf_counter() - began
                self._end_epoch(epoch, runs, seconds)
                if epoch + 1 < self.cfg.epochs and stop.requested:
                    raise PreemptedError(epoch + 1, 0)
        return self.histories

    def _start_epoch(self, epoch: int, resumed: bool) -> list[EpochRun]:
        warmup = epoch < self.cfg.warmup_epochs
        runs = []
        for member, history in zip(self.members, self.histories, strict=True):
            method = member.method
            for group in member.optimizer.param_groups:
                group["lr"] = member.plans[group["net"]][epoch]
            method.train()
            if resumed:  # the epoch's resets already happened before the checkpoint
                method.set_phase(epoch, warmup=warmup)
            else:
                method.on_epoch_start(epoch, warmup=warmup)
                training_pass(method, member.pipe.train_eval, self.exe)
            start = member.start if resumed else Position(history)
            runs.append(
                EpochRun(method, member.optimizer, None, member.pipe.loader, self.exe, ALONE,
                         epoch, start)
            )
        self.packed.gather()
        return runs

    def _steps(self, epoch: int, runs: list[EpochRun], stop: StopSignal) -> None:
        first_step, steps = runs[0].start.step, len(runs[0].loader)
        batches = zip(
            *(r.loader.epoch(epoch, views=r.method.train_views(), start_step=first_step)
              for r in runs),
            strict=True,
        )
        progress = tqdm(
            batches,
            total=steps,
            initial=first_step,
            desc=f"pack of {len(runs)}: epoch {epoch + 1}/{self.cfg.epochs}",
            leave=False,
            disable=not self.cfg.progress,
            dynamic_ncols=True,
        )
        for step, group in enumerate(progress, start=first_step):
            out = self.packed.step(group, self.exe)
            for k, (run, batch) in enumerate(zip(runs, group, strict=True)):
                run.record(step, batch.index, {key: value[k] for key, value in out.items()})
            done = step + 1
            if done < steps:
                every = self.cfg.checkpoint_steps
                if stop.requested or (every and done % every == 0):
                    self._save_mid_epoch(runs, done)
                if stop.requested:
                    raise PreemptedError(epoch, done)

    def _save_mid_epoch(self, runs: list[EpochRun], done: int) -> None:
        self.packed.scatter()
        for member, run in zip(self.members, runs, strict=True):
            _agree(member, run)
            member.files.save(Position(run.start.history, done, dict(run.sums)))

    def _end_epoch(self, epoch: int, runs: list[EpochRun], seconds: float) -> None:
        self.packed.scatter()
        for member, run, history in zip(self.members, runs, self.histories, strict=True):
            visits = _agree(member, run)
            if visits != (1, 1):
                raise RuntimeError(f"epoch {epoch} visited samples {visits} times (min, max)")
            began = time.perf_counter()
            is_clean = member.data.is_clean
            row = epoch_row(
                member.method,
                run.sums,
                member.pipe.test,
                None if is_clean is None else torch.from_numpy(is_clean),
                member.optimizer,
                self.exe,
                epoch,
            )
            row.update(  # the pack's step time: what this run cost with the others beside it
                epoch_seconds=round(seconds, 3),
                images_per_second=round(run.loader.num_samples / max(seconds, 1e-9), 1),
                eval_seconds=round(time.perf_counter() - began, 3),
                visits_min=visits[0],
                visits_max=visits[1],
            )
            history.append(row)
            member.log(member.method.describe(row, self.cfg.epochs))
            for message in member.method.new_warnings(history):
                member.log(f"warning: {message}")
            member.files.save(Position(history))
