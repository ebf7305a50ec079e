"""DivideMix (Li, Socher & Hoi, "DivideMix: Learning with Noisy Labels as Semi-supervised
Learning", ICLR 2020), a row of the ACT paper's Tables 1-3.

Rule (paper Algorithm 1). Two nets; after a cross-entropy warmup (plus, for asymmetric noise,
the confidence penalty sum_k p_k log p_k, the negative entropy), every epoch:
- co-divide: each net's per-sample cross-entropy l_i over the un-augmented training set is
  min-max normalised to [0, 1] and fitted with a two-component GMM; w_i = p(g | l_i), g the
  component with the smaller mean, is the clean posterior. Net m trains with the *other* net's
  division: labelled X = {w_i > tau}, unlabelled U = the rest;
- co-refinement on X: y'_i = sharpen(w_i y_i + (1 - w_i) (p_m(x1_i) + p_m(x2_i)) / 2, T);
- co-guessing on U: q_i = sharpen(mean of p_1, p_2 on x1_i and x2_i, T);
  sharpen(p, T)_k = p_k^(1/T) / sum_j p_j^(1/T);
- MixMatch: lambda ~ Beta(alpha, alpha), lambda' = max(lambda, 1 - lambda); every row of the
  concatenated views [x1; x2] (2B rows) is mixed with a row of a random permutation of them:
  x~ = lambda' x_a + (1 - lambda') x_b, and likewise its target;
- loss of net m: L_X + lambda_u(t) L_U + L_reg, with L_X = -mean_{rows a in X} sum_k t_k log
  p_k(x~), L_U = mean_{rows a in U} mean_k (p_k(x~) - t_k)^2, lambda_u(t) = lambda_u *
  clip((t - t_warmup) / 16, 0, 1) on the fractional epoch t, and the uniform prior
  L_reg = sum_k pi_k log(pi_k / mean_rows p_k(x~)), pi_k = 1 / K.
The reported net ("mean") predicts log((p_1 + p_2) / 2), the two nets' averaged prediction;
`clean_scores()` is the mean of the two posteriors of the last division (None before one), and
`selected()` marks it above tau (every sample in warmup).

Paper (CIFAR-100, PreAct ResNet-18): 300 epochs, warmup 30, SGD lr 0.02 (/10 at 150), batch 64
+ 64, T = 0.5, alpha = 4, tau = 0.5 (0.6 at 90 % noise), GMM max_iter 10, tol 1e-2, reg_covar
5e-4; lambda_u (appendix Table 7) 25 at 20 % symmetric noise, 150 at 50/80/90 %; 0 for the only
asymmetric setting (CIFAR-10 40 %; the paper has no CIFAR-100 asymmetric run). Here: the common
protocol (cnn7, 150 epochs, warmup 50, lr 0.01 cosine, batch 128); the rest as in the paper.

Adaptations (the engine visits each sample once per epoch): instead of separate labelled and
unlabelled loaders and a net1 epoch then a net2 epoch, every step trains both nets on one batch,
each splitting it by the other net's division and co-guessing with both nets' current
train-mode predictions (no gradient; the code puts the peer in eval mode). Each net draws its
own lambda and permutation. The GMM has a fixed random_state (every process and a resumed run
get the same division); the code's 5-epoch loss averaging at 90 % noise is left out. Per
process (torchrun): mixup pairs and the prior term (a batch statistic); L_X, L_U and the warmup
loss are normalised by global counts.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from torch import Tensor, nn

from asymco.config import NoiseConfig, check_seed
from asymco.errors import UserError
from asymco.methods.base import Batch, MeanPrediction, Method, MethodSettings

NETS = ("net1", "net2")


@dataclass(frozen=True, kw_only=True)
class DivideMixSettings(MethodSettings):
    name: str = "dividemix"
    lambda_u: float | None = None
    """Weight of the unlabelled MSE after its ramp-up. None = the paper's CIFAR-100 value for
    the noise: 25 at symmetric rate <= 0.2, 150 above; 0 for asymmetric noise (the paper's
    CIFAR-10 value) and for real noise (`none`: the Clothing1M/WebVision scripts); 25 for
    `human` (the CIFAR-N benchmark's choice)."""
    p_threshold: float | None = None
    """tau: clean-posterior threshold of the labelled set. None = 0.5, 0.6 at >= 90 % noise."""
    conf_penalty: float | None = None
    """Weight of the warmup confidence penalty (negative entropy). None = 1 for asymmetric
    noise and real noise (`none`, as the Clothing1M script), else 0."""
    temperature: float = 0.5
    """T: sharpening temperature of the refined and guessed targets."""
    alpha: float = 4.0
    """Beta(alpha, alpha) parameter of mixup."""
    rampup_epochs: int = 16
    """Epochs of the linear ramp of lambda_u after warmup (0 = full weight at once)."""
    prior_weight: float = 1.0
    """Weight of the uniform-prior regulariser."""
    gmm_max_iter: int = 10
    """EM iterations of the GMM fit."""
    gmm_tol: float = 1e-2
    """Convergence tolerance of the GMM fit."""
    gmm_reg_covar: float = 5e-4
    """Variance added to the GMM's covariances."""
    gmm_seed: int = 0
    """random_state of the GMM (the code leaves it unseeded)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.p_threshold is not None and not 0 <= self.p_threshold < 1:
            raise UserError(f"method.p_threshold must be in [0, 1), got {self.p_threshold}")
        for key in ("temperature", "alpha", "gmm_max_iter", "gmm_tol"):
            if not getattr(self, key) > 0:
                raise UserError(f"method.{key} must be positive, got {getattr(self, key)}")
        for key in ("lambda_u", "conf_penalty", "rampup_epochs", "prior_weight", "gmm_reg_covar"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise UserError(f"method.{key} must be >= 0, got {value}")
        check_seed(self.gmm_seed, "method.gmm_seed")

    def resolved(self, noise: NoiseConfig) -> DivideMixSettings:
        """The paper's values for this noise where a setting is left to the run (None)."""
        asym, real = noise.kind == "asymmetric", noise.kind == "none"
        lambda_u = 150.0 if noise.kind == "symmetric" and noise.rate > 0.2 else 25.0
        lambda_u = 0.0 if asym or real else lambda_u
        high = noise.kind == "symmetric" and noise.rate >= 0.9
        return dataclasses.replace(
            self,
            lambda_u=self.lambda_u if self.lambda_u is not None else lambda_u,
            p_threshold=self.p_threshold if self.p_threshold is not None else 0.5 + 0.1 * high,
            conf_penalty=float(asym or real) if self.conf_penalty is None else self.conf_penalty,
        )


# ------------------------------------------------------------------------- pure functions


def gmm_clean_posterior(
    loss: Tensor, *, max_iter: int = 10, tol: float = 1e-2, reg_covar: float = 5e-4, seed: int = 0
) -> Tensor:
    """(N,) posterior of the small-mean component of a 2-GMM fitted to min-max normalised `loss`
    (N,); all ones when it cannot be split (fewer than 2, or all equal)."""
    x = loss.detach().double().cpu().numpy()
    span = x.max() - x.min() if len(x) else 0.0
    if len(x) < 2 or span <= 0:
        return torch.ones_like(loss, dtype=torch.float32)
    x = ((x - x.min()) / span)[:, None]
    gmm = GaussianMixture(2, max_iter=max_iter, tol=tol, reg_covar=reg_covar, random_state=seed)
    with warnings.catch_warnings():  # 10 EM steps often stop short of tol: expected
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(x)
    clean = gmm.predict_proba(x)[:, int(np.argmin(gmm.means_[:, 0]))]
    return torch.from_numpy(clean).float().to(loss.device)


def sharpen(p: Tensor, temperature: float) -> Tensor:
    """Rows of `p` (B, K) raised to 1/T and renormalised."""
    q = p.pow(1.0 / temperature)
    return q / q.sum(1, keepdim=True)


def co_refined_targets(
    onehot: Tensor, w: Tensor, probs: Sequence[Tensor], temperature: float
) -> Tensor:
    """sharpen(w y + (1 - w) mean(probs)): the given labels (B, K) blended by the clean
    posterior w (B,) with the trained net's mean prediction over its views."""
    mean = torch.stack(list(probs)).mean(0)
    return sharpen(w[:, None] * onehot + (1 - w[:, None]) * mean, temperature)


def co_guessed_targets(probs: Sequence[Tensor], temperature: float) -> Tensor:
    """sharpen(mean(probs)): both nets' predictions on both views, averaged."""
    return sharpen(torch.stack(list(probs)).mean(0), temperature)


def mixup_lambda(alpha: float) -> float:
    """lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha), from torch's CPU RNG
    (checkpointed with a run, so a resumed run draws the same)."""
    lam = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    return max(lam, 1.0 - lam)


def uniform_prior_penalty(logits: Tensor) -> Tensor:
    """sum_k pi_k log(pi_k / mean_rows p_k), pi uniform: KL(prior || mean prediction)."""
    mean = F.softmax(logits.float(), dim=1).mean(0)
    prior = torch.full_like(mean, 1.0 / mean.numel())
    return (prior * (prior.log() - mean.log())).sum()


def negative_entropy(logits: Tensor) -> Tensor:
    """mean_rows sum_k p_k log p_k: the confidence penalty (minimising it spreads p)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return (log_p.exp() * log_p).sum(1).mean()


def mixmatch_losses(
    logits: Tensor, targets: Tensor, labelled: Tensor, counts: Tensor, world: int
) -> tuple[Tensor, Tensor]:
    """(L_X, L_U): soft cross-entropy over the labelled rows and per-row mean squared error
    over the others, each summed here and divided by its global row count `counts` (2,)
    times `world`; an empty part gives an exact 0 that still depends on every logit."""
    log_p = F.log_softmax(logits.float(), dim=1)
    soft_ce = -(targets * log_p).sum(1)
    mse = (log_p.exp() - targets).pow(2).mean(1)
    scale = world / counts.clamp_min(1)
    lx = torch.where(labelled, soft_ce, torch.zeros_like(soft_ce)).sum() * scale[0]
    lu = torch.where(labelled, torch.zeros_like(mse), mse).sum() * scale[1]
    return lx, lu


class DivideMix(Method):
    """DivideMix: co-divided GMM split + MixMatch with co-refinement/co-guessing (module doc)."""

    Settings = DivideMixSettings
    settings: DivideMixSettings
    reported_net = "mean"
    progress_figures = ("loss", "labelled_fraction")
    # The ACT paper's Tables 1-3, as `Standard.paper_numbers`.
    paper_numbers: ClassVar[Mapping[str, float]] = {
        "cifar100n-sym20": 57.76,
        "cifar100n-sym80": 28.98,
        "cifar100n-asym40": 43.75,
        "cifar80n-sym20": 57.47,
        "cifar80n-sym80": 21.18,
        "cifar80n-asym40": 37.47,
        "web-aircraft": 82.48,
        "web-bird": 74.40,
        "web-car": 84.27,
        "food101n": 85.88,
    }

    def setup(self, make_model: Callable[[], nn.Module], observed_labels: Tensor) -> None:
        s = self.settings
        if None in (s.lambda_u, s.p_threshold, s.conf_penalty):
            raise UserError("method.lambda_u, method.p_threshold and method.conf_penalty depend "
                            "on the noise: set them, or let the run fill them (`resolved`)")
        for name in NETS:  # independent initialisations: each net filters the other's errors
            self.add_net(name, make_model())
        # A plain dict, not a submodule: the nets are optimised and saved once, under `nets`.
        self._mean = {"mean": MeanPrediction([self.nets[name] for name in NETS])}
        n = self.num_samples
        self.register_buffer("observed", observed_labels.clone(), persistent=False)
        # Column m: net m's clean posterior, the division the *other* net trains with.
        self.register_buffer("clean_prob", torch.ones(n, 2))
        self.register_buffer("is_selected", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("select_count", torch.zeros(n, dtype=torch.int32))
        self.register_buffer("divided", torch.zeros((), dtype=torch.bool))
        self.register_buffer("robust_start", torch.full((), -1, dtype=torch.long))
        self.register_buffer("seen", torch.zeros(()))  # samples trained this epoch (ramp-up)

    def on_epoch_start(self, epoch: int, *, warmup: bool) -> None:
        super().on_epoch_start(epoch, warmup=warmup)
        self.seen.zero_()
        if not warmup and self.robust_start < 0:  # the ramp-up starts after the warmup
            self.robust_start.fill_(epoch)

    def train_views(self) -> tuple[str, ...]:
        return ("weak",) if self.warmup else ("weak", "weak")

    def training_pass_nets(self) -> tuple[str, ...]:
        return () if self.warmup else NETS

    def on_training_pass(self, logits: dict[str, Tensor]) -> None:
        s = self.settings
        for column, name in enumerate(NETS):
            loss = self.per_sample_ce(logits[name], self.observed.to(logits[name].device))
            self.clean_prob[:, column] = gmm_clean_posterior(
                loss, max_iter=s.gmm_max_iter, tol=s.gmm_tol, reg_covar=s.gmm_reg_covar,
                seed=s.gmm_seed).to(self.clean_prob.device)
        self.divided.fill_(True)

    def clean_scores(self) -> Tensor | None:
        return self.clean_prob.mean(1) if bool(self.divided) else None

    def eval_nets(self) -> dict[str, nn.Module]:
        return {**self._mean, **self.nets}

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        return self._warmup_step(batch) if self.warmup else self._robust_step(batch)

    def net_words(self, row: dict) -> list[str]:
        return [f"net1 {row['test_acc_net1']:.2f}%", f"net2 {row['test_acc_net2']:.2f}%"]

    def _record(self, index: Tensor, chosen: Tensor) -> None:
        self.is_selected[index] = chosen
        self.select_count[index] += chosen.to(torch.int32)

    def _warmup_step(self, batch: Batch) -> dict[str, Tensor]:
        label, b = batch.label, len(batch.label)
        total = self.dist.global_sum(torch.tensor(float(b), device=label.device))
        scale = self.dist.world * b / total  # a mean over the global batch, as DDP averages
        out, loss = {}, 0
        for name in NETS:
            z = self.fwd[name](batch.weak)
            ce = self.per_sample_ce(z, label).mean() * scale
            penalty = negative_entropy(z) * scale
            loss = loss + ce + self.settings.conf_penalty * penalty
            out[f"loss_{name}"] = ce.detach()
            out[f"train_acc_{name}"] = (z.argmax(1) == label).float().mean() * 100
        self._record(batch.index, torch.ones_like(batch.index, dtype=torch.bool))
        return {"loss": loss, **out}

    def _ramped_lambda_u(self, global_batch: Tensor) -> Tensor:
        """lambda_u * clip((t - t_warmup) / 16, 0, 1) on the fractional epoch t (the share of
        this epoch's samples trained before this batch); advances that share."""
        s = self.settings
        ramp = (self.epoch - self.robust_start + self.seen / self.num_samples).float()
        self.seen += global_batch
        if not s.rampup_epochs:
            return torch.full_like(ramp, s.lambda_u)
        return s.lambda_u * (ramp / s.rampup_epochs).clamp(0, 1)

    def _robust_step(self, batch: Batch) -> dict[str, Tensor]:
        s, (x1, x2), label = self.settings, batch.views[:2], batch.label
        b, device = len(label), label.device
        post = self.clean_prob[batch.index]  # (B, 2): net1's and net2's posteriors
        labelled = (post > s.p_threshold).flip(1)  # column m: net m's labelled set (peer's)
        size = labelled.new_full((), b, dtype=torch.long)  # global [|X_1|, |X_2|, B] next
        counts = self.dist.global_sum(torch.stack([*labelled.sum(0), size]).float())
        lambda_u = self._ramped_lambda_u(counts[2])
        # Mixed inputs depend on no prediction: draw them first, so each net runs once.
        views = torch.cat([x1, x2])  # (2B, ...): rows [x1; x2], permuted across both parts
        draws = [(mixup_lambda(s.alpha), torch.randperm(2 * b, device=device)) for _ in NETS]
        outs = [
            self.fwd[name](x1, x2, lam * views + (1 - lam) * views[perm])
            for name, (lam, perm) in zip(NETS, draws, strict=True)
        ]
        with torch.no_grad():
            probs = [[F.softmax(z.detach().float(), dim=1) for z in out[:2]] for out in outs]
            guess = co_guessed_targets([*probs[0], *probs[1]], s.temperature)
            onehot = F.one_hot(label, self.num_classes).float()
        loss, figs = 0, {}
        for m, name in enumerate(NETS):
            with torch.no_grad():  # co-divide: w is the peer's posterior
                refined = co_refined_targets(onehot, post[:, 1 - m], probs[m], s.temperature)
                target = torch.where(labelled[:, m, None], refined, guess).repeat(2, 1)
                lam, perm = draws[m]
                target = lam * target + (1 - lam) * target[perm]
            mixed = outs[m][2]
            rows = 2 * torch.stack([counts[m], counts[2] - counts[m]])  # 2 views per sample
            lx, lu = mixmatch_losses(mixed, target, labelled[:, m].repeat(2), rows, self.dist.world)
            prior = uniform_prior_penalty(mixed)
            loss = loss + lx + lambda_u * lu + s.prior_weight * prior
            figs.update({f"loss_x_{name}": lx.detach(), f"loss_u_{name}": lu.detach(),
                         f"prior_{name}": prior.detach(),
                         f"train_acc_{name}": (outs[m][0].argmax(1) == label).float().mean() * 100})
        self._record(batch.index, post.mean(1) > s.p_threshold)
        return {
            "loss": loss,
            "lambda_u": lambda_u.detach(),
            "labelled_fraction": (counts[0] + counts[1]) / (2 * counts[2]),
            "empty_selection": ((counts[0] == 0) | (counts[1] == 0)).float(),
            **figs,
        }
