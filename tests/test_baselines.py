"""Co-teaching, Co-teaching+ and JoCoR: the schedule, the selection helpers, and each method's
core rule on hand-made logits, built so that another method's rule would fail the test.

The hand-made logits come from "table" nets: a bias-free Linear(N, K) fed one-hot sample ids,
so sample i's logits are column i of the weight, and a non-zero gradient in column i means
sample i contributed to that net's loss.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from asymco.batch import Batch
from asymco.config import OptimConfig
from asymco.errors import UserError
from asymco.lr_plan import LRPlan
from asymco.methods.coteaching import (
    CoTeaching,
    forget_rate_at,
    masked_mean,
    num_remember,
    small_loss_mask,
)
from asymco.methods.coteaching_plus import CoTeachingPlus
from asymco.methods.jocor import JoCoR, symmetric_kl

K = 3
METHODS = [CoTeaching, CoTeachingPlus, JoCoR]


def make_method(cls: type, labels: Tensor, make_model=None, seed: int = 0, **settings: object):
    """`cls` with `settings`; keys only some of the methods have (init_epoch, co_lambda) are
    dropped for the others, so one parametrized test can pass them to all three."""
    settings.setdefault("forget_rate", 0.5)
    own = {f.name for f in dataclasses.fields(cls.Settings)}
    settings = {key: value for key, value in settings.items() if key in own}
    torch.manual_seed(seed)
    n = len(labels)
    return cls(
        cls.Settings(**settings),
        num_classes=K,
        observed_labels=labels,
        make_model=make_model or (lambda: nn.Linear(n, K, bias=False)),
    )


def set_table(method, z1: Tensor, z2: Tensor) -> None:
    """Make net1/net2 output the rows of z1/z2 for one-hot sample ids."""
    with torch.no_grad():
        method.nets["net1"].weight.copy_(z1.T)
        method.nets["net2"].weight.copy_(z2.T)


def table_batch(index: Tensor, labels: Tensor) -> Batch:
    n = len(labels)
    return Batch(index=index, views=(torch.eye(n)[index],), label=labels[index])


def step_and_grads(method, batch: Batch) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """One training step + backward; returns the outputs and, per net, which samples (columns)
    received a non-zero gradient."""
    method.zero_grad(set_to_none=True)
    out = method.training_step(batch)
    out["loss"].backward()
    used1 = method.nets["net1"].weight.grad.abs().sum(0) > 0
    used2 = method.nets["net2"].weight.grad.abs().sum(0) > 0
    return out, used1, used2


def mask(n: int, *idx: int) -> Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[list(idx)] = True
    return m


def ce0(z: Tensor) -> Tensor:
    """Per-sample cross-entropy against class 0."""
    return F.cross_entropy(z, torch.zeros(len(z), dtype=torch.long), reduction="none")


# ---------------------------------------------------------------------------- pure functions


def test_forget_rate_schedule_values():
    tau, tk = 0.4, 10
    assert forget_rate_at(0, tau, tk) == 0.0  # R(0) = 1: keep everything at the start
    assert forget_rate_at(5, tau, tk) == pytest.approx(0.2)  # T_k / 2: half way
    assert forget_rate_at(10, tau, tk) == pytest.approx(tau)  # T_k: the full rate
    assert forget_rate_at(11, tau, tk) == tau
    assert forget_rate_at(500, tau, tk) == tau  # beyond: constant
    assert forget_rate_at(5, tau, tk, exponent=2.0) == pytest.approx(tau * 0.25)
    assert forget_rate_at(5, tau, tk, exponent=0.5) == pytest.approx(tau * math.sqrt(0.5))
    assert forget_rate_at(0, tau, 0) == tau  # no ramp


def test_num_remember_tensor_matches_python_int():
    """The device-side count truncates exactly like Python's int(R * n)."""
    counts = torch.arange(0, 257)
    for forget in (0.0, 0.1, 0.2, 0.3, 0.45, 0.5, 0.6, 0.8, 1 / 3):
        rate = 1 - forget
        expected = [int(rate * c) for c in range(257)]
        got = [int(num_remember(c, rate)) for c in counts]
        assert got == expected, forget
    assert num_remember(128, 0.8) == 102


