"""One run, start to end, in the order it happens: seed, data, method and optimizer, loaders,
where training starts (fresh or from the checkpoint), the epochs, then label_issues.csv and
summary.json. `api.train` prepares the process and the run directory and calls `run_training`.

Under torchrun every process runs this; rank 0 alone writes files (`Dist.on_main`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from asymco.config import RunConfig
from asymco.config_io import to_dict
from asymco.data.pipeline import Pipeline, eval_batch_size, make_pipeline, workers_for
from asymco.data.prepare import NoisyData, describe_data, prepare_data
from asymco.data.sharding import BatchPlan
from asymco.engine.build import build_method, build_optimizer
from asymco.engine.checkpoint import (
    Position,
    check_free_space,
    checkpoint_state,
    load_checkpoint,
    remove_partial_writes,
    restore,
    save_checkpoint,
)
from asymco.engine.distributed import Dist, state_digest
from asymco.engine.loop import train_epochs
from asymco.engine.precision import Execution
from asymco.engine.results import save_label_issues, summarize
from asymco.engine.rundir import RunDir
from asymco.engine.seeding import seed_everything
from asymco.engine.tensorboard import ScalarLog
from asymco.engine.timing import (
    StepTimes,
    describe_plan,
    fit_budget,
    measure_steps,
    remaining_seconds,
)
from asymco.methods.base import Method
from asymco.models import input_spec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    summary: dict
    history: list[dict]
    model: nn.Module
    """The reported net, in eval mode."""


def run_training(
    run: RunDir, cfg: RunConfig, exe: Execution, dist: Dist, *, resume: bool, started: float
) -> Trained:
    """Train `cfg` into `run` (continuing its checkpoint with `resume`); `started` is the
    `time.perf_counter()` the run's wall time counts from."""
    set_up_process(cfg, dist)
    data = prepare_data(cfg.data, cfg.noise, workers=workers_for(cfg.data))
    times = measure_run(cfg, data, exe, dist)
    if cfg.train.budget and not resume:
        cfg = fit_budget(cfg, times, time.perf_counter() - started)
    method = build_method(cfg, data, exe, dist)
    optimizer, plans = build_optimizer(method, cfg)
    pipe = run_pipeline(cfg, data, exe, dist)
    if dist.is_main:  # only once the data is known to fit the model and the processes
        logger.info(describe_data(data, cfg.noise))
    files = RunFiles(run, cfg, dist, method, optimizer, data)
    start = files.restore() if resume else files.first_files()
    if dist.is_main:
        chosen = bool(cfg.train.budget) and not resume
        logger.info(describe_plan(cfg, times, first_epoch=start.epoch, chosen=chosen))
    t = cfg.train
    history = train_epochs(
        method,
        optimizer,
        pipe.loader,
        pipe.test,
        train_eval=pipe.train_eval,
        exe=exe,
        plans=plans,
        epochs=cfg.train.epochs,
        warmup_epochs=cfg.train.warmup_epochs,
        is_clean=None if data.is_clean is None else torch.from_numpy(data.is_clean),
        start=start,
        save=files.save,
        checkpoint_steps=cfg.train.checkpoint_steps,
        dist=dist,
        progress=cfg.train.progress,
        eta=lambda history: remaining_seconds(times, history, t.epochs, t.warmup_epochs),
    )
    summary = files.finish(history, exe, pipe, started)
    return Trained(summary, history, method.eval_nets()[method.reported_net].eval())


