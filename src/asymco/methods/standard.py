"""Standard training: one net, plain cross-entropy on every observed label (the paper's
"Standard" row). It is the simplest implementation of the method interface."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from asymco.methods.base import Batch, Method, MethodSettings


@dataclass(frozen=True, kw_only=True)
class StandardSettings(MethodSettings):
    name: str = "standard"


class Standard(Method):
    Settings = StandardSettings
    reported_net = "net"
    packable = True
    progress_figures = ("loss", "train_acc")
    # The ACT paper's Table 1 (CIFAR-100N sym20/80, asym40; CIFAR-80N sym20/80, asym40),
    # Table 2 (Web-Aircraft/Bird/Car) and Table 3 (Food-101N).
    paper_numbers: ClassVar[Mapping[str, float]] = {
        "cifar100n-sym20": 35.14,
        "cifar100n-sym80": 4.41,
        "cifar100n-asym40": 27.29,
        "cifar80n-sym20": 29.37,
        "cifar80n-sym80": 4.20,
        "cifar80n-asym40": 22.25,
        "web-aircraft": 60.80,
        "web-bird": 64.40,
        "web-car": 60.60,
        "food101n": 84.50,
    }

    def setup(self, make_model: Callable[[], nn.Module], observed_labels: Tensor) -> None:
        self.add_net("net", make_model())

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        logits = self.fwd["net"](batch.weak)
        loss = F.cross_entropy(logits, batch.label, label_smoothing=self.settings.label_smoothing)
        hits = (logits.argmax(1) == batch.label).float().mean() * 100
        return {"loss": loss, "train_acc": hits}