def test_small_loss_mask_keeps_smallest_and_respects_candidates():
    loss = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.2])
    assert small_loss_mask(loss, 2).tolist() == mask(5, 1, 4).tolist()
    assert small_loss_mask(loss, 0).sum() == 0
    assert small_loss_mask(loss, 5).all()
    pool = mask(5, 0, 2, 3)  # the two smallest losses are outside the pool
    assert small_loss_mask(loss, 2, pool).tolist() == mask(5, 3, 0).tolist()
    assert small_loss_mask(loss, torch.tensor(1), pool).tolist() == mask(5, 3).tolist()
    assert small_loss_mask(loss, torch.tensor(3), pool).tolist() == pool.tolist()
    # Ties: stable, the earlier batch position wins; an infinite candidate still beats a
    # non-candidate.
    assert small_loss_mask(torch.zeros(4), 2).tolist() == mask(4, 0, 1).tolist()
    inf = torch.tensor([0.0, math.inf, math.inf])
    assert small_loss_mask(inf, 1, mask(3, 2)).tolist() == mask(3, 2).tolist()


def test_masked_mean_empty_is_zero_with_graph():
    values = torch.tensor([1.0, math.inf, 3.0], requires_grad=True)
    assert masked_mean(values, mask(3, 0, 2)).item() == 2.0
    empty = masked_mean(values, torch.zeros(3, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.equal(values.grad, torch.zeros(3))


def test_symmetric_kl_matches_official_kl_div():
    """KL(p1||p2) + KL(p2||p1) as the JoCoR code computes it with F.kl_div."""
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3

    def kl_loss_compute(pred: Tensor, soft: Tensor) -> Tensor:
        kl = F.kl_div(F.log_softmax(pred, 1), F.softmax(soft, 1), reduction="none")
        return kl.sum(1)

    official = kl_loss_compute(z1, z2) + kl_loss_compute(z2, z1)
    assert torch.allclose(symmetric_kl(z1, z2), official, atol=1e-5)
    assert torch.allclose(symmetric_kl(z1, z1), torch.zeros(6), atol=1e-6)


# ---------------------------------------------------------------------------- Co-teaching


def coteaching_case() -> tuple[Tensor, Tensor, Tensor]:
    """7 samples, label 0; net1's two smallest losses are samples 0, 1; net2's are 3, 4."""
    labels = torch.zeros(7, dtype=torch.long)
    z1, z2 = torch.zeros(7, K), torch.zeros(7, K)
    z1[:5, 0] = torch.tensor([4.0, 3.0, 0.0, -1.0, -2.0])
    z2[:5, 0] = torch.tensor([-2.0, -1.0, 0.0, 3.0, 4.0])
    return labels, z1, z2


def test_coteaching_cross_update_uses_peer_selection():
    labels, z1, z2 = coteaching_case()
    method = make_method(CoTeaching, labels, forget_rate=0.6, num_gradual=0)  # keep int(2.0)
    set_table(method, z1, z2)
    method.on_epoch_start(3, warmup=False)
    out, used1, used2 = step_and_grads(method, table_batch(torch.arange(5), labels))

    # net2 learns exactly from net1's small-loss samples, net1 exactly from net2's.
    assert used2.tolist() == mask(7, 0, 1).tolist()
    assert used1.tolist() == mask(7, 3, 4).tolist()
    assert out["loss_net2"].item() == pytest.approx(ce0(z2[[0, 1]]).mean().item())
    assert out["loss_net1"].item() == pytest.approx(ce0(z1[[3, 4]]).mean().item())
    assert out["loss"].item() == pytest.approx((out["loss_net1"] + out["loss_net2"]).item())
    assert out["keep_fraction"].item() == pytest.approx(0.4)
    assert out["forget_rate"].item() == pytest.approx(0.6)
    # selected() = net1's selection (what trained net2); samples 5, 6 were not in the batch.
    assert method.selected().tolist() == mask(7, 0, 1).tolist()
    assert method.select_counts().tolist() == [1, 1, 0, 0, 0, 0, 0]
    method.on_epoch_start(4, warmup=False)
    assert not method.selected().any()  # reset per epoch; the counts persist
    assert method.select_counts().sum().item() == 2


def test_coteaching_label_smoothing():
    labels, z1, z2 = coteaching_case()
    method = make_method(CoTeaching, labels, forget_rate=0.6, num_gradual=0, label_smoothing=0.2)
    set_table(method, z1, z2)
    out = method.training_step(table_batch(torch.arange(5), labels))
    smoothed = F.cross_entropy(z2[[0, 1]], labels[[0, 1]], label_smoothing=0.2)
    assert out["loss_net2"].item() == pytest.approx(smoothed.item())


def test_coteaching_schedule_and_warmup_keep_everything():
    labels, z1, z2 = coteaching_case()
    method = make_method(CoTeaching, labels, forget_rate=0.6, num_gradual=10)
    set_table(method, z1, z2)
    batch = table_batch(torch.arange(5), labels)
    method.on_epoch_start(0, warmup=False)  # R(0) = 1: plain cross-entropy on everything
    out, used1, used2 = step_and_grads(method, batch)
    assert used1[:5].all() and used2[:5].all()
    assert out["keep_fraction"].item() == 1.0
    method.on_epoch_start(5, warmup=False)  # forget 0.3: keep int(0.7 * 5) = 3
    assert method.current_forget_rate() == pytest.approx(0.3)
    assert method.training_step(batch)["keep_fraction"].item() == pytest.approx(0.6)
    method.on_epoch_start(20, warmup=True)  # engine warmup: everything counts as selected
    assert method.current_forget_rate() == 0.0
    method.training_step(batch)
    assert method.selected()[:5].all()


# ---------------------------------------------------------------------------- Co-teaching+


def coteaching_plus_case() -> tuple[Tensor, Tensor, Tensor]:
    """6 samples, label 0. The nets agree (confidently, smallest losses) on 0, 1, 2 and
    disagree on 3, 4, 5; within those net1's smallest loss is 3 and net2's is 4."""
    labels = torch.zeros(6, dtype=torch.long)
    agree = torch.tensor([[5.0, 0, 0], [6.0, 0, 0], [5.5, 0, 0]])
    z1 = torch.cat([agree, torch.tensor([[2.0, 0, 0], [0, 1.0, 0], [0, 0, 3.0]])])
    z2 = torch.cat([agree, torch.tensor([[0, 2.0, 0], [1.0, 0, 0], [0, 0.5, 0]])])
    return labels, z1, z2


def test_coteaching_plus_never_uses_agreement_after_init_epoch():
    labels, z1, z2 = coteaching_plus_case()
    assert (z1.argmax(1) != z2.argmax(1)).tolist() == [False] * 3 + [True] * 3
    method = make_method(CoTeachingPlus, labels, forget_rate=0.5, num_gradual=0, init_epoch=2)
    set_table(method, z1, z2)
    batch = table_batch(torch.arange(6), labels)

    # Before init_epoch: plain Co-teaching, keep int(0.5 * 6) = 3 -> the agreed samples.
    method.on_epoch_start(1, warmup=False)
    out, used1, used2 = step_and_grads(method, batch)
    assert used1.tolist() == used2.tolist() == mask(6, 0, 1, 2).tolist()
    assert method.selected().tolist() == mask(6, 0, 1, 2).tolist()

    # From init_epoch on: only the disagreement set, keep int(0.5 * 3) = 1 per net, crossed.
    method.on_epoch_start(2, warmup=False)
    out, used1, used2 = step_and_grads(method, batch)
    assert used2.tolist() == mask(6, 3).tolist()  # net1's pick trains net2
    assert used1.tolist() == mask(6, 4).tolist()  # net2's pick trains net1
    assert method.selected().tolist() == mask(6, 3).tolist()
    assert out["disagree_fraction"].item() == pytest.approx(0.5)
    assert out["keep_fraction"].item() == pytest.approx(1 / 6)
    assert out["loss_net2"].item() == pytest.approx(ce0(z2[[3]]).item())
    assert out["loss_net1"].item() == pytest.approx(ce0(z1[[4]]).item())


def test_coteaching_plus_rounds_down_to_zero_keeps_whole_disagreement_set():
    labels, z1, z2 = coteaching_plus_case()
    z2[4:] = z1[4:]  # only sample 3 is disputed: int(0.5 * 1) = 0 -> keep it (official code)
    method = make_method(CoTeachingPlus, labels, forget_rate=0.5, num_gradual=0, init_epoch=0)
    set_table(method, z1, z2)
    _out, used1, used2 = step_and_grads(method, table_batch(torch.arange(6), labels))
    assert used1.tolist() == used2.tolist() == mask(6, 3).tolist()


def test_coteaching_plus_empty_disagreement_is_zero_not_nan():
    labels, z1, _ = coteaching_plus_case()
    method = make_method(CoTeachingPlus, labels, forget_rate=0.5, num_gradual=0, init_epoch=0)
    set_table(method, z1, z1.clone())  # identical predictions: nothing is disputed
    out, used1, used2 = step_and_grads(method, table_batch(torch.arange(6), labels))
    assert out["loss"].item() == 0.0
    assert out["disagree_fraction"].item() == 0.0
    assert out["empty_selection"].item() == 1.0
    assert not used1.any() and not used2.any()
    for p in method.parameters():  # every parameter still gets a (zero) gradient
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert not method.selected().any()


# ---------------------------------------------------------------------------------- JoCoR


def jocor_case() -> tuple[Tensor, Tensor, Tensor]:
    """2 samples, label 0. A (0): both nets fairly sure of the label and identical. B (1): both
    nets surer of the label (smaller CE), but split on the runner-up class (large KL)."""
    labels = torch.zeros(2, dtype=torch.long)
    z1 = torch.tensor([[2.0, 0.0, 0.0], [6.0, 4.0, -4.0]])
    z2 = torch.tensor([[2.0, 0.0, 0.0], [6.0, -4.0, 4.0]])
    return labels, z1, z2


def test_jocor_selects_by_joint_loss_and_trains_both_nets_on_it():
    labels, z1, z2 = jocor_case()
    ce_sum = ce0(z1) + ce0(z2)
    assert ce_sum[1] < ce_sum[0]  # CE alone (and each net's CE) would keep B ...
    assert ce0(z1)[1] < ce0(z1)[0] and ce0(z2)[1] < ce0(z2)[0]
    method = make_method(JoCoR, labels, forget_rate=0.5, num_gradual=0, co_lambda=0.9)
    set_table(method, z1, z2)
    out, used1, used2 = step_and_grads(method, table_batch(torch.arange(2), labels))
    # ... the KL term makes B's joint loss the larger one: A is kept, for both nets.
    assert method.selected().tolist() == [True, False]
    assert used1.tolist() == used2.tolist() == [True, False]
    joint_a = 0.1 * ce_sum[0] + 0.9 * symmetric_kl(z1, z2)[0]
    assert out["loss"].item() == pytest.approx(joint_a.item())
    assert out["co_reg"].item() == pytest.approx(0.0, abs=1e-6)


def test_jocor_lambda_zero_is_summed_cross_entropy():
    labels, z1, z2 = jocor_case()
    method = make_method(JoCoR, labels, forget_rate=0.5, num_gradual=0, co_lambda=0.0)
    set_table(method, z1, z2)
    out, used1, used2 = step_and_grads(method, table_batch(torch.arange(2), labels))
    assert method.selected().tolist() == [False, True]
    assert used1.tolist() == used2.tolist() == [False, True]
    assert out["loss"].item() == pytest.approx((ce0(z1) + ce0(z2))[1].item())


def test_jocor_kl_gradient_reaches_both_nets():
    """Not detached (as the official code): with CE switched off, both nets still move."""
    labels, z1, z2 = jocor_case()
    method = make_method(JoCoR, labels, forget_rate=0.0, num_gradual=0, co_lambda=1.0)
    set_table(method, z1, z2)
    _out, used1, used2 = step_and_grads(method, table_batch(torch.arange(2), labels))
    assert used1[1] and used2[1]


# ------------------------------------------------------------------------- all three methods


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, K))


