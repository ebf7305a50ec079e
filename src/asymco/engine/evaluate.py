"""Test accuracy and selection quality. This is the only place the clean mask meets a method's
selection: methods never see true labels."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from asymco.batch import EvalBatches
from asymco.methods.base import MeanPrediction


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


def _reuses_members(net: nn.Module, nets: Mapping[str, nn.Module]) -> bool:
    """A mean of nets that are all evaluated beside it: computed from their logits."""
    others = {id(other) for other in nets.values()}
    return isinstance(net, MeanPrediction) and all(id(m) in others for m in net.members)


def batch_logits(nets: Mapping[str, nn.Module], x: Tensor) -> dict[str, Tensor]:
    """Each net's logits for `x`, every net run once: a mean of nets among `nets` is combined
    from their logits instead of running them again."""
    ran = {id(net): net(x) for net in nets.values() if not _reuses_members(net, nets)}
    return {
        name: MeanPrediction.combine([ran[id(m)] for m in net.members])
        if _reuses_members(net, nets)
        else ran[id(net)]
        for name, net in nets.items()
    }


def forward_passes(nets: Mapping[str, nn.Module]) -> int:
    """How many nets `batch_logits` runs per batch (a mean run on its own runs its members)."""
    ran = {id(net): net for net in nets.values() if not _reuses_members(net, nets)}
    return sum(len(n.members) if isinstance(n, MeanPrediction) else 1 for n in ran.values())


def accuracy(net: nn.Module, batches: EvalBatches) -> float:
    """Top-1 accuracy in percent of one net in eval mode."""
    return accuracies({"net": net}, batches)["net"]


@torch.inference_mode()
def accuracies(nets: Mapping[str, nn.Module], batches: EvalBatches) -> dict[str, float]:
    """Top-1 accuracy in percent of each net in eval mode, in one pass over `batches`."""
    modes = {m: m.training for net in nets.values() for m in net.modules()}
    for net in nets.values():
        net.eval()
    hits: dict[str, list[Tensor]] = {name: [] for name in nets}
    total = 0
    for x, y in batches():
        for name, out in batch_logits(nets, x).items():
            hits[name].append((out.argmax(1) == y).sum())
        total += len(y)
    for module, mode in modes.items():  # each module as it was (a mean's train() sets members)
        module.training = mode
    correct = {  # one device read per net and evaluation
        name: int(torch.stack(found).sum()) if found else 0 for name, found in hits.items()
    }
    return {name: 100.0 * n / max(total, 1) for name, n in correct.items()}


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
