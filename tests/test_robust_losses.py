"""AGCE and ANL: each loss's value and gradient on a worked 3-class example written out by hand,
their bounds, ANL's L1 term, the settings, state, and a tiny run of each through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from asymco.batch import Batch
from asymco.cli import main
from asymco.config import METHOD_SETTINGS
from asymco.config_io import apply_overrides
from asymco.errors import UserError
from asymco.methods import METHODS, list_methods
from asymco.methods.agce import AGCE, asymmetric_gce
from asymco.methods.anl import ANL, l1_norm, normalized_negative_ce
from asymco.methods.robust_loss import normalized_ce, target_rows
from asymco.presets import get_preset

K = 3
# The worked example: two samples' logits and their given labels.
Z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, -3.0]])
Y = [0, 0]


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def onehot(y: list[int]) -> torch.Tensor:
    return target_rows(torch.tensor(y), K)


def grad_of(fn, z: torch.Tensor = Z, y: list[int] = Y) -> torch.Tensor:
    logits = z.clone().requires_grad_()
    fn(logits, onehot(y)).sum().backward()
    return logits.grad


# ---------------------------------------------------------------- each loss by hand (plain math)


def agce_by_hand(z: list[float], y: int, a: float, q: float) -> tuple[float, list[float]]:
    """AGCE and its gradient d/dz_j = -(a + p_y)^(q-1) * p_y * (1[j=y] - p_j)."""
    p = softmax(z)
    grad = [-((a + p[y]) ** (q - 1)) * p[y] * ((j == y) - p[j]) for j in range(K)]
    return ((a + 1) ** q - (a + p[y]) ** q) / q, grad


def nce_by_hand(z: list[float], y: int) -> tuple[float, list[float]]:
    """NCE = u / S with u = log p_y, S = sum_k log p_k; du/dz_j = 1[j=y] - p_j and
    dS/dz_j = 1 - K p_j, so d(u/S)/dz_j = (du S - u dS) / S^2."""
    p = softmax(z)
    u, s = math.log(p[y]), sum(math.log(v) for v in p)
    return u / s, [(((j == y) - p[j]) * s - u * (1 - K * p[j])) / s**2 for j in range(K)]


def nnce_by_hand(z: list[float], y: int, p_min: float) -> tuple[float, list[float]]:
    """NNCE = 1 - v_y / V with v_k = log(max(p_k, p_min) / p_min), V = sum_k v_k. An unclamped
    v_k has dv_k/dz_j = 1[k=j] - p_j, a clamped one 0; so with F the unclamped classes,
    dV/dz_j = 1[j in F] - |F| p_j (y is unclamped in the examples)."""
    p = softmax(z)
    free = [pk > p_min for pk in p]
    v = [math.log(max(pk, p_min) / p_min) for pk in p]
    total, m = sum(v), sum(free)
    grad = [-(((j == y) - p[j]) * total - v[y] * (free[j] - m * p[j])) / total**2 for j in range(K)]
    return 1 - v[y] / total, grad


def by_hand(fn, z: torch.Tensor, y: list[int], **kw) -> tuple[list[float], list[float]]:
    """Per-sample values and the flattened (B*K) gradient of their sum."""
    pairs = [fn(row, label, **kw) for row, label in zip(z.tolist(), y, strict=True)]
    return [v for v, _ in pairs], [g for _, grad in pairs for g in grad]


# ------------------------------------------------------------------------------ AGCE


def test_agce_value_and_gradient_by_hand():
    a, q = 0.6, 0.6
    expected, grads = by_hand(agce_by_hand, Z, Y, a=a, q=q)
    # Sample 0: p = softmax(2, 1, 0) = (0.66524, 0.24473, 0.09003);
    # AGCE = (1.6^0.6 - 1.26524^0.6) / 0.6 = (1.32576 - 1.15163) / 0.6 = 0.29022.
    assert expected[0] == pytest.approx(0.29022, abs=1e-4)
    assert asymmetric_gce(Z, onehot(Y), a=a, q=q).tolist() == pytest.approx(expected, rel=1e-6)
    grad = grad_of(lambda z, t: asymmetric_gce(z, t, a=a, q=q))
    assert grad.flatten().tolist() == pytest.approx(grads, rel=1e-5)


@pytest.mark.parametrize(("a", "q"), [(0.6, 0.6), (1.8, 3.0), (4.0, 0.2)])
def test_agce_is_bounded_and_finite_for_extreme_logits(a, q):
    torch.manual_seed(0)
    z = torch.cat([torch.randn(64, K) * 30, torch.tensor([[1e4, -1e4, 0], [-1e4, 1e4, 0]])])
    y = torch.randint(0, K, (len(z),))
    y[-2:] = 0  # fitted perfectly, then missed completely
    loss = asymmetric_gce(z.bfloat16(), target_rows(y, K), a=a, q=q)
    top = ((a + 1) ** q - a**q) / q
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    assert (loss >= -1e-6).all() and (loss <= top + 1e-5).all()
    assert loss[-2].item() == pytest.approx(0.0, abs=1e-6)
    assert loss[-1].item() == pytest.approx(top, rel=1e-5)


# ------------------------------------------------------------------------------ NCE, NNCE


def test_nce_value_and_gradient_by_hand():
    expected, grads = by_hand(nce_by_hand, Z, Y)
    # sample 0: -log p = (0.40761, 1.40761, 2.40761): 0.40761 / 4.22283 = 0.09653
    assert expected[0] == pytest.approx(0.09653, abs=1e-4)
    assert normalized_ce(Z, onehot(Y)).tolist() == pytest.approx(expected, rel=1e-6)
    assert grad_of(normalized_ce).flatten().tolist() == pytest.approx(grads, rel=1e-5)


def test_nnce_clamps_at_p_min_and_matches_the_hand_gradient():
    p_min = 0.05  # sample 1's p_2 = 0.01321 < p_min: clamped, so it passes no gradient
    assert softmax(Z[1].tolist())[2] < p_min
    expected, grads = by_hand(nnce_by_hand, Z, Y, p_min=p_min)
    # sample 1: v = (log 5.3078, log 14.428, 0) = (1.66918, 2.66918, 0): 1 - 1.66918/4.33836
    assert expected[1] == pytest.approx(0.61525, abs=1e-4)
    got = normalized_negative_ce(Z, onehot(Y), min_prob=p_min)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    grad = grad_of(lambda z, t: normalized_negative_ce(z, t, min_prob=p_min))
    assert grad.flatten().tolist() == pytest.approx(grads, rel=1e-5, abs=1e-7)


def test_nce_and_nnce_stay_in_unit_interval_where_softmax_underflows():
    torch.manual_seed(1)
    z = torch.cat([torch.randn(64, K) * 50, torch.tensor([[1e4, -1e4, -1e4], [-1e4, 1e4, 0]])])
    y = torch.randint(0, K, (len(z),))
    y[-2:] = 0
    t = target_rows(y, K)
    nce = normalized_ce(z.bfloat16(), t)
    nnce = normalized_negative_ce(z.bfloat16(), t, min_prob=1e-7)
    for loss in (nce, nnce):
        assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
        assert (loss >= -1e-6).all() and (loss <= 1 + 1e-6).all()
    # fitted: NCE 0, NNCE 0; missed completely: NCE near 1, NNCE 1 (p_y clamped to p_min)
    assert nce[-2].item() == pytest.approx(0.0, abs=1e-6)
    assert nnce[-2].item() == pytest.approx(0.0, abs=1e-6)
    assert nnce[-1].item() == pytest.approx(1.0, abs=1e-6)


def test_label_smoothing_mixes_the_per_class_losses():
    t = target_rows(torch.tensor(Y), K, 0.3)
    assert t[0].tolist() == pytest.approx([0.8, 0.1, 0.1])
    per_class = [asymmetric_gce(Z, onehot([k, k]), a=0.6, q=0.6) for k in range(K)]
    mixed = sum(t[:, k] * per_class[k] for k in range(K))
    assert asymmetric_gce(Z, t, a=0.6, q=0.6).tolist() == pytest.approx(mixed.tolist())


# ------------------------------------------------------------------------------ the methods


def make(cls, labels=(0, 0, 1, 2), z=None, **settings):
    """A method whose net is a lookup table: one-hot input i gives logits row i of `z`."""
    n = len(labels)
    method = cls(
        cls.Settings(**settings),
        num_classes=K,
        observed_labels=torch.tensor(labels),
        make_model=lambda: nn.Linear(n, K, bias=False),
    )
    if z is not None:
        with torch.no_grad():
            method.nets["net"].weight.copy_(z.T)
    return method


def step(method, index, labels, *, warmup=False):
    method.on_epoch_start(0, warmup=warmup)
    method.zero_grad(set_to_none=True)
    n = method.num_samples
    out = method.training_step(Batch(index, (torch.eye(n)[index],), torch.tensor(labels)))
    out["loss"].backward()
    return out, method.nets["net"].weight.grad.clone()


ZB = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, -3.0], [0.5, -1.0, 1.5], [-2.0, 0.0, 0.5]])
LB = [0, 0, 1, 2]


def test_l1_term_is_the_sum_of_absolute_parameters():
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        net.bias.copy_(torch.tensor([-0.25, 3.0]))
    assert l1_norm(net).item() == pytest.approx(1 + 2 + 0.5 + 0 + 0.25 + 3)


def test_anl_combines_nce_nnce_and_l1_over_the_whole_batch():
    alpha, beta, delta, p_min = 10.0, 1.0, 1e-3, 0.05
    method = make(ANL, LB, ZB, delta=delta, min_prob=p_min)
    out, grad = step(method, torch.arange(4), LB)
    nce, nce_grad = by_hand(nce_by_hand, ZB, LB)
    nnce, nnce_grad = by_hand(nnce_by_hand, ZB, LB, p_min=p_min)
    l1 = 3 + 4 + 3 + 2.5  # sum of |logits|: the table's weights
    expected = alpha * sum(nce) / 4 + beta * sum(nnce) / 4 + delta * l1
    assert out["l1_norm"].item() == pytest.approx(l1)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert out["loss_nce"].item() == pytest.approx(sum(nce) / 4, rel=1e-6)
    # The weight is the logits table transposed: its gradient is the logits' gradient
    # (each loss averaged over the batch) plus delta * sign(w).
    g = (alpha * torch.tensor(nce_grad) + beta * torch.tensor(nnce_grad)).view(4, K) / 4
    assert torch.allclose(grad, g.T + delta * ZB.sign().T, atol=1e-6)


def test_agce_trains_every_sample_from_the_first_epoch():
    method = make(AGCE, LB, ZB)
    out, grad = step(method, torch.arange(4), LB, warmup=True)
    expected = sum(by_hand(agce_by_hand, ZB, LB, a=0.6, q=0.6)[0]) / 4
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert (grad.abs().sum(0) > 0).all()  # every sample's row of the table moved
    out_robust, _ = step(method, torch.arange(4), LB, warmup=False)
    assert out_robust["loss"].item() == pytest.approx(expected, rel=1e-6)  # same loss
    both = make(AGCE, LB, ZB, nce_weight=10.0, agce_weight=0.1, a=1.8, q=3.0)
    mix = step(both, torch.arange(4), LB)[0]["loss"].item()
    nce = sum(by_hand(nce_by_hand, ZB, LB)[0]) / 4
    agce = sum(by_hand(agce_by_hand, ZB, LB, a=1.8, q=3.0)[0]) / 4
    assert mix == pytest.approx(10 * nce + 0.1 * agce, rel=1e-6)


@pytest.mark.parametrize("cls", [AGCE, ANL])
def test_two_processes_give_the_one_process_gradient(cls):
    """Each rank holds half the batch; DDP averages their gradients: the L1 term, the same on
    both ranks, must come out counted once."""
    whole = step(make(cls, LB, ZB, **({"delta": 1e-2} if cls is ANL else {})), torch.arange(4), LB)
    grads = []
    for part in (torch.tensor([0, 1]), torch.tensor([2, 3])):
        method = make(cls, LB, ZB, **({"delta": 1e-2} if cls is ANL else {}))
        grads.append(step(method, part, [LB[i] for i in part])[1])
    assert torch.allclose((grads[0] + grads[1]) / 2, whole[1], atol=1e-7)


@pytest.mark.parametrize("cls", [AGCE, ANL])
def test_registered_no_selection_and_state_round_trip(cls):
    name = cls.Settings().name
    assert name in list_methods() and METHODS.get(name) is cls
    assert METHOD_SETTINGS.get(name) is cls.Settings
    method = make(cls, LB, ZB)
    assert method.selected() is None and method.judgements() == {}
    assert method.clean_scores() is None and method.per_sample_state() == []
    assert list(method.eval_nets()) == ["net"]
    assert method.paper_number("cifar100n-sym20", 65.51) == cls.paper_numbers["cifar100n-sym20"]
    step(method, torch.arange(4), LB)
    copy = make(cls, LB)
    copy.load_state_dict(method.state_dict())
    for key, value in method.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value), key


def test_paper_numbers():
    assert AGCE.paper_numbers["cifar80n-asym40"] == 44.06 and AGCE.paper_numbers["web-car"] == 85.16
    assert ANL.paper_numbers["cifar100n-sym80"] == 23.39 and ANL.paper_numbers["web-bird"] == 79.46


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.name=agce", "method.a=0"], r"^method\.a must be positive, got 0\.0$"),
        (["method.name=agce", "method.q=-1"], r"^method\.q must be positive"),
        (["method.name=agce", "method.nce_weight=-1"], r"^method\.nce_weight must be >= 0"),
        (["method.name=anl", "method.delta=-1e-7"], r"^method\.delta must be >= 0"),
        (["method.name=anl", "method.alpha=0", "method.beta=0"], r"must not both be 0"),
        (["method.name=anl", "method.min_prob=0"], r"^method\.min_prob must be in \(0, 0\.5\)"),
        (["method.name=anl", "method.a=1"], r"unknown setting.*\(a is a setting of agce\)"),
    ],
)
def test_settings_are_checked_in_one_sentence(overrides, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(get_preset("quickstart"), overrides)


def test_p_min_must_be_below_one_over_the_class_count():
    with pytest.raises(UserError, match=r"method\.min_prob must be below 1/3"):
        make(ANL, LB, min_prob=0.4)


TINY = "train.epochs=2 train.warmup_epochs=1 optim.lr_decay=cosine:1,1e-3,2 train.progress=false"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "figure"), [("agce", "loss_agce"), ("anl", "loss_nnce")])
def test_trains_through_the_cli(tmp_path, capsys, name, figure):
    run = tmp_path / name
    sets = [arg for key in [f"method.name={name}", *TINY.split()] for arg in ("--set", key)]
    assert main(["train", "--preset", "quickstart", *sets, "--out", str(run)]) == 0
    assert f"quickstart / {name}: last-10 test accuracy" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warmup", "robust"]
    assert rows[-1]["sel_precision"] is None and math.isfinite(rows[-1][figure])
    assert (run / "label_issues.csv").exists()
