"""The training loop: one function that reads top to bottom.

Per epoch: set each parameter group's LR from its plan, run the batches (training_step ->
backward -> step), evaluate every net on the test set, score the selection against the clean
mask, append one metrics row, write the checkpoint and metrics.jsonl.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm import tqdm

from asymco.data.folders import FolderLoader
from asymco.data.loader import ArrayLoader
from asymco.data.pil_loader import PilLoader
from asymco.engine.evaluate import Batches, accuracy, selection_scores
from asymco.engine.precision import Execution
from asymco.errors import UserError
from asymco.methods.base import Method

logger = logging.getLogger(__name__)
Loader = ArrayLoader | PilLoader | FolderLoader


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
    history: list[dict],
    on_epoch_end: Callable[[list[dict]], None],
    progress: bool = True,
) -> list[dict]:
    """Train from epoch `len(history)` to `epochs`; returns the full per-epoch history."""
    scaler = exe.make_scaler()
    for epoch in range(len(history), epochs):
        warmup = epoch < warmup_epochs
        for group in optimizer.param_groups:
            group["lr"] = plans[group["plan"]][epoch]
        method.train()
        method.on_epoch_start(epoch, warmup=warmup)
        start = time.perf_counter()
        sums = run_epoch(method, optimizer, scaler, loader, exe, epoch, epochs, progress)
        seconds = time.perf_counter() - start
        row = _epoch_row(method, sums, test, is_clean, optimizer, exe, epoch, warmup)
        row.update(
            epoch_seconds=round(seconds, 3),
            images_per_second=round(loader.num_samples / max(seconds, 1e-9), 1),
            eval_seconds=round(time.perf_counter() - start - seconds, 3),
        )
        history.append(row)
        logger.info(_describe(row, epochs))
        on_epoch_end(history)
    return history


def run_epoch(
    method: Method,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loader: Loader,
    exe: Execution,
    epoch: int,
    epochs: int,
    progress: bool,
) -> dict[str, Tensor]:
    """One pass over the training set. Figures stay device tensors until the epoch ends, so a
    GPU never waits for the host; only on a CPU (where reading is free) the bar shows them."""
    sums: dict[str, Tensor] = {}
    first_bad = torch.full((), -1, dtype=torch.long, device=exe.device)
    batches = tqdm(
        loader.epoch(strong=method.needs_strong_view()),
        total=len(loader),
        desc=f"epoch {epoch + 1}/{epochs}",
        leave=False,
        disable=not progress,
        dynamic_ncols=True,
    )
    show = progress and exe.device.type == "cpu"
    refresh = max(1, len(loader) // 10)
    for step, batch in enumerate(batches):
        with exe.autocast():
            out = method.training_step(batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        bad_now = ~torch.isfinite(out["loss"].detach()) & (first_bad < 0)
        first_bad = torch.where(bad_now, torch.full_like(first_bad, step), first_bad)
        for key, value in out.items():
            sums[key] = sums.get(key, 0) + value.detach().float()
        sums["batches"] = sums.get("batches", 0) + 1
        if show and step % refresh == 0:
            keys = ("loss", "train_acc_rtm", "train_acc", "selected_share")
            batches.set_postfix({k: f"{v.item():.3g}" for k, v in out.items() if k in keys})
    if first_bad.item() >= 0:  # checked once per epoch: the epoch's checkpoint is not written
        raise UserError(
            f"the training loss became non-finite at epoch {epoch}, batch {first_bad.item()}; "
            "lower the learning rate or use train.precision=fp32 (the last good checkpoint "
            "is kept)"
        )
    return sums


def _epoch_row(
    method: Method,
    sums: dict[str, Tensor],
    test: Batches,
    is_clean: Tensor | None,
    optimizer: torch.optim.Optimizer,
    exe: Execution,
    epoch: int,
    warmup: bool,
) -> dict:
    batches = sums.pop("batches")
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
