"""The public front: what the CLI calls, and what Python users call.

    cfg = resolve_config("cifar100n-sym20", ["train.epochs=10"])    # a preset, checked
    cfg = resolve_own_data("folder:photos/")                         # your own images
    result = train(cfg, out_dir="runs/x")                            # a run directory
    cfg = load_run_config("runs/x")                                  # its configuration

The run itself (data, method, optimizer, loop, checkpoints, outputs) is `engine/run.py`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from asymco.config import RunConfig
from asymco.config_io import apply_overrides, from_dict
from asymco.engine.build import check_run
from asymco.engine.device import resolve_device
from asymco.engine.distributed import init_distributed, shutdown
from asymco.engine.precision import resolve_execution
from asymco.engine.run import run_training
from asymco.engine.rundir import RunDir
from asymco.errors import PreemptedError, UserError
from asymco.own_data import choose_defaults, with_own_data
from asymco.presets import get_preset

__all__ = [
    "RunConfig",
    "RunResult",
    "UserError",
    "describe_run",
    "load_run_config",
    "resolve_config",
    "resolve_own_data",
    "train",
]


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    summary: dict
    history: list[dict]
    model: torch.nn.Module | None = None
    """The reported net (ACT's RTM), in eval mode."""


def resolve_config(
    preset: str, overrides: list[str] = (), *, data_dir: str | None = None
) -> RunConfig:
    """A preset with `--data-dir` and `section.key=value` overrides applied and checked.

    Example:
        >>> cfg = resolve_config("quickstart", ["method.name=standard", "train.epochs=5"])
    """
    cfg = get_preset(preset)
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=data_dir))
    return _overridden(cfg, overrides)


def resolve_own_data(
    data: str, test: str | None = None, overrides: list[str] = (), *, preset: str | None = None
) -> RunConfig:
    """Config for your own data (`folder:PATH`, `csv:FILE`, `npz:FILE`): a preset's settings,
    or (without one) defaults chosen from the data; then the overrides."""
    cfg = with_own_data(get_preset(preset or "custom"), data, test)
    if preset is None:
        cfg = choose_defaults(cfg)
    return _overridden(cfg, overrides)


def _overridden(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    try:
        cfg = apply_overrides(cfg, list(overrides))
    except TypeError as err:  # a value of the wrong kind reached a dataclass
        raise UserError(f"invalid setting: {err}") from None
    check_run(cfg)
    return cfg


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved configuration stored in a run directory (its config.yaml)."""
    return from_dict(RunDir(Path(run_dir)).read_config())


def default_out_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.preset}-{cfg.method.name}-s{cfg.train.seed}-{stamp}"


def train(cfg: RunConfig, *, out_dir: str | Path | None = None, resume: bool = False) -> RunResult:
    """Train `cfg` into a run directory (new, or continued from its checkpoint with `resume`).

    Under torchrun every process calls this; they train together and rank 0 writes the run.

    Example:
        >>> result = train(resolve_config("quickstart"), out_dir="runs/quickstart")
        >>> result.summary["test_acc_last10_mean"]
    """
    started = time.perf_counter()
    check_run(cfg)
    if not resume:  # what the settings leave to the run, fixed now and written to config.yaml
        cfg = dataclasses.replace(cfg, method=cfg.method.resolved(cfg.noise))
    dist, device_name = init_distributed(cfg.train.device)
    try:
        exe = resolve_execution(cfg.train, resolve_device(device_name))
        path = Path(out_dir) if out_dir else dist.on_main(lambda: default_out_dir(cfg))
        try:
            existed = path.exists()
        except OSError as err:  # e.g. a name longer than the file system allows
            raise UserError(f"cannot use {path} as the run directory ({err.strerror})") from None
        run = dist.on_main(lambda: RunDir.prepare(path, resume=resume))
        try:
            trained = run_training(run, cfg, exe, dist, resume=resume, started=started)
        except PreemptedError as stopped:
            stopped.run_dir = path
            raise
        except BaseException:
            if dist.is_main and not existed and path.is_dir() and not any(path.iterdir()):
                path.rmdir()  # a run that failed before writing anything leaves no empty folder
            raise
        return RunResult(run.path, trained.summary, trained.history, trained.model)
    finally:
        shutdown(dist)


def describe_run(summary: dict, run_dir: Path) -> str:
    """A finished run in one line: its last-10 accuracy beside the paper's, its best epoch."""
    s = summary
    paper = ""
    if s["paper_test_acc"] is not None:
        shortened = s.get("paper_protocol") is False  # a subset or another schedule
        paper = f" (paper: {s['paper_test_acc']:.2f}{', full protocol' if shortened else ''})"
    return (
        f"{s['preset']} / {s['method']}: last-10 test accuracy "
        f"{s['test_acc_last10_mean']:.2f} ± {s['test_acc_last10_std']:.2f}{paper}, "
        f"best {s['test_acc_best']:.2f} at epoch {s['best_epoch']}, "
        f"{s['wall_seconds']:.0f}s -> {run_dir}"
    )
