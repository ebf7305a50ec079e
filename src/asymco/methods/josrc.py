"""Jo-SRC (Yao et al., "Jo-SRC: A Contrastive Approach for Combating Noisy Labels", CVPR 2021),
a row of the ACT paper's Tables 1-3 and the origin of its CIFAR100N/80N protocol.

One net (the student, `net`, reported, as the official code tests it) sees two weak views of
each image, p1 = softmax(f(v1)), p2 = softmax(f(v2)); a mean teacher (`teacher`, an EMA of the
student with decay 0.99, `add_average`) sees the same views without gradient. With y~ the given
label smoothed by eps (1 - eps on the label, eps / (K - 1) elsewhere) and JS in base 2 (so it
lies in [0, 1], 0*log 0 = 0):
    clean likelihood   P_i = 1 - JS(p1_i || y~_i)   (the student's first view, as the code)
    clean              P_i >= tau(epoch)
    ID-noisy (relabel) P_i < tau and the views agree: argmax p1_i == argmax p2_i
    OOD                P_i < tau and the views disagree
    targets            t_i = y~_i (clean); q_i = (q1_i + q2_i) / 2, the teacher's mean
                       prediction (ID); softmax(q_i / T) with T = 10, nearly uniform (OOD)
    joint loss (robust epochs)
        L = (1 - alpha) * mean_i [CE(f(v1_i), t_i) + CE(f(v2_i), t_i)]
            + alpha * mean_i [s_i * (KL(p1_i || p2_i) + KL(p2_i || p1_i))]   (KL in base 2)
        with s_i = -1 for OOD samples (their views are pushed apart), +1 otherwise;
    warmup epochs: L = mean over the clean samples of CE(f(v1), y~) + CE(f(v2), y~).
The view agreement is 1 - JS of the views' predicted classes as one-hots (0 or 1);
`consistency_rule="js"` uses 1 - JS(p1 || p2) >= `tau_id`. The threshold (code): tau =
tau_clean * epoch / W_r in warmup, then linear from tau_clean to tau_max over `rise_epochs`.

Hyperparameters. Official code (config/cifar100.cfg, cifar100.py): eps 0.6, tau_clean 0.75,
tau_max 0.95 (hard-coded), alpha 0.5, warmup 10 of 200 epochs, EMA decay 0.99, OOD temperature
10, Adam lr 1e-3 (linear decay from epoch 80), batch 128, the same 7-layer CNN. Here the
harness's SGD plan; the code's warmup maps onto the engine's (`warmup_ramp_epochs` = the run's
warmup, 50) and its rise over the other 190 epochs onto the run's other epochs (`rise_epochs` =
150 - 50 = 100). Clothing1M (K = 14):
eps 0.7, tau 0.9, alpha 0.4; Food-101N: eps 0.65.

Where paper and code differ we follow the code, the paper's choice a setting: JS to the smoothed
label (`js_target="onehot"`: the paper's one-hot, under which a net fitting its smoothed targets,
p_y = 0.4, scores P = 0.60 < 0.75); OOD samples get the flat target and the negated consistency
(`ood_target="drop"`, `ood_consistency=0` drop them from each term). `method.label_smoothing`
is not used: Jo-SRC smooths its clean targets itself (`eps`).

Every rule is per sample; only the normalisation uses the global batch (`dist.global_sum`).
The teacher runs in training mode as in the code (BatchNorm on the process's own views).
`clean_scores()`: P_i of the latest batch that saw sample i; `is_selected`, `is_relabelled`,
`is_ood`: the epoch's clean, ID and OOD sets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asymco.errors import UserError
from asymco.methods.base import Batch, EpochResults, Method, MethodSettings, zero_touch

LN2 = math.log(2.0)
CHOICES = {"ood_target": ("flat", "drop"), "js_target": ("smoothed", "onehot"),
           "consistency_rule": ("argmax", "js")}


@dataclass(frozen=True, kw_only=True)
class JoSRCSettings(MethodSettings):
    name: str = "josrc"
    eps: float = 0.6
    """Label smoothing of the clean targets: 1 - eps on the given label, eps / (K - 1) on each
    other class (code: 0.6 CIFAR-100, 0.65 Food-101N, 0.7 Clothing1M)."""
    tau_clean: float = 0.75
    """Clean threshold on 1 - JS at the end of warmup (code: 0.75 CIFAR/Food, 0.9 Clothing1M)."""
    tau_max: float = 0.95
    """Clean threshold reached `rise_epochs` after warmup (code: 0.95, fixed)."""
    warmup_ramp_epochs: int | None = None
    """Epochs over which the threshold ramps from 0 to tau_clean while the engine warms up (the
    code's warmup_epochs, 10 of 200). None = the run's train.warmup_epochs."""
    warmup_selection: bool = True
    """Select by the ramped threshold in warmup (code); False = every sample (engine's rule)."""
    rise_epochs: int | None = None
    """Robust epochs over which the threshold rises from tau_clean to tau_max (the code: all
    its epochs after warmup). None = train.epochs - train.warmup_epochs."""
    alpha: float = 0.5
    """Weight of the consistency term; 1 - alpha weighs the classification term."""
    ema_decay: float = 0.99
    """Decay of the mean teacher (code: 0.99, updated after every step)."""
    ood_temperature: float = 10.0
    """T of the OOD target softmax(q / T) over the teacher's probabilities q (code: 10)."""
    ood_target: Literal["flat", "drop"] = "flat"
    """OOD samples' classification target: "flat" = softmax(q / T) (code), "drop" = none."""
    ood_consistency: float = -1.0
    """Sign (weight) of OOD samples' consistency term: -1 pushes their views apart (code)."""
    js_target: Literal["smoothed", "onehot"] = "smoothed"
    """The clean likelihood's reference: the smoothed label (code) or the one-hot (paper)."""
    consistency_rule: Literal["argmax", "js"] = "argmax"
    """ID vs OOD: "argmax" = the views' classes agree (code); "js" = 1 - JS(p1||p2) >= tau_id."""
    tau_id: float = 0.5
    """Threshold of the "js" consistency rule (not given by the paper or code; the midpoint)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("eps", "tau_clean", "tau_max", "alpha", "ema_decay", "tau_id"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise UserError(f"method.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.eps == 1.0 or self.ema_decay == 1.0:
            raise UserError("method.eps and method.ema_decay must be below 1")
        if self.tau_max < self.tau_clean:
            raise UserError("method.tau_max must be >= method.tau_clean")
        if min(self.warmup_ramp_epochs or 0, self.rise_epochs or 0) < 0:
            raise UserError("method.warmup_ramp_epochs and method.rise_epochs must be >= 0")
        if self.ood_temperature <= 0:
            raise UserError("method.ood_temperature must be positive")
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"method.{key} must be one of {allowed}")


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """(B,) Jensen-Shannon divergence in base 2 of the rows of two (B, K) distributions, in
    [0, 1]; 0 * log 0 = 0, so one-hot rows are allowed."""
    p, q = p.float(), q.float()
    m = 0.5 * (p + q)
    kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(1)
    kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(1)
    return (0.5 * (kl_pm + kl_qm) / LN2).clamp(0.0, 1.0)


def symmetric_kl_base2(logits1: Tensor, logits2: Tensor) -> Tensor:
    """(B,) KL(p1||p2) + KL(p2||p1) in base 2 = sum_k (p1 - p2)(log2 p1 - log2 p2), from
    log-softmax in float32; gradient flows into both sides (the code detaches neither)."""
    log_p1 = F.log_softmax(logits1.float(), dim=1)
    log_p2 = F.log_softmax(logits2.float(), dim=1)
    return ((log_p1.exp() - log_p2.exp()) * (log_p1 - log_p2)).sum(1) / LN2


def smoothed_labels(label: Tensor, num_classes: int, eps: float) -> Tensor:
    """(B, K): 1 - eps on each label, eps / (K - 1) on every other class."""
    target = torch.full((len(label), num_classes), eps / (num_classes - 1), device=label.device)
    return target.scatter_(1, label[:, None], 1.0 - eps)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """(B,) -sum_k t_k log softmax(z)_k in float32."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1)


def clean_threshold(epoch: int, robust_epoch: int, *, warmup: bool, settings: JoSRCSettings,
                    ramp_epochs: int, rise_epochs: int) -> float:
    """tau of this epoch: tau_clean * min(epoch / W_r, 1) in warmup (0 if it does not select),
    then tau_clean + (tau_max - tau_clean) * min(r / R, 1), r = 0-based robust epoch, with
    W_r = `ramp_epochs` and R = `rise_epochs`."""
    s = settings
    if warmup:
        if not s.warmup_selection:
            return 0.0
        ramp = 1.0 if ramp_epochs == 0 else min(epoch / ramp_epochs, 1.0)
        return s.tau_clean * ramp
    rise = 1.0 if rise_epochs == 0 else min(max(robust_epoch, 0) / rise_epochs, 1.0)
    return s.tau_clean + (s.tau_max - s.tau_clean) * rise


def split_samples(
    p_clean: Tensor, threshold: float | Tensor, agree: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(clean, ID-noisy, OOD) (B,) bool masks: clean = P >= tau; the rest split by whether the
    two views agree (ID, to relabel) or not (OOD)."""
    clean = p_clean >= threshold
    return clean, ~clean & agree, ~clean & ~agree


def views_agree(p1: Tensor, p2: Tensor, *, rule: str, tau_id: float) -> Tensor:
    """(B,) bool: the two views are consistent, by argmax agreement (1 - JS of the predicted
    one-hots is 1) or by 1 - JS(p1 || p2) >= tau_id."""
    if rule == "argmax":
        return p1.argmax(1) == p2.argmax(1)
    return 1.0 - js_divergence(p1, p2) >= tau_id


def josrc_targets(
    smoothed: Tensor, teacher: Tensor, id_noisy: Tensor, ood: Tensor, temperature: float
) -> Tensor:
    """(B, K) classification targets: the smoothed label, the teacher's prediction for ID-noisy
    samples, softmax(teacher / T) (nearly uniform) for OOD ones."""
    target = torch.where(id_noisy[:, None], teacher, smoothed)
    return torch.where(ood[:, None], F.softmax(teacher / temperature, dim=1), target)


class JoSRC(Method):
    """Jo-SRC: JS-based clean/ID/OOD split, mean-teacher relabelling, joint loss (module doc)."""

    Settings = JoSRCSettings
    settings: JoSRCSettings
    reported_net = "net"  # the official code tests the student, not the mean teacher
    progress_figures = ("loss", "clean_share", "id_share")
    paper_numbers: ClassVar[Mapping[str, float]] = {
        "cifar100n-sym20": 58.15,
        "cifar100n-sym80": 23.80,
        "cifar100n-asym40": 38.52,
        "cifar80n-sym20": 65.83,
        "cifar80n-sym80": 29.76,
        "cifar80n-asym40": 53.03,
        "web-aircraft": 82.73,
        "web-bird": 81.22,
        "web-car": 88.13,
        "food101n": 86.66,
    }

    def setup(self, make_model: Callable[[], nn.Module], observed_labels: Tensor) -> None:
        self.add_net("net", make_model())
        self.add_average("teacher", of="net", decay=self.settings.ema_decay)
        n = self.num_samples
        self.register_buffer("is_selected", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("select_count", torch.zeros(n, dtype=torch.int32))
        self.register_buffer("is_relabelled", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("is_ood", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("clean_score", torch.ones(n))  # 1: no evidence against the label
        # Decided at the epoch's start, kept in buffers so a mid-epoch resume sees them.
        self.register_buffer("robust_start", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("threshold", torch.tensor(0.0))

    def train_views(self) -> tuple[str, ...]:
        return ("weak", "weak")

    def set_phase(self, epoch: int, *, warmup: bool) -> None:
        super().set_phase(epoch, warmup=warmup)
        if not warmup and int(self.robust_start) < 0:  # one host read per epoch, not per step
            self.robust_start.fill_(epoch)
        robust_epoch = epoch - int(self.robust_start)
        s = self.settings
        ramp = self.run_warmup_epochs if s.warmup_ramp_epochs is None else s.warmup_ramp_epochs
        rise = self.run_epochs - self.run_warmup_epochs if s.rise_epochs is None else s.rise_epochs
        tau = clean_threshold(epoch, robust_epoch, warmup=warmup, settings=s, ramp_epochs=ramp,
                              rise_epochs=max(rise, 0))
        self.threshold.fill_(tau)

    def on_epoch_start(self, epoch: int, *, warmup: bool) -> None:
        super().on_epoch_start(epoch, warmup=warmup)
        for mask in (self.is_selected, self.is_relabelled, self.is_ood):
            mask.zero_()  # the judgements report this epoch only

    def clean_scores(self) -> Tensor:
        return self.clean_score

    def clean_cut(self) -> float:
        return float(self.threshold)  # Jo-SRC's own line: clean iff P >= tau

    def judgements(self) -> dict[str, Tensor]:
        return {"selected": self.is_selected, "relabelled": self.is_relabelled, "ood": self.is_ood}

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        s, label = self.settings, batch.label
        z1, z2 = self.fwd["net"](batch.views[0], batch.views[1])  # (B, K) each, one DDP call
        p1, p2, clean, id_noisy, ood, target = self._judge(batch, z1, z2)
        ce = soft_cross_entropy(z1, target) + soft_cross_entropy(z2, target)  # (B,)
        size = torch.tensor(len(label), device=label.device)
        counts = self.dist.global_sum(torch.stack([clean.sum(), (~ood).sum(), size]).float())
        world = self.dist.world
        if self.warmup:  # the code: CE with smoothed labels over the clean samples only
            # torch.where, not a product: a non-finite loss outside the selection stays out
            loss_cls = torch.where(clean, ce, 0.0).sum() * (world / counts[0].clamp_min(1))
            loss_cons = torch.zeros((), device=label.device)
            loss = loss_cls + zero_touch(z1) + zero_touch(z2)
        else:
            cls_count = counts[1] if s.ood_target == "drop" else counts[2]
            loss_cls, loss_cons = joint_terms(z1, z2, ce, ood, s, (cls_count, counts[2]), world)
            loss = (1 - s.alpha) * loss_cls + s.alpha * loss_cons  # touches every logit
        return {
            "loss": loss,
            "loss_cls": loss_cls.detach(),
            "loss_cons": loss_cons.detach(),
            "clean_share": clean.float().mean(),
            "id_share": id_noisy.float().mean(),
            "ood_share": ood.float().mean(),
            "threshold": self.threshold.clone(),
            "view_consistency": (1.0 - js_divergence(p1, p2)).mean(),
            "empty_selection": (counts[0] == 0).float(),
            "train_acc": (z1.detach().argmax(1) == label).float().mean() * 100,
        }

    @torch.no_grad()
    def _judge(self, batch: Batch, z1: Tensor, z2: Tensor) -> tuple[Tensor, ...]:
        """(p1, p2, clean, ID-noisy, OOD, targets) of the batch, recorded in the buffers."""
        s, label = self.settings, batch.label
        p1, p2 = F.softmax(z1.float(), 1), F.softmax(z2.float(), 1)
        smoothed = smoothed_labels(label, self.num_classes, s.eps)
        onehot = s.js_target == "onehot"
        reference = F.one_hot(label, self.num_classes) if onehot else smoothed
        p_clean = 1.0 - js_divergence(p1, reference)  # the student's first view, as the code
        agree = views_agree(p1, p2, rule=s.consistency_rule, tau_id=s.tau_id)
        clean, id_noisy, ood = split_samples(p_clean, self.threshold, agree)
        if self.warmup:  # warmup only selects: no relabelling, no OOD
            id_noisy, ood = torch.zeros_like(clean), torch.zeros_like(clean)
            target = smoothed
        else:  # the mean teacher's prediction, averaged over the two views, relabels
            teacher = self.averages["teacher"]
            q1, q2 = (F.softmax(teacher(v).float(), 1) for v in batch.views[:2])
            target = josrc_targets(smoothed, 0.5 * (q1 + q2), id_noisy, ood, s.ood_temperature)
        self._record(batch.index, clean, id_noisy, ood, p_clean)
        return p1, p2, clean, id_noisy, ood, target

    def _record(
        self, index: Tensor, clean: Tensor, id_noisy: Tensor, ood: Tensor, p_clean: Tensor
    ) -> None:
        # Indices are unique within an epoch, so each count grows by at most one per epoch.
        self.is_selected[index] = clean
        self.select_count[index] += clean.to(torch.int32)
        self.is_relabelled[index] = id_noisy
        self.is_ood[index] = ood
        self.clean_score[index] = p_clean

    # ------------------------------------------------------------------ what Jo-SRC reports

    def epoch_figures(self, results: EpochResults, means: dict[str, float]) -> dict:
        figures = super().epoch_figures(results, means)  # test_acc_teacher
        for name in ("relabelled", "ood"):
            scores = results.scores.get(name, {})
            figures[f"{name}_fraction"] = scores.get("fraction")
            # The share of the set whose label was in fact correct: lower is better.
            figures[f"{name}_clean_share"] = scores.get("precision")
        return figures

    def net_words(self, row: dict) -> list[str]:
        return [f"teacher {row['test_acc_teacher']:.2f}%"]

    def selection_words(self, row: dict) -> list[str]:
        words = super().selection_words(row)
        if row.get("relabelled_fraction") is not None and not self.warmup:
            shares = 100 * row["relabelled_fraction"], 100 * row["ood_fraction"]
            words.append(f"relabel {shares[0]:.1f}% ood {shares[1]:.1f}%")
        return words


def joint_terms(
    z1: Tensor,
    z2: Tensor,
    ce: Tensor,
    ood: Tensor,
    settings: JoSRCSettings,
    counts: tuple[Tensor, Tensor],
    world: int,
) -> tuple[Tensor, Tensor]:
    """The robust epochs' (classification, consistency) terms from the (B, K) logits of the two
    views, ce = (B,) CE(z1, t) + CE(z2, t) and the (B,) OOD mask; each sum is divided by a 0-d
    global count of `counts` (the classification term's samples, the batch) and scaled by
    `world` (DDP averages the processes' gradients)."""
    keep = ~ood if settings.ood_target == "drop" else torch.ones_like(ood)
    loss_cls = torch.where(keep, ce, 0.0).sum() * (world / counts[0].clamp_min(1))
    sign = torch.where(ood, settings.ood_consistency, 1.0)
    loss_cons = (sign * symmetric_kl_base2(z1, z2)).sum() * (world / counts[1].clamp_min(1))
    return loss_cls, loss_cons
