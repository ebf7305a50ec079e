"""The public front: what the CLI calls, and what Python users call.

    cfg = resolve_config("cifar100n-sym20", ["train.epochs=10"])    # a preset, checked
    cfg = resolve_own_data("folder:photos/")                         # your own images
    result = train(cfg, out_dir="runs/x")                            # a run directory
    results = train_pack([cfg1, cfg2], ["runs/a", "runs/b"])         # runs trained as one
    cfg = load_run_config("runs/x")                                  # its configuration

The run itself (data, method, optimizer, loop, checkpoints, outputs) is `engine/run.py`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from asymco.augment import InputSpec
from asymco.config import RunConfig
from asymco.config_io import apply_overrides, from_dict
from asymco.engine.build import check_run
from asymco.engine.claim import claim_run, claimed
from asymco.engine.device import resolve_device
from asymco.engine.distributed import init_distributed, shutdown
from asymco.engine.pack import pack_key, why_unpackable
from asymco.engine.pack_run import build_member, train_members
from asymco.engine.precision import resolve_execution
from asymco.engine.run import Trained, run_training
from asymco.engine.rundir import RunDir
from asymco.errors import UserError
from asymco.methods import METHODS
from asymco.models import input_spec, is_timm
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
    "train_pack",
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
    """Config for your own data (`folder:PATH`, `csv:FILE`, `npz:FILE`, `hf:PATH`,
    `parquet:PATH`): a preset's settings,
    or (without one) defaults chosen from the data; then the overrides."""
    cfg = with_own_data(get_preset(preset or "custom"), data, test)
    if preset is None:
        cfg = choose_defaults(*_named_timm_model(cfg, overrides))
    return _overridden(cfg, overrides)


def _named_timm_model(cfg: RunConfig, overrides: list[str]) -> tuple[RunConfig, InputSpec | None]:
    """`cfg` with the timm model the overrides name and its input spec (else `cfg`, None)."""
    try:
        model = apply_overrides(cfg, list(overrides)).model
    except (TypeError, UserError):  # reported, as one sentence, when the overrides apply
        return cfg, None
    if not is_timm(model.name):
        return cfg, None
    return dataclasses.replace(cfg, model=model), input_spec(model)


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


def read_summary(run_dir: str | Path) -> dict:
    """A finished run's figures (its summary.json)."""
    return RunDir(Path(run_dir)).read_summary()


def default_out_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.preset}-{cfg.method.name}-s{cfg.train.seed}-{stamp}"


def train(
    cfg: RunConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    started: float | None = None,
) -> RunResult:
    """Train `cfg` into a run directory; its wall time and `train.budget` count from `started`
    (a `time.perf_counter()`; now). With `resume`, start or continue: an empty directory starts,
    one whose run died before its first checkpoint starts again, an interrupted run continues
    from its checkpoint (`cfg` must agree with its saved configuration; `engine/claim.py`).

    Under torchrun every process calls this; they train together and rank 0 writes the run.

    Example:
        >>> result = train(resolve_config("quickstart"), out_dir="runs/quickstart")
        >>> result.summary["test_acc_last10_mean"]
    """
    started = time.perf_counter() if started is None else started
    check_run(cfg)
    cfg = _fixed(cfg)  # what the settings leave to the run, fixed now and written to config.yaml
    dist, device_name = init_distributed(cfg.train.device)
    try:
        exe = resolve_execution(cfg.train, resolve_device(device_name))
        path = Path(out_dir) if out_dir else dist.on_main(lambda: default_out_dir(cfg))
        with claimed(path, cfg, dist, resume=resume) as claim:
            trained = run_training(
                claim.run, claim.cfg, exe, dist, resume=claim.resume, started=started
            )
        return RunResult(path, trained.summary, trained.history, trained.model)
    finally:
        shutdown(dist)