def random_batch(index: Tensor, labels: Tensor, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(index, (torch.randn(len(index), 3, 2, 2, generator=g),), labels[index])


@pytest.mark.parametrize("cls", METHODS)
def test_training_step_smoke(cls):
    labels = torch.randint(0, K, (20,), generator=torch.Generator().manual_seed(1))
    method = make_method(cls, labels, tiny_model, forget_rate=0.3, init_epoch=1)
    assert method.reported_net == "net1"
    assert list(method.eval_nets()) == ["net1", "net2"]
    optim = OptimConfig(lr=0.1, warmup_lr=0.2, lr_decay="constant")
    groups = method.param_groups(optim)  # both nets on the run's plan
    assert [(g["net"], g["lr_plan"]) for g in groups] == [
        ("net1", LRPlan(0.1, 0.2, "constant")),
        ("net2", LRPlan(0.1, 0.2, "constant")),
    ]
    for epoch in (0, 12):
        method.on_epoch_start(epoch, warmup=False)
        method.zero_grad(set_to_none=True)
        out = method.training_step(random_batch(torch.arange(2, 18), labels, seed=epoch))
        assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
        out["loss"].backward()
        for name, p in method.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert any(p.grad.abs().sum() > 0 for p in method.nets["net1"].parameters())
        assert any(p.grad.abs().sum() > 0 for p in method.nets["net2"].parameters())
        for key, value in out.items():
            assert value.dim() == 0, key
            assert key == "loss" or not value.requires_grad, key
    assert out["forget_rate"].item() == pytest.approx(0.3)
    assert method.selected().shape == (20,) and method.selected().dtype == torch.bool
    assert method.select_counts().shape == (20,)
    assert method.select_counts().dtype == torch.int32
    assert not method.selected()[[0, 1, 18, 19]].any()  # not in the batch


@pytest.mark.parametrize("cls", METHODS)
def test_warmup_epochs_select_everything(cls):
    labels = torch.randint(0, K, (10,), generator=torch.Generator().manual_seed(2))
    method = make_method(cls, labels, tiny_model, forget_rate=0.5, num_gradual=0, init_epoch=0)
    method.on_epoch_start(0, warmup=True)
    out = method.training_step(random_batch(torch.arange(10), labels))
    assert out["keep_fraction"].item() == 1.0
    assert method.selected().all()
    assert method.select_counts().tolist() == [1] * 10


@pytest.mark.parametrize("cls", METHODS)
def test_state_dict_round_trip(cls):
    labels = torch.randint(0, K, (12,), generator=torch.Generator().manual_seed(3))
    method = make_method(cls, labels, tiny_model, forget_rate=0.5, num_gradual=0, init_epoch=0)
    for epoch in range(2):
        method.on_epoch_start(epoch, warmup=False)
        method.training_step(random_batch(torch.arange(12), labels, seed=epoch))
    state = method.state_dict()
    assert {"is_selected", "select_count"} <= set(state)
    assert any(k.startswith("nets.net1.") for k in state)
    assert any(k.startswith("nets.net2.") for k in state)
    assert state["select_count"].sum() > 0

    other = make_method(cls, labels, tiny_model, seed=7, forget_rate=0.5)
    other.load_state_dict(state)
    for key, value in other.state_dict().items():
        assert torch.equal(value, state[key]), key
    batch = random_batch(torch.arange(12), labels, seed=9)
    with torch.no_grad():
        assert torch.equal(other.predict(batch.weak), method.predict(batch.weak))


@pytest.mark.parametrize("cls", METHODS)
def test_forget_rate_must_be_set(cls):
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(UserError, match=r"method\.forget_rate"):
        make_method(cls, labels, forget_rate=None)
    with pytest.raises(UserError, match=r"method\.forget_rate"):
        make_method(cls, labels, forget_rate=1.5)


def test_invalid_settings_are_user_errors():
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(UserError, match=r"method\.co_lambda"):
        make_method(JoCoR, labels, co_lambda=1.5)
    with pytest.raises(UserError, match=r"method\.init_epoch"):
        make_method(CoTeachingPlus, labels, init_epoch=-1)
    with pytest.raises(UserError, match=r"method\.num_gradual"):
        make_method(CoTeaching, labels, num_gradual=-1)


class _SyncRecorder(TorchDispatchMode):
    """Records the aten ops that make the host wait for the device (on a GPU): reading a value
    (`.item()`, `bool()`, `int()`), and data-dependent shapes (nonzero, boolean indexing)."""

    SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "unique")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        bool_index = name.startswith(("index.", "index_put")) and any(
            isinstance(t, Tensor) and t.dtype == torch.bool
            for a in args
            if isinstance(a, list | tuple)
            for t in a
        )
        if bool_index or any(name.startswith(s) for s in self.SYNCING):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cls", METHODS)
@pytest.mark.parametrize("epoch", [0, 12])  # Co-teaching+: before and after init_epoch
def test_training_step_has_no_host_sync(cls, epoch, monkeypatch):
    """On a CPU nothing waits, so the ops that would make a GPU wait are caught by name."""
    labels = torch.randint(0, K, (16,), generator=torch.Generator().manual_seed(4))
    method = make_method(cls, labels, tiny_model, forget_rate=0.3, init_epoch=5)
    method.on_epoch_start(epoch, warmup=False)
    batch = random_batch(torch.arange(16), labels)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a host read in training_step")

    for name in ("tolist", "numpy", "cpu"):  # host copies that bypass the dispatcher
        monkeypatch.setattr(Tensor, name, refuse)
    with _SyncRecorder() as recorder:
        out = method.training_step(batch)
        out["loss"].backward()
    assert recorder.seen == []
