"""Named run configurations: one per cell of the paper's Table 1, plus the CPU quickstart.

Every CIFAR preset carries the paper's settings (act-spec D.1) and the paper's ACT number for its
cell (Table 1: RTM test accuracy, mean of the last 10 epochs).
"""

from __future__ import annotations

from dataclasses import replace

from asymco.config import (
    DataConfig,
    MethodConfig,
    ModelConfig,
    NoiseConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from asymco.registry import Registry

PRESETS = Registry("preset")

# (name, noise kind, rate, open-set ratio, paper ACT accuracy) for Table 1's six cells.
_TABLE1 = [
    ("cifar100n-sym20", "symmetric", 0.2, 0.0, 65.51),
    ("cifar100n-sym80", "symmetric", 0.8, 0.0, 40.74),
    ("cifar100n-asym40", "asymmetric", 0.4, 0.0, 63.48),
    ("cifar80n-sym20", "symmetric", 0.2, 0.2, 67.09),
    ("cifar80n-sym80", "symmetric", 0.8, 0.2, 38.58),
    ("cifar80n-asym40", "asymmetric", 0.4, 0.2, 64.40),
]

_PAPER_CIFAR = RunConfig(
    data=DataConfig(dataset="cifar100", batch_size=128, views="cifar", normalize="imagenet"),
    model=ModelConfig(name="cnn7"),
    method=MethodConfig(name="act"),
    optim=OptimConfig(lr=0.01, warmup_lr=0.01, lr_decay="cosine:50,5e-4,150"),
    train=TrainConfig(epochs=150, warmup_epochs=50, seed=123),
)


def _register_table1(name: str, kind: str, rate: float, openset: float, paper: float) -> None:
    closed = "CIFAR80N (open-set: classes 80-99 unlabelled)" if openset else "CIFAR100N"
    cfg = replace(
        _PAPER_CIFAR,
        preset=name,
        paper_test_acc=paper,
        description=f"{closed}, {kind} {int(rate * 100)}% noise, paper CNN, 150 epochs",
        noise=NoiseConfig(kind=kind, rate=rate, openset_ratio=openset, seed=0),
    )
    PRESETS.register(name)(lambda cfg=cfg: cfg)


for _row in _TABLE1:
    _register_table1(*_row)


@PRESETS.register("quickstart")
def _quickstart() -> RunConfig:
    return RunConfig(
        preset="quickstart",
        description="scikit-learn digits, 40% symmetric noise, ACT, about a minute on 2 CPU cores",
        data=DataConfig(
            dataset="digits",
            batch_size=64,
            views="digits",
            normalize="dataset",
            eval_batch_size=512,
        ),
        noise=NoiseConfig(kind="symmetric", rate=0.4),
        model=ModelConfig(name="digits_cnn"),
        method=MethodConfig(name="act"),
        optim=OptimConfig(lr=0.05, warmup_lr=0.05, lr_decay="cosine:10,1e-3,60"),
        train=TrainConfig(epochs=60, warmup_epochs=10, seed=123),
    )


def get_preset(name: str) -> RunConfig:
    return PRESETS.create(name)


def list_presets() -> list[str]:
    return PRESETS.names()
