"""Test accuracy and selection quality. This is the only place the clean mask meets a method's
selection: methods never see true labels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from asymco.augment import Normalizer


@torch.inference_mode()
def accuracy(
    net: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int, normalize: Normalizer
) -> float:
    """Top-1 accuracy in percent of `net` in eval mode on uint8 (N, C, H, W) images."""
    was_training = net.training
    net.eval()
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    for start in range(0, len(labels), batch_size):
        logits = net(normalize(images[start : start + batch_size]))
        correct += (logits.argmax(1) == labels[start : start + batch_size]).sum()
    net.train(was_training)
    return 100.0 * correct.item() / len(labels)


def selection_scores(selected: Tensor, is_clean: Tensor) -> dict[str, float | None]:
    """Precision, recall and F1 of a selection against the clean mask (act-spec E).

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
