"""Test accuracy and selection quality. This is the only place the clean mask meets a method's
selection: methods never see true labels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from asymco.batch import EvalBatches


@torch.no_grad()  # not inference_mode: methods keep what they derive from the logits
def logits(net: nn.Module, batches: EvalBatches) -> Tensor:
    """(N, K) float32 logits of `net` in eval mode over `batches`, in order."""
    was_training = net.training
    net.eval()
    out = [net(x).float() for x, _ in batches()]
    net.train(was_training)
    return torch.cat(out)


def predict_probs(net: nn.Module, batches: EvalBatches, num_classes: int | None = None) -> Tensor:
    """(N, K) float32 softmax of `net` in eval mode over `batches`, in order; over the first
    `num_classes` logits only when given (a net with more outputs than the data has classes)."""
    return torch.softmax(logits(net, batches)[:, :num_classes], dim=1)


@torch.inference_mode()
def accuracy(net: nn.Module, batches: EvalBatches) -> float:
    """Top-1 accuracy in percent of `net` in eval mode."""
    was_training = net.training
    net.eval()
    hits, total = [], 0
    for x, y in batches():
        hits.append((net(x).argmax(1) == y).sum())
        total += len(y)
    net.train(was_training)
    correct = int(torch.stack(hits).sum()) if hits else 0  # one device read per evaluation
    return 100.0 * correct / max(total, 1)


def selection_scores(selected: Tensor, is_clean: Tensor) -> dict[str, float | None]:
    """Precision, recall and F1 of a selection against the clean mask (the spec's section E).

    Both are (N,) bool. Precision is None when nothing is selected; F1 is None when it cannot
    be defined.
    """
    selected, is_clean = selected.bool().cpu(), is_clean.bool().cpu()
    true_pos = (selected & is_clean).sum().item()
    n_sel, n_clean = selected.sum().item(), is_clean.sum().item()
    precision = true_pos / n_sel if n_sel else None
    recall = true_pos / n_clean if n_clean else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else None
    )
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fraction": n_sel / len(selected) if len(selected) else None,
    }


def score_judgement(mask: Tensor, is_clean: Tensor | None) -> dict[str, float | None]:
    """`selection_scores` of a method's (N,) bool judgement, or only the share it marks when
    the truth is unknown (real noise)."""
    if is_clean is not None:
        return selection_scores(mask, is_clean)
    scores: dict[str, float | None] = dict.fromkeys(("precision", "recall", "f1"))
    scores["fraction"] = float(mask.float().mean())
    return scores
