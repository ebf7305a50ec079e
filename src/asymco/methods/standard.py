"""Standard training: one net, plain cross-entropy on every observed label (the paper's
"Standard" row). It is the simplest implementation of the method interface."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from asymco.data.loader import Batch
from asymco.methods.base import Method


class Standard(Method):
    reported_net = "net"

    def setup(self, make_model: Callable[[], nn.Module], observed_labels: Tensor) -> None:
        self.add_net("net", make_model())

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        logits = self.fwd["net"](batch.weak)
        loss = F.cross_entropy(logits, batch.label, label_smoothing=self.cfg.label_smoothing)
        hits = (logits.argmax(1) == batch.label).float().mean() * 100
        return {"loss": loss, "train_acc": hits}
