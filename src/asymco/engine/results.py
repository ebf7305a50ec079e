"""A run's final outputs: label_issues.csv (every training label, most suspect first) and
summary.json (the final figures, the paper's number beside them, and how the run was done)."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import numpy as np
import torch

from asymco._version import __version__
from asymco.batch import EvalBatches
from asymco.config import RunConfig
from asymco.data.prepare import NoisyData
from asymco.engine.evaluate import predict_probs
from asymco.engine.precision import Execution
from asymco.label_issues import label_quality, write_label_issues
from asymco.methods.base import Method
from asymco.presets import get_preset, list_presets

logger = logging.getLogger(__name__)


def save_label_issues(
    path: Path,
    method: Method,
    data: NoisyData,
    batches: EvalBatches,
    *,
    epochs: int,
    warmup_epochs: int,
) -> None:
    """label_issues.csv from the reported net's predictions and the selection history of the
    `epochs` epochs trained, ranked by the method's own clean score where it has one."""
    net = method.eval_nets()[method.reported_net]
    # Extra logits (Food-101N's 200 for 101 classes) name no class: rank the real ones only.
    probs = predict_probs(net, batches, data.num_classes).cpu().numpy()
    warmup_done = method.warmup_epochs_run(min(warmup_epochs, epochs))
    counts = method.select_counts()
    selected_epochs = None
    if counts is not None:  # warmup counts every sample as selected: keep later epochs only
        selected_epochs = (counts.cpu().numpy().astype(np.int64) - warmup_done).clip(min=0)
    last = method.selected()
    own = method.clean_scores()
    quality = label_quality(
        data.noisy_label,
        probs,
        selected_epochs=selected_epochs,
        epochs_after_warmup=epochs - warmup_done,
        last_selected=None if last is None else last.cpu().numpy(),
        clean_score=None if own is None else own.float().cpu().numpy(),
        clean_cut=method.clean_cut(),
    )
    write_label_issues(
        path,
        quality,
        given_labels=data.noisy_label,
        classes=data.classes,
        selected_epochs=selected_epochs,
        paths=data.paths,
        sample_id=data.sample_id,
    )
    trust = method.label_trust()
    if trust is not None and trust["level"] != "usual":
        logger.warning("%s: trust %s. %s", path.name, trust["level"], trust["message"])


def summarize(
    cfg: RunConfig,
    history: list[dict],
    data: NoisyData,
    method: Method,
    *,
    exe: Execution,
    loader: str,
    wall_seconds: float,
    pack: int = 1,
) -> dict:
    """The final figures of a run; last-10 statistics as the paper reports them (ddof = 0)."""
    accs = np.array([row["test_acc"] for row in history])
    last10 = accs[-10:]
    best = int(accs.argmax())
    return {
        "preset": cfg.preset,
        "method": cfg.method.name,
        "epochs": len(history),
        "test_acc_last10_mean": round(float(last10.mean()), 4),
        "test_acc_last10_std": round(float(last10.std()), 4),
        "test_acc_best": float(accs[best]),
        "best_epoch": best,
        "test_acc_final": float(accs[-1]),
        **method.summary_figures(history, preset=cfg.preset, preset_number=cfg.paper_test_acc),
        "warnings": method.run_warnings(history),
        "label_trust": method.label_trust(),
        "paper_protocol": paper_protocol(cfg),
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
            "loader": loader,
            "pack": pack,  # how many runs trained together as one batched model
        },
        "versions": _versions(),
    }


def paper_protocol(cfg: RunConfig) -> bool | None:
    """Whether the run kept its preset's data and schedule (no subset, the preset's epochs and
    warmup), so its number may be set against the paper's; None for a run without a preset or
    with a reference number of the user's own (`paper_test_acc` set: compared as asked)."""
    if cfg.preset not in list_presets():
        return None
    preset = get_preset(cfg.preset)
    if cfg.paper_test_acc != preset.paper_test_acc:
        return None
    return (
        cfg.data.subset is None
        and cfg.data.test_subset is None
        and (cfg.train.epochs, cfg.train.warmup_epochs)
        == (preset.train.epochs, preset.train.warmup_epochs)
    )


def _versions() -> dict[str, str]:
    import torchvision

    return {
        "asymco": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torchvision": torchvision.__version__,
    }
