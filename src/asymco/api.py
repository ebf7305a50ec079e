"""What the CLI calls, and what Python users call: resolve a config, train, summarise."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from asymco import __version__
from asymco.augment import IMAGENET_MEAN, IMAGENET_STD, Normalizer
from asymco.config import RunConfig, apply_overrides, from_dict, to_dict
from asymco.data.datasets import FILE_DATASETS, load_dataset
from asymco.data.folders import FolderLoader, folder_test_batches
from asymco.data.loader import ArrayLoader, normalizer_for, to_device_images
from asymco.data.noisy import NoisyData, apply_noise
from asymco.data.pil_loader import PilLoader
from asymco.data.sharding import BatchPlan
from asymco.engine.checkpoint import load_checkpoint, remove_partial_writes, save_checkpoint
from asymco.engine.device import resolve_device, rng_state, seed_everything, set_rng_state
from asymco.engine.distributed import Dist, init_distributed, shutdown, state_digest
from asymco.engine.evaluate import Batches, array_batches, predict_probs
from asymco.engine.loop import Position, fit
from asymco.engine.lr import build_lr_plan
from asymco.engine.precision import Execution, resolve_execution
from asymco.engine.rundir import RunDir
from asymco.engine.tensorboard import ScalarLog
from asymco.errors import PreemptedError, UserError
from asymco.label_issues import label_quality, write_label_issues
from asymco.methods import METHODS, Method, create_method
from asymco.models import MODELS, create_model
from asymco.own_data import choose_defaults, with_own_data
from asymco.presets import get_preset, paper_number

logger = logging.getLogger(__name__)


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
    """A preset with `--data-dir` and `section.key=value` overrides applied and checked."""
    cfg = get_preset(preset)
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=data_dir))
    try:
        cfg = apply_overrides(cfg, list(overrides))
    except TypeError as err:  # a value of the wrong kind reached a dataclass
        raise UserError(f"invalid setting: {err}") from None
    check_names(cfg)
    return cfg


def resolve_own_data(
    data: str, test: str | None = None, overrides: list[str] = (), *, preset: str | None = None
) -> RunConfig:
    """Config for your own data (`folder:PATH`, `csv:FILE`, `npz:FILE`): a preset's settings,
    or (without one) defaults chosen from the data; then the overrides."""
    cfg = with_own_data(get_preset(preset or "custom"), data, test)
    if preset is None:
        cfg = choose_defaults(cfg)
    try:
        cfg = apply_overrides(cfg, list(overrides))
    except TypeError as err:
        raise UserError(f"invalid setting: {err}") from None
    check_names(cfg)
    return cfg


SMALL_LOSS_METHODS = ("coteaching", "coteaching_plus", "jocor")


def fill_forget_rate(cfg: RunConfig) -> RunConfig:
    """The Co-teaching family drops the true noise rate by default, as those papers assume;
    the resolved value is written to config.yaml."""
    if cfg.method.name not in SMALL_LOSS_METHODS or cfg.method.forget_rate is not None:
        return cfg
    if cfg.noise.kind not in ("symmetric", "asymmetric"):
        raise UserError(
            f"method.name={cfg.method.name} needs method.forget_rate for "
            f"{cfg.noise.kind} noise, whose rate is not known in advance"
        )
    method = dataclasses.replace(cfg.method, forget_rate=cfg.noise.rate)
    return dataclasses.replace(cfg, method=method)


def check_names(cfg: RunConfig) -> None:
    """Fail on an unknown method or model, or a model that cannot read the dataset's images,
    before any data is loaded."""
    METHODS.get(cfg.method.name)
    MODELS.get(cfg.model.name)
    d, model = cfg.data, cfg.model.name
    if model == "digits_cnn" and d.dataset not in ("digits", "npz"):
        raise UserError("model.name=digits_cnn reads 8x8 images: use it with digits or an npz")
    if model != "digits_cnn" and d.dataset == "digits":
        raise UserError(f"model.name={model} does not fit 8x8 digits; use digits_cnn")
    if model == "cnn7" and d.dataset in FILE_DATASETS and d.image_size != 32:
        raise UserError(
            f"model.name=cnn7 needs 32x32 inputs but data.image_size is "
            f"{d.image_size}; set data.image_size=32 or use resnet50"
        )


def default_out_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.preset}-{cfg.method.name}-s{cfg.train.seed}-{stamp}"


def load_run_config(run_dir: Path) -> RunConfig:
    """The resolved configuration stored in a run directory."""
    return from_dict(RunDir(Path(run_dir)).read_config())


def _lr_plans(cfg: RunConfig) -> dict[str, list[float]]:
    o, t = cfg.optim, cfg.train
    main = build_lr_plan(
        o.lr,
        epochs=t.epochs,
        warmup_epochs=t.warmup_epochs,
        warmup_lr=o.warmup_lr,
        decay=o.lr_decay,
    )
    if o.ntm_lr_mode == "same_as_rtm":  # official main.py: both plans come from --lr
        ntm = main
    elif o.ntm_lr_mode == "separate_cosine":
        ntm = build_lr_plan(
            o.ntm_lr,
            epochs=t.epochs,
            warmup_epochs=t.warmup_epochs,
            warmup_lr=o.ntm_lr,
            decay=o.lr_decay,
        )
    else:  # main_web.py: lr1 with the step plan, no warmup lr
        ntm = build_lr_plan(
            o.ntm_lr, epochs=t.epochs, warmup_epochs=0, warmup_lr=o.ntm_lr, decay="baseline"
        )
    return {"main": main, "ntm": ntm}


def _optimizer(groups: list[dict], cfg: RunConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, betas=(0.9, 0.999), weight_decay=o.weight_decay)
    # One optimizer with a group per net equals one SGD per net: SGD updates each parameter
    # from its own gradient and state only.
    return torch.optim.SGD(
        groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
    )


@dataclass(frozen=True)
class _Pipeline:
    loader: ArrayLoader | PilLoader | FolderLoader
    test: Batches
    train_eval: Batches
    """The training images without augmentation, in order (for label_issues.csv)."""


def _pipeline(cfg: RunConfig, data: NoisyData, exe: Execution, plan: BatchPlan) -> _Pipeline:
    """Training loader and evaluation batches: arrays on the device, or image files."""
    d, device = cfg.data, exe.device
    eval_batch = d.eval_batch_size or (1024 if device.type == "cuda" else 128)
    common = {"plan": plan, "device": device}
    if data.paths is not None:
        normalize = Normalizer(IMAGENET_MEAN, IMAGENET_STD, device, exe.memory_format())
        size = {"size": d.image_size, "resize": d.resize or d.image_size}
        files = {
            "batch_size": eval_batch,
            "workers": _workers(cfg),
            "normalize": normalize,
            "device": device,
            **size,
        }
        return _Pipeline(
            FolderLoader(
                data.paths,
                data.noisy_label,
                normalize=normalize,
                workers=_workers(cfg),
                **size,
                **common,
            ),
            folder_test_batches(data.test_images, data.test_label, **files),
            folder_test_batches(data.paths, data.noisy_label, **files),
        )
    normalize = normalizer_for(data.images, d.normalize, device, exe.memory_format())
    common.update(views=d.views, normalize=normalize)
    if d.loader == "pil":
        loader = PilLoader(data.images, data.noisy_label, workers=_workers(cfg), **common)
    else:
        loader = ArrayLoader(data.images, data.noisy_label, **common)

    def on_device(images: np.ndarray, labels: np.ndarray) -> Batches:
        return array_batches(
            to_device_images(images, device),
            torch.from_numpy(labels).to(device),
            batch_size=eval_batch,
            normalize=normalize,
        )

    return _Pipeline(
        loader,
        on_device(data.test_images, data.test_label),
        on_device(data.images, data.noisy_label),
    )


def _load_data(cfg: RunConfig) -> NoisyData:
    source = load_dataset(cfg.data, workers=_workers(cfg))
    return apply_noise(source, cfg.data, cfg.noise)


def _describe_data(data: NoisyData, cfg: RunConfig) -> str:
    rate = "unknown" if data.noise_rate_actual is None else f"{data.noise_rate_actual:.5f}"
    noise = cfg.noise.kind
    if noise not in ("none", "human"):
        noise = f"{noise}@{cfg.noise.rate:g}"
    return (
        f"data: {data.origin} | {len(data.noisy_label)} train / {len(data.test_label)} test "
        f"images, {data.num_classes} classes, noise {noise} (actual rate {rate})"
    )


def _workers(cfg: RunConfig) -> int:
    return cfg.data.workers if cfg.data.workers is not None else min(4, os.cpu_count() or 1)


def _build_method(cfg: RunConfig, data: NoisyData, exe: Execution, dist: Dist) -> Method:
    channels = 3 if data.paths is not None else data.images.shape[-1]
    model_options = {
        "cnn7": {"mlp_head": cfg.model.mlp_head},
        "resnet50": {"pretrained": cfg.model.pretrained, "weights": cfg.model.weights},
    }.get(cfg.model.name, {})
    outputs = cfg.model.num_outputs or data.num_classes
    if outputs < data.num_classes:
        raise UserError(f"model.num_outputs={outputs} is below the {data.num_classes} classes")
    method = create_method(
        cfg.method.name,
        cfg.method,
        num_classes=outputs,  # the official Food code keeps q over all 200 logits
        observed_labels=torch.from_numpy(data.noisy_label),
        make_model=lambda: create_model(
            cfg.model.name, num_classes=outputs, in_channels=channels, **model_options
        ),
    )
    if dist.enabled and exe.device.type == "cuda" and cfg.train.sync_batchnorm:
        for name, net in list(method.nets.items()):
            method.add_net(name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(net))
    method.to(exe.device, memory_format=exe.memory_format())
    method.dist = dist
    for name, views in method.fwd.items():
        if cfg.train.compile:  # only the training forwards: state_dict keys stay plain
            views.net = torch.compile(views.net)
        method.fwd[name] = dist.wrap(views, exe.device)
    if exe.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return method


def train(cfg: RunConfig, *, out_dir: str | Path | None = None, resume: bool = False) -> RunResult:
    """Train `cfg` into a run directory (new, or continued from its checkpoint with `resume`).

    Under torchrun every process calls this; they train together and rank 0 writes the run."""
    wall_start = time.perf_counter()
    check_names(cfg)
    if not resume:
        cfg = fill_forget_rate(cfg)
    dist, device_name = init_distributed(cfg.train.device)
    try:
        device = resolve_device(device_name)
        exe = resolve_execution(cfg.train, device)
        path = Path(out_dir) if out_dir else dist.on_main(lambda: default_out_dir(cfg))
        try:
            existed = path.exists()
        except OSError as err:  # e.g. a name longer than the file system allows
            raise UserError(f"cannot use {path} as the run directory ({err.strerror})") from None
        run = dist.on_main(lambda: RunDir.prepare(path, resume=resume))
        try:
            return _train_into(run, cfg, exe, dist, resume=resume, wall_start=wall_start)
        except PreemptedError as stopped:
            stopped.run_dir = path
            raise
        except BaseException:
            if dist.is_main and not existed and path.is_dir() and not any(path.iterdir()):
                path.rmdir()  # a run that failed before writing anything leaves no empty folder
            raise
    finally:
        shutdown(dist)


def _train_into(
    run: RunDir, cfg: RunConfig, exe: Execution, dist: Dist, *, resume: bool, wall_start: float
) -> RunResult:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)  # the same on every rank: the nets start identical
    if cfg.train.warmup_epochs >= cfg.train.epochs and dist.is_main:
        logger.warning(
            "train.warmup_epochs (%d) >= train.epochs (%d): every epoch is warmup",
            cfg.train.warmup_epochs,
            cfg.train.epochs,
        )

    data = _load_data(cfg)
    num_samples = len(data.noisy_label)
    method = _build_method(cfg, data, exe, dist)
    optimizer = _optimizer(method.param_groups(), cfg)
    plan = BatchPlan(
        num_samples, cfg.data.batch_size, cfg.train.seed, rank=dist.rank, world=dist.world
    )
    pipe = _pipeline(cfg, data, exe, plan)
    config = to_dict(cfg)
    if dist.is_main:  # only once the data is known to fit the model and the processes
        logger.info(_describe_data(data, cfg))

    start = Position([])
    if resume:

        def load() -> dict:
            remove_partial_writes(run.checkpoint)
            return load_checkpoint(run.checkpoint, num_samples=num_samples, config=config)

        state = dist.on_main(load)
        start = _restore(state, method, optimizer, dist)
        if dist.is_main:
            logger.info("resuming %s at epoch %d, step %d", run.path, start.epoch + 1, start.step)
    else:

        def first_files() -> None:
            check_free_space(run.path, method, optimizer)
            run.write_config(config)
            run.write_array("noisy_labels.npy", data.noisy_labels_full)
            if data.transition is not None:
                run.write_array("noise_transition.npy", data.transition)

        dist.on_main(first_files)

    scalars = ScalarLog(run.path / "tensorboard") if cfg.log.tensorboard and dist.is_main else None

    def save(position: Position) -> None:
        rngs = dist.gather(rng_state())  # every rank's RNGs, in rank order
        # and every rank's running figures of the epoch so far (each holds its own share's)
        sums = dist.gather({k: torch.as_tensor(v).cpu() for k, v in position.sums.items()})

        def write() -> None:
            at_epoch_end = position.step == 0
            if scalars is not None and at_epoch_end:
                scalars.write(position.history[-1])
            save_checkpoint(
                run.checkpoint,
                method=method.state_dict(),
                optimizer=optimizer.state_dict(),
                rng=rngs,
                world_size=dist.world,
                history=position.history,
                step=position.step,
                sums=sums,
                config=config,
                num_samples=num_samples,
            )
            if at_epoch_end:
                run.write_metrics(position.history)

        dist.on_main(write)

    history = fit(
        method,
        optimizer,
        pipe.loader,
        pipe.test,
        exe=exe,
        plans=_lr_plans(cfg),
        epochs=cfg.train.epochs,
        warmup_epochs=cfg.train.warmup_epochs,
        is_clean=None if data.is_clean is None else torch.from_numpy(data.is_clean),
        start=start,
        save=save,
        checkpoint_steps=cfg.train.checkpoint_steps,
        dist=dist,
        progress=cfg.train.progress,
    )
    if scalars is not None:
        scalars.close()
    digests = dist.gather(state_digest(method.per_sample_buffers()))

    def finish() -> dict:
        with exe.autocast():
            _write_label_issues(run, method, data, pipe.train_eval, cfg, len(history))
        summary = summarize(
            cfg, history, data, exe=exe, wall_seconds=time.perf_counter() - wall_start
        )
        summary["distributed"] = {
            "world_size": dist.world,
            "backend": dist.backend,
            "per_sample_state_sha256": digests,  # one per rank: equal when the ranks agree
        }
        run.write_summary(summary)
        return summary

    summary = dist.on_main(finish)
    model = method.eval_nets()[method.reported_net].eval()
    return RunResult(run.path, summary, history, model)


def _restore(state: dict, method: Method, optimizer: torch.optim.Optimizer, dist: Dist) -> Position:
    """Load a checkpoint's state into this process; where training stands."""
    step, writers = state["step"], state["world_size"]
    if writers != dist.world:
        if step:
            raise UserError(
                f"the checkpoint was written in the middle of an epoch by {writers} "
                f"process(es); resume it with {writers} (torchrun --nproc-per-node {writers})"
            )
        if dist.is_main:
            logger.warning(
                "the checkpoint was written by %d process(es), this run has %d: it continues "
                "at the epoch boundary, but not bit-identically",
                writers,
                dist.world,
            )
    method.load_state_dict(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    rngs = state["rng"]
    set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
    sums = state["sums"][dist.rank] if step else {}  # mid-epoch: same world size (above)
    return Position(list(state["history"]), step, dict(sums))


def check_free_space(path: Path, method: Method, optimizer: torch.optim.Optimizer) -> None:
    """Fail before training when the disk cannot hold the checkpoint twice (the atomic write
    keeps the previous one until the new one is complete)."""
    params = (p for group in optimizer.param_groups for p in group["params"])
    tensors = [*method.state_dict().values(), *params]  # nets and state, plus SGD momentum
    checkpoint = sum(t.numel() * t.element_size() for t in tensors)
    need = 2 * checkpoint + 16 * 2**20  # two copies, plus metrics, labels and label issues
    free = shutil.disk_usage(path).free
    if free < need:
        raise UserError(
            f"only {free / 2**20:.0f} MB are free under {path}; this run's checkpoints need "
            f"about {need / 2**20:.0f} MB"
        )


def _write_label_issues(
    run: RunDir, method: Method, data: NoisyData, batches: Batches, cfg: RunConfig, epochs: int
) -> None:
    """label_issues.csv from the reported net's predictions and the selection history."""
    net = method.eval_nets()[method.reported_net]
    # Extra logits (Food-101N's 200 for 101 classes) name no class: rank the real ones only.
    probs = predict_probs(net, batches, data.num_classes).cpu().numpy()
    warmup_done = min(cfg.train.warmup_epochs, epochs)
    counts = method.select_counts()
    selected_epochs = None
    if counts is not None:  # warmup counts every sample as selected: keep robust epochs only
        selected_epochs = (counts.cpu().numpy().astype(np.int64) - warmup_done).clip(min=0)
    last = method.selected()
    quality = label_quality(
        data.noisy_label,
        probs,
        selected_epochs=selected_epochs,
        robust_epochs=epochs - warmup_done,
        last_selected=None if last is None else last.cpu().numpy(),
    )
    write_label_issues(
        run.path / "label_issues.csv",
        quality,
        given_labels=data.noisy_label,
        classes=data.classes,
        selected_epochs=selected_epochs,
        paths=data.paths,
        sample_id=data.sample_id,
    )


def summarize(
    cfg: RunConfig,
    history: list[dict],
    data: NoisyData,
    *,
    exe: Execution,
    wall_seconds: float,
) -> dict:
    """The final figures of a run; last-10 statistics as the paper reports them (ddof = 0)."""
    accs = np.array([row["test_acc"] for row in history])
    last10 = accs[-10:]
    best = int(accs.argmax())
    final = history[-1]
    return {
        "preset": cfg.preset,
        "method": cfg.method.name,
        "epochs": len(history),
        "test_acc_last10_mean": round(float(last10.mean()), 4),
        "test_acc_last10_std": round(float(last10.std()), 4),
        "test_acc_best": float(accs[best]),
        "best_epoch": best,
        "test_acc_final": float(accs[-1]),
        "test_acc_ntm_final": final.get("test_acc_ntm"),
        "paper_test_acc": paper_number(cfg.preset, cfg.method.name, cfg.paper_test_acc),
        "sel_precision_final": final.get("sel_precision"),
        "sel_recall_final": final.get("sel_recall"),
        "noise_rate_actual": (
            None if data.noise_rate_actual is None else round(data.noise_rate_actual, 6)
        ),
        "num_train": len(data.noisy_label),
        "num_test": len(data.test_label),
        "num_classes": data.num_classes,
        "data_origin": data.origin,
        "wall_seconds": round(wall_seconds, 2),
        "device": str(exe.device)
        if exe.device.type != "cuda"
        else torch.cuda.get_device_name(exe.device),
        "execution": {
            "precision": exe.precision,
            "channels_last": exe.channels_last,
            "compile": cfg.train.compile,
            "loader": cfg.data.loader,
        },
        "versions": {
            "asymco": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "torchvision": _torchvision_version(),
        },
    }


def _torchvision_version() -> str:
    import torchvision

    return torchvision.__version__