def measure_run(cfg: RunConfig, data: NoisyData, exe: Execution, dist: Dist) -> StepTimes:
    """The step and evaluation times of `cfg` on `data`, from throwaway nets and loaders."""

    def build() -> tuple[Method, torch.optim.Optimizer, Pipeline]:
        method = build_method(cfg, data, exe, dist)
        return method, build_optimizer(method, cfg)[0], run_pipeline(cfg, data, exe, dist)

    size = eval_batch_size(cfg.data, exe.device)
    return measure_steps(
        build,
        exe,
        dist,
        epochs=cfg.train.epochs,
        warmup_epochs=cfg.train.warmup_epochs,
        eval_batches=(-(-len(data.test_label) // size), -(-len(data.noisy_label) // size)),
    )


def set_up_process(cfg: RunConfig, dist: Dist) -> None:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)  # the same on every rank: the nets start identical
    if cfg.train.warmup_epochs >= cfg.train.epochs and dist.is_main:
        logger.warning(
            "train.warmup_epochs (%d) >= train.epochs (%d): every epoch is warmup",
            cfg.train.warmup_epochs,
            cfg.train.epochs,
        )


def run_pipeline(cfg: RunConfig, data: NoisyData, exe: Execution, dist: Dist) -> Pipeline:
    """This process's loaders: its share of each global batch, and the evaluation batches."""
    plan = BatchPlan(
        len(data.noisy_label), cfg.data.batch_size, cfg.train.seed, rank=dist.rank, world=dist.world
    )
    spec = input_spec(cfg.model)  # the model's normalisation (ImageNet's for built-in models)
    return make_pipeline(
        cfg.data,
        data,
        plan=plan,
        device=exe.device,
        memory_format=exe.memory_format(),
        workers=workers_for(cfg.data),
        stats=(spec.mean, spec.std),
    )


class RunFiles:
    """What the run writes, and reads back on resume: config.yaml and the noisy labels first,
    the checkpoint (and metrics.jsonl, TensorBoard scalars) at every `Position` the loop hands
    over, label_issues.csv and summary.json at the end. Rank 0 writes; every rank contributes
    its RNG states, figures and state digest."""

    def __init__(
        self,
        run: RunDir,
        cfg: RunConfig,
        dist: Dist,
        method: Method,
        optimizer: torch.optim.Optimizer,
        data: NoisyData,
    ) -> None:
        self.run, self.cfg, self.dist = run, cfg, dist
        self.method, self.optimizer, self.data = method, optimizer, data
        self.config = to_dict(cfg)
        self.scalars: ScalarLog | None = None

    def first_files(self) -> Position:
        """A new run: its configuration and noisy labels, once the disk is known to hold it."""

        def write() -> None:
            check_free_space(self.run.path, self.method, self.optimizer)
            self.run.write_config(self.config)
            self.run.write_array("noisy_labels.npy", self.data.noisy_labels_full)
            if self.data.transition is not None:
                self.run.write_array("noise_transition.npy", self.data.transition)

        self.dist.on_main(write)
        self._open_scalars()
        return Position([])

    def restore(self) -> Position:
        """A resumed run: its checkpoint, checked against this run, loaded into this process."""
        path, num_samples = self.run.checkpoint, len(self.data.noisy_label)

        def load() -> dict:
            remove_partial_writes(path)
            return load_checkpoint(path, num_samples=num_samples, config=self.config)

        start = restore(self.dist.on_main(load), self.method, self.optimizer, self.dist)
        if self.dist.is_main:
            logger.info(
                "resuming %s at epoch %d, step %d", self.run.path, start.epoch + 1, start.step
            )
        self._open_scalars()
        return start

    def _open_scalars(self) -> None:
        if self.cfg.log.tensorboard and self.dist.is_main:
            self.scalars = ScalarLog(self.run.path / "tensorboard")

    def save(self, position: Position) -> None:
        """The checkpoint at `position`; at an epoch's end also metrics.jsonl and scalars."""
        state = checkpoint_state(
            position,
            method=self.method,
            optimizer=self.optimizer,
            dist=self.dist,
            config=self.config,
            num_samples=len(self.data.noisy_label),
        )

        def write() -> None:
            at_epoch_end = position.step == 0
            if self.scalars is not None and at_epoch_end:
                self.scalars.write(position.history[-1])
            save_checkpoint(self.run.checkpoint, **state)
            if at_epoch_end:
                self.run.write_metrics(position.history)

        self.dist.on_main(write)

    def finish(
        self, history: list[dict], exe: Execution, pipe: Pipeline, started: float, pack: int = 1
    ) -> dict:
        """label_issues.csv and summary.json; returns the summary on every rank."""
        if self.scalars is not None:
            self.scalars.close()
        digests = self.dist.gather(state_digest(self.method.per_sample_state()))

        def write() -> dict:
            with exe.evaluation():
                save_label_issues(
                    self.run.path / "label_issues.csv",
                    self.method,
                    self.data,
                    pipe.train_eval,
                    epochs=len(history),
                    warmup_epochs=self.cfg.train.warmup_epochs,
                )
            wall = time.perf_counter() - started
            summary = summarize(
                self.cfg,
                history,
                self.data,
                self.method,
                exe=exe,
                loader=pipe.kind,
                wall_seconds=wall,
                pack=pack,
            )
            summary["distributed"] = {
                "world_size": self.dist.world,
                "backend": self.dist.backend,
                "per_sample_state_sha256": digests,  # one per rank: equal when ranks agree
            }
            self.run.write_summary(summary)
            return summary

        return self.dist.on_main(write)
