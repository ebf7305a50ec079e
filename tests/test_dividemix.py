"""DivideMix: the GMM co-divide, the co-refined and co-guessed targets, mixup, the losses on a
worked example (value and gradient, both nets, each with its peer's division), the edge cases,
state round-trip and a tiny run through the command line."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

import asymco.methods.dividemix as dm
from asymco.batch import Batch
from asymco.cli import main
from asymco.config import NoiseConfig
from asymco.errors import UserError
from asymco.methods import METHODS, list_methods
from asymco.methods.dividemix import DivideMix

K = 3
LABELS = torch.tensor([0, 1, 2, 0])
# Each sample's logits under net1 / net2 (one-hot inputs make a Linear a lookup table).
Z1 = torch.tensor([[2.0, 0.5, 0.0], [0.3, 1.0, 0.2], [1.5, 0.0, 0.4], [0.1, 0.2, 1.2]])
Z2 = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.2, 2.0], [0.2, 0.3, 1.8], [1.1, 0.9, 0.0]])
# Column 0: net1's clean posterior (the division net2 trains with); column 1: net2's.
POST = torch.tensor([[0.9, 0.7], [0.8, 0.3], [0.2, 0.95], [0.1, 0.4]])
SYM = dict(lambda_u=25.0, p_threshold=0.5, conf_penalty=0.0)


def make(n: int = 4, z1=Z1, z2=Z2, **settings) -> DivideMix:
    labels = LABELS.repeat(n // 4)
    method = DivideMix(
        DivideMix.Settings(**{**SYM, **settings}),
        num_classes=K,
        observed_labels=labels,
        make_model=lambda: nn.Linear(n, K, bias=False),
    )
    with torch.no_grad():
        method.nets["net1"].weight.copy_(z1.repeat(n // 4, 1).T)
        method.nets["net2"].weight.copy_(z2.repeat(n // 4, 1).T)
    return method


def run_step(method: DivideMix, index, *, warmup: bool, epoch: int = 0):
    method.on_epoch_start(epoch, warmup=warmup)
    x = torch.eye(method.num_samples)[index]
    views = (x,) if warmup else (x, x)
    method.zero_grad(set_to_none=True)
    out = method.training_step(Batch(index, views, method.observed[index]))
    out["loss"].backward()
    return out


# ---------------------------------------------------------------- by hand, in plain Python


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def sharpen_by_hand(p: list[float], t: float) -> list[float]:
    q = [v ** (1 / t) for v in p]
    return [v / sum(q) for v in q]


def test_gmm_gives_the_small_loss_cluster_a_posterior_near_one():
    loss = torch.tensor([0.10, 0.12, 0.08, 0.11, 0.09, 0.13, 2.0, 2.1, 1.9, 2.05])
    post = dm.gmm_clean_posterior(loss)
    assert (post[:6] > 0.99).all() and (post[6:] < 0.01).all()
    assert torch.equal(post, dm.gmm_clean_posterior(loss))  # fixed random_state
    assert torch.equal(dm.gmm_clean_posterior(torch.ones(5)), torch.ones(5))  # nothing to split


def test_training_pass_divides_each_net_for_its_peer():
    method = make(8)
    method.on_epoch_start(3, warmup=False)
    assert method.training_pass_nets() == ("net1", "net2") and method.clean_scores() is None
    labels = method.observed
    fits = torch.nn.functional.one_hot(labels, K).float() * 8  # fits its label: small loss
    misses = torch.nn.functional.one_hot((labels + 1) % K, K).float() * 8
    first = torch.arange(8)[:, None] < 4
    method.on_training_pass({"net1": torch.where(first, fits, misses),
                             "net2": torch.where(first, misses, fits)})
    assert (method.clean_prob[:4, 0] > 0.99).all() and (method.clean_prob[4:, 0] < 0.01).all()
    assert (method.clean_prob[:4, 1] < 0.01).all() and (method.clean_prob[4:, 1] > 0.99).all()
    assert torch.allclose(method.clean_scores(), method.clean_prob.mean(1))


def test_sharpen_co_refined_and_co_guessed_targets_by_hand():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    assert torch.allclose(dm.sharpen(p, 0.5), torch.tensor([[0.25, 0.09, 0.04]]) / 0.38)
    pa, pb = torch.tensor([[0.2, 0.5, 0.3]]), torch.tensor([[0.4, 0.3, 0.3]])
    # 0.6 * [1, 0, 0] + 0.4 * [0.3, 0.4, 0.3] = [0.72, 0.16, 0.12], squared and normalised
    refined = dm.co_refined_targets(torch.tensor([[1.0, 0, 0]]), torch.tensor([0.6]), [pa, pb], 0.5)
    assert torch.allclose(refined, torch.tensor([[0.5184, 0.0256, 0.0144]]) / 0.5584)
    pc, pd = torch.tensor([[0.6, 0.2, 0.2]]), torch.tensor([[0.0, 0.2, 0.8]])
    # mean of the four: [0.3, 0.3, 0.4]; squared: [0.09, 0.09, 0.16] / 0.34
    guess = dm.co_guessed_targets([pa, pb, pc, pd], 0.5)
    assert torch.allclose(guess, torch.tensor([[0.09, 0.09, 0.16]]) / 0.34)


def test_mixup_lambda_is_the_larger_share():
    torch.manual_seed(0)
    draws = [dm.mixup_lambda(4.0) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in draws) and len(set(draws)) == 200


def test_uniform_prior_penalty_value_and_gradient():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])  # mean [0.5, 0.25, 0.25]
    expected = (math.log((1 / 3) / 0.5) + 2 * math.log((1 / 3) / 0.25)) / 3
    assert dm.uniform_prior_penalty(probs.log()).item() == pytest.approx(expected, rel=1e-6)
    flat = torch.zeros(2, K, requires_grad=True)  # uniform already: zero penalty, zero gradient
    dm.uniform_prior_penalty(flat).backward()
    assert flat.grad.abs().max() < 1e-7


def test_resolved_settings_follow_the_noise():
    s = DivideMix.Settings()
    sym20, sym80 = s.resolved(NoiseConfig(rate=0.2)), s.resolved(NoiseConfig(rate=0.8))
    asym = s.resolved(NoiseConfig(kind="asymmetric", rate=0.4))
    assert (sym20.lambda_u, sym80.lambda_u, asym.lambda_u) == (25.0, 150.0, 0.0)
    assert (sym20.conf_penalty, asym.conf_penalty) == (0.0, 1.0)
    assert sym80.p_threshold == 0.5 and s.resolved(NoiseConfig(rate=0.9)).p_threshold == 0.6
    assert s.resolved(NoiseConfig(kind="none", rate=0.0)).conf_penalty == 1.0
    assert DivideMix.Settings(lambda_u=5).resolved(NoiseConfig(rate=0.8)).lambda_u == 5
    with pytest.raises(UserError, match=r"method\.temperature"):
        DivideMix.Settings(temperature=0)
    with pytest.raises(UserError, match=r"method\.lambda_u"):
        make(lambda_u=None)


@pytest.mark.parametrize("penalty", [0.0, 1.0])
def test_warmup_is_cross_entropy_plus_the_confidence_penalty_when_on(penalty):
    method = make(conf_penalty=penalty)
    out = run_step(method, torch.arange(4), warmup=True)
    expected = 0.0
    for z in (Z1, Z2):
        for i, y in enumerate(LABELS.tolist()):
            p = softmax(z[i].tolist())
            expected += (-math.log(p[y]) + penalty * sum(v * math.log(v) for v in p)) / 4
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert method.is_selected.all() and method.train_views() == ("weak",)


def hand_loss(z_own, z_peer, w, lam_u):
    """One net's loss with lambda' = 1 (no mixing): L_X over its labelled samples (the peer's
    division w > 0.5), L_U over the rest, the prior over every row; torch only for autograd."""
    p_own, p_peer = z_own.softmax(1), z_peer.softmax(1)
    lx, lu, nx, nu = 0.0, 0.0, 0, 0
    for i, y in enumerate(LABELS.tolist()):
        if w[i] > 0.5:
            blend = w[i] * nn.functional.one_hot(torch.tensor(y), K) + (1 - w[i]) * p_own[i]
            t = blend.detach() ** 2 / (blend.detach() ** 2).sum()
            lx, nx = lx - (t * p_own[i].log()).sum(), nx + 1
        else:
            g = ((p_own[i] + p_peer[i]) / 2).detach() ** 2
            lu, nu = lu + ((p_own[i] - g / g.sum()) ** 2).mean(), nu + 1
    prior = sum(math.log(1 / K) / K - (1 / K) * p_own[:, k].mean().log() for k in range(K))
    return lx / max(nx, 1) + lam_u * lu / max(nu, 1) + prior


def test_losses_value_and_gradient_on_a_worked_example(monkeypatch):
    monkeypatch.setattr(dm, "mixup_lambda", lambda alpha: 1.0)  # mixed rows = the views
    method = make(8)
    method.on_epoch_start(2, warmup=False)
    method.on_epoch_start(10, warmup=False)  # 8 epochs into the ramp: lambda_u = 25 / 2
    method.clean_prob.copy_(POST.repeat(2, 1))
    out = run_step(method, torch.arange(4), warmup=False, epoch=10)
    z1, z2 = Z1.clone().requires_grad_(), Z2.clone().requires_grad_()
    loss1 = hand_loss(z1, z2.detach(), POST[:, 1], 12.5)  # net1: net2's division
    loss2 = hand_loss(z2, z1.detach(), POST[:, 0], 12.5)
    (loss1 + loss2).backward()
    assert out["loss"].item() == pytest.approx((loss1 + loss2).item(), rel=1e-5)
    assert out["lambda_u"].item() == pytest.approx(12.5)
    grad1 = method.nets["net1"].weight.grad.T[:4]
    assert torch.allclose(grad1, z1.grad, atol=1e-6)
    assert torch.allclose(method.nets["net2"].weight.grad.T[:4], z2.grad, atol=1e-6)
    assert out["labelled_fraction"].item() == pytest.approx((2 + 2) / 8)
    assert method.is_selected[:4].tolist() == [True, True, True, False]  # mean posterior > 0.5
    # The ramp runs on the fractional epoch: half the epoch (4 of 8 samples) has been seen.
    out = method.training_step(Batch(torch.arange(4, 8), (torch.eye(8)[4:],) * 2, LABELS))
    assert out["lambda_u"].item() == pytest.approx(25 * 8.5 / 16)


@pytest.mark.parametrize("posterior", [1.0, 0.0])
def test_all_labelled_or_all_unlabelled_batch_stays_finite(posterior):
    method = make()
    method.on_epoch_start(0, warmup=False)
    method.clean_prob.fill_(posterior)
    out = run_step(method, torch.arange(4), warmup=False)
    assert torch.isfinite(out["loss"])
    empty = "loss_u_net1" if posterior == 1.0 else "loss_x_net1"
    assert out[empty].item() == 0.0 and out["empty_selection"].item() == (posterior == 0.0)
    for p in method.parameters():  # every parameter gets a finite gradient (DDP needs one)
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_state_round_trip_and_the_reported_mean():
    method = make()
    method.on_epoch_start(4, warmup=False)
    method.clean_prob.copy_(POST)
    method.divided.fill_(True)
    run_step(method, torch.arange(4), warmup=False, epoch=4)
    state = method.state_dict()
    assert not any(key.startswith(("mean", "_mean")) for key in state)  # nets saved once
    other = make(z1=Z2, z2=Z1)
    other.load_state_dict(state)
    for key, value in other.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(other.clean_scores(), POST.mean(1))
    nets = other.eval_nets()
    assert list(nets) == ["mean", "net1", "net2"] and DivideMix.reported_net == "mean"
    x = torch.eye(4)
    mean = (nets["net1"](x).softmax(1) + nets["net2"](x).softmax(1)) / 2
    assert torch.allclose(nets["mean"](x).softmax(1), mean, atol=1e-6)
    assert sum(1 for _ in other.parameters()) == 2  # the wrapper adds no parameters


def test_registered_with_its_paper_numbers():
    assert "dividemix" in list_methods() and METHODS.get("dividemix") is DivideMix
    assert make().paper_number("cifar100n-sym80", 30.0) == 28.98


TINY = ["--set", "train.epochs=2", "--set", "train.warmup_epochs=1",
        "--set", "optim.lr_decay=cosine:1,1e-3,2", "--set", "train.progress=false"]


@pytest.mark.slow
def test_trains_through_the_cli(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--preset", "quickstart", "--set", "method.name=dividemix", *TINY,
                 "--out", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warmup", "robust"]
    assert rows[-1]["sel_precision"] is not None and 0 < rows[-1]["labelled_fraction"] <= 1
    assert "test_acc_net1" in rows[-1] and "loss_u_net2" in rows[-1]
    assert "lambda_u: 150.0" in (run / "config.yaml").read_text()  # 40 % symmetric noise
    with (run / "label_issues.csv").open() as f:
        assert sum(1 for _ in csv.DictReader(f)) == 1437
