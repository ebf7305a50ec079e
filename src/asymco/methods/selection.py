"""ACT's selection rules and losses as pure functions on tensors (act-spec A.2, A.3).

Vocabulary (paper): RTM = robust training model, NTM = normal training model, ASS = agreement
sample selection, ASM = discrepancy sample mining, DSRW = dynamic sample re-weighting, CR =
consistency regularisation.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def memorization_gap(rtm_hits: Tensor, ntm_hits: Tensor) -> tuple[Tensor, Tensor]:
    """The label-memorization metric m = (Acc_NTM - Acc_RTM) / Acc_RTM on one batch.

    `*_hits` are (B,) bool "prediction equals the observed label". Returns (m, acc_rtm) with the
    accuracies in percent as the official code; m is 0 where Acc_RTM = 0 (the gate is closed then).
    """
    n = torch.tensor(float(len(rtm_hits)), device=rtm_hits.device)
    return memorization_gap_of_counts(rtm_hits.sum().float(), ntm_hits.sum().float(), n)


def memorization_gap_of_counts(
    rtm_hits: Tensor, ntm_hits: Tensor, samples: Tensor
) -> tuple[Tensor, Tensor]:
    """`memorization_gap` from hit counts (float scalars), e.g. summed over processes."""
    acc_rtm = rtm_hits / samples * 100
    acc_ntm = ntm_hits / samples * 100
    gap = torch.where(
        acc_rtm > 0, (acc_ntm - acc_rtm) / acc_rtm.clamp_min(1e-12), torch.zeros_like(acc_rtm)
    )
    return gap, acc_rtm


def mining_open(gap: Tensor, acc_rtm: Tensor, tau: float) -> Tensor:
    """Mining is on while the NTM has not pulled ahead of the RTM by tau (relative)."""
    return (acc_rtm != 0) & (gap < tau)


def select(
    rtm_hits: Tensor,
    ntm_hits: Tensor,
    mining: Tensor | bool,
    *,
    variant: Literal["paper_main", "web"] = "paper_main",
    use_ass: bool = True,
    use_asm: bool = True,
) -> tuple[Tensor, Tensor]:
    """The selection truth table (paper Fig. 2). Returns (selected, mined), both (B,) bool.

    paper_main: agreement A = RTM and NTM both fit the label; mining M = only the NTM fits it;
    S = A | M while mining is on, else A. The cell "only the RTM fits" is never selected.
    web (main_web.py): that cell is always selected as well.
    Without ASS every sample counts as agreed (the RTM trains on everything).
    """
    mining = torch.as_tensor(mining, device=rtm_hits.device) & use_asm
    if not use_ass:
        agreed = torch.ones_like(rtm_hits)
    elif variant == "web":
        agreed = rtm_hits
    else:
        agreed = rtm_hits & ntm_hits
    mined = mining & ~rtm_hits & ntm_hits & use_ass
    return agreed | mined, mined


def historical_weights(select_count: Tensor, epoch: int) -> Tensor:
    """DSRW: w = c / (epoch + 1), the share of epochs 0..epoch in which a sample counted as
    clean (warmup epochs count for everyone). In (0, 1] for a sample selected now."""
    return select_count.float() / (epoch + 1)


def confidence_penalty(logits: Tensor, *, clamp_logits: bool = True) -> Tensor:
    """Negative entropy, averaged over the batch (warmup penalty on the RTM).

    The official code clamps the *logits* at 1e-12 before the softmax (act-spec A.2), so negative
    logits get no gradient from the penalty; `clamp_logits=False` is the textbook version.
    """
    z = logits.clamp(min=1e-12) if clamp_logits else logits
    log_p = torch.log_softmax(z, dim=1)
    return (log_p.exp() * log_p).sum(dim=1).mean()


def pseudo_labels(selected: Tensor, label: Tensor, ema_probs: Tensor) -> Tensor:
    """CR targets: the observed label for selected samples, argmax of the EMA distribution else."""
    return torch.where(selected, label, ema_probs.argmax(dim=1))
