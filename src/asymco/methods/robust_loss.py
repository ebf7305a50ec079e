"""One net trained with a noise-robust loss on every sample: what AGCE (`agce.py`) and ANL
(`anl.py`) share.

Such a method changes only the loss of Standard training: one net, reported as `net`, the loss
averaged over every sample of each batch (no selection, so `selected()` is None and
label_issues.csv ranks labels by the net's probability of the given label). A subclass writes
`loss_terms`; this base builds the net, the float32 logits and the target distributions.

Every loss here is linear in the target: the paper's loss of the one-hot label y is the sum of
t_k * loss(p, k) over the target row t = onehot(y). `method.label_smoothing` = eps replaces t by
(1 - eps) * onehot(y) + eps / K, as `F.cross_entropy` does; eps = 0 (every CIFAR preset) is the
papers' loss exactly.

The papers train with the robust loss from the first step; so do these methods. The engine's
warmup epochs (`train.warmup_epochs`) therefore only mean the warmup learning rate here.

Under torchrun each process averages the loss over its own share of the batch and DDP averages
the gradients over processes: the mean over the global batch, as in one process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from asymco.methods.base import Batch, Method

__all__ = ["RobustLossMethod", "normalized_ce", "target_rows"]


def target_rows(label: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """(B, K) float32 target distributions: one-hot rows of `label`, smoothed by `smoothing`
    ((1 - smoothing) * onehot + smoothing / K)."""
    onehot = F.one_hot(label, num_classes).float()
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def normalized_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Normalized cross-entropy (Ma et al., ICML 2020), ANL's active loss:

        NCE(x, y) = -log p_y / sum_k -log p_k   (with a target row t: sum_k t_k of that).

    In [0, 1], since every -log p_k >= 0. Computed with `log_softmax` in float32, which is
    finite for finite logits, so no probability clamp is needed (the papers' code has none).

    Args:
        logits: (B, K) logits (any float dtype; promoted to float32).
        target: (B, K) target distributions (`target_rows`).

    Returns:
        (B,) per-sample losses.
    """
    log_p = F.log_softmax(logits.float(), dim=1)  # (B, K), all <= 0
    return (target * log_p).sum(1) / log_p.sum(1)


class RobustLossMethod(Method):
    """One net trained with `loss_terms` on every sample of each batch (module docstring)."""

    reported_net = "net"
    progress_figures = ("loss", "train_acc")

    def setup(self, make_model: Callable[[], nn.Module], observed_labels: Tensor) -> None:
        self.add_net("net", make_model())

    def loss_terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The batch's loss to backpropagate (`loss`, 0-d) and other 0-d figures to log.

        Args:
            logits: (B, K) float32 logits of the net.
            target: (B, K) float32 target distributions (one-hot unless label smoothing).
        """
        raise NotImplementedError

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        logits = self.fwd["net"](batch.weak)  # (B, K); bf16 under autocast
        target = target_rows(batch.label, self.num_classes, self.settings.label_smoothing)
        # The losses take powers and ratios of probabilities: float32 whatever the autocast.
        out = self.loss_terms(logits.float(), target)
        out["train_acc"] = (logits.detach().argmax(1) == batch.label).float().mean() * 100
        return out