def train_pack(
    cfgs: Sequence[RunConfig],
    out_dirs: Sequence[str | Path],
    *,
    resume: bool | Sequence[bool] = False,
) -> list[RunResult]:
    """Train several runs in this process as one batched model (a pack, `engine/pack.py`):
    same data, network, method and schedule; each with its own seed, noise and run directory,
    which ends up as `train` would have left it. `resume` (one flag, or one per run) starts or
    continues each run as `train` does; members that stand at different positions train as separate
    packs.

    Example:
        >>> cfgs = [resolve_config("quickstart", [f"train.seed={s}"]) for s in (1, 2, 3)]
        >>> results = train_pack(cfgs, [f"runs/pack/seed{s}" for s in (1, 2, 3)])
    """
    started = time.perf_counter()
    resumes = [resume] * len(cfgs) if isinstance(resume, bool) else list(resume)
    if not cfgs or len({len(cfgs), len(out_dirs), len(resumes)}) != 1:
        raise UserError("a pack needs one run directory and one resume flag per configuration")
    paths = [Path(p).resolve() for p in out_dirs]
    if len(set(paths)) < len(paths):
        raise UserError("each run of a pack needs its own run directory")
    cfgs = [_fixed(cfg) for cfg in cfgs]
    check_pack(cfgs)
    dist, device_name = init_distributed(cfgs[0].train.device)
    claims = []
    try:
        if dist.enabled:
            raise UserError("packed runs train in one process; start them without torchrun")
        exe = resolve_execution(cfgs[0].train, resolve_device(device_name))
        for p, cfg, r in zip(paths, cfgs, resumes, strict=True):
            claims.append(claim_run(p, cfg, resume=r))
        members = [build_member(c.run, c.cfg, exe, resume=c.resume) for c in claims]
        trained: dict[int, Trained] = {}
        for group in _by_position(members):
            done = train_members([members[i] for i in group], exe, started)
            trained.update(zip(group, done, strict=True))
        return [
            RunResult(members[i].run.path, t.summary, t.history, t.model)
            for i, t in sorted(trained.items())
        ]
    finally:
        for claim in claims:
            claim.lock.release()
        shutdown(dist)


def check_pack(cfgs: Sequence[RunConfig]) -> None:
    """Refuse runs that cannot train as one pack, naming why."""
    for cfg in cfgs:
        check_run(cfg)
        reason = why_unpackable(cfg, METHODS.get(cfg.method.name))
        if reason and len(cfgs) > 1:
            raise UserError(f"{cfg.method.name} runs cannot be packed: {reason}")
    if len({pack_key(cfg) for cfg in cfgs}) > 1:
        raise UserError(
            "runs in one pack must share data, network, method settings and schedule; only "
            "the seed and the noise may differ"
        )


def _fixed(cfg: RunConfig) -> RunConfig:
    """What the settings leave to the run, fixed before it starts (as `train` does)."""
    return dataclasses.replace(cfg, method=cfg.method.resolved(cfg.noise))


def _by_position(members: list) -> list[list[int]]:
    """Members grouped by where they stand (a pack killed between two members' checkpoint
    writes resumes as two packs, each exact)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(members):
        groups.setdefault((m.start.epoch, m.start.step), []).append(i)
    return list(groups.values())


def describe_run(summary: dict, run_dir: Path) -> str:
    """A finished run in one line: its last-10 accuracy beside the paper's, its best epoch."""
    from asymco.text import printable  # the directory is the user's: escape its controls
    s, paper = summary, ""
    if s["paper_test_acc"] is not None:
        shortened = s.get("paper_protocol") is False  # a subset or another schedule
        paper = f" (paper: {s['paper_test_acc']:.2f}{', full protocol' if shortened else ''})"
    return (
        f"{s['preset']} / {s['method']}: last-10 test accuracy "
        f"{s['test_acc_last10_mean']:.2f} ± {s['test_acc_last10_std']:.2f}{paper}, "
        f"best {s['test_acc_best']:.2f} at epoch {s['best_epoch'] + 1}, "  # files: 0-based
        f"{s['wall_seconds']:.0f}s -> {printable(run_dir)}"
    )
