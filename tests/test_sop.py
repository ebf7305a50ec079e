"""SOP / SOP+ (sparse over-parameterised label noise): the corrected prediction, each loss's
value and gradient on a hand-computed 3-class example, the optimizer groups of u and v, the
scaling of their gradients under torchrun, the SOP+ terms, state, and a run through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

from asymco.batch import Batch
from asymco.cli import main
from asymco.config import METHOD_SETTINGS, NoiseConfig, OptimConfig
from asymco.config_io import apply_overrides
from asymco.engine.build import build_optimizer
from asymco.engine.distributed import Dist, sync_rows
from asymco.errors import UserError
from asymco.methods import METHODS, list_methods
from asymco.methods.sop import (
    SOP,
    balance_kl,
    consistency_kl,
    corrected_prediction,
    noise_terms,
)
from asymco.presets import get_preset

K, N = 3, 4
LABELS = torch.tensor([0, 0, 1, 2])
# Each sample's logits (one-hot inputs make a bias-free Linear a lookup table). Sample 1 is the
# worked example: softmax [1/4, 1/2, 1/4], predicted class 1, given label 0 (a noisy label).
LOGITS = torch.tensor([[2.0, 0, 0], [0, math.log(2), 0], [0, 1, 0], [1, 0, 2]])
U1, V1 = 0.5, [0.3, 0.4, 0.2]  # sample 1's u and v: U = [1/4, 0, 0], V = [0, 0.16, 0.04]


class _Processes:
    """A stand-in for the engine's Dist: `world` processes, this one alone in the batch."""

    def __init__(self, world: int) -> None:
        self.world = world

    def global_sum(self, value: torch.Tensor) -> torch.Tensor:
        return value


def make_sop(**settings) -> SOP:
    torch.manual_seed(0)  # the same u, v rows in every (simulated) process
    method = SOP(
        SOP.Settings(**settings),
        num_classes=K,
        observed_labels=LABELS,
        make_model=lambda: nn.Linear(N, K, bias=False),
    )
    with torch.no_grad():
        method.nets["net"].weight.copy_(LOGITS.T)
        method.u[1, 0] = U1
        method.v[1] = torch.tensor(V1)
    return method


def step(method: SOP, index: list[int], *, warmup: bool = False) -> dict:
    method.on_epoch_start(0, warmup=warmup)
    method.zero_grad(set_to_none=True)
    idx = torch.tensor(index)
    views = tuple(torch.eye(N)[idx] for _ in method.train_views())
    out = method.training_step(Batch(idx, views, LABELS[idx]))
    out["loss"].backward()
    return out


def test_noise_terms_and_corrected_prediction_by_hand():
    onehot = torch.tensor([[1.0, 0, 0]])
    big_u, big_v = noise_terms(torch.tensor([[U1]]), torch.tensor([V1]), onehot)
    assert torch.allclose(big_u, torch.tensor([[0.25, 0, 0]]))
    assert torch.allclose(big_v, torch.tensor([[0, 0.16, 0.04]]))  # the label's v is masked
    q = corrected_prediction(LOGITS[1:2], big_u, big_v)
    # softmax + U - V = [1/4 + 1/4, 1/2 - 0.16, 1/4 - 0.04] = [0.5, 0.34, 0.21], sum 1.05
    assert torch.allclose(q, torch.tensor([[0.5, 0.34, 0.21]]) / 1.05)
    # Clamped: a u^2 above 1 adds 1; a prediction pushed below eps is floored before normalising.
    big_u, big_v = noise_terms(torch.tensor([[2.0]]), torch.tensor([[0.0, 1.0, 0]]), onehot)
    assert big_u[0, 0] == 1 and big_v[0, 1] == 1
    q = corrected_prediction(LOGITS[1:2], big_u, big_v)  # [1.25, 1e-4, 0.25] / 1.5001, floored
    assert torch.allclose(q, torch.tensor([[1.25 / 1.5001, 1e-4, 0.25 / 1.5001]]))


def test_losses_and_gradients_on_the_worked_example():
    method = make_sop()
    out = step(method, [1])
    ce = math.log(1.05 / 0.5)  # -log q_y with q_y = 0.5 / 1.05
    # MSE: onehot(pred) + U - V - y = [0, 1, 0] + [0.25, -0.16, -0.04] - [1, 0, 0]
    mse = 0.75**2 + 0.84**2 + 0.04**2
    assert out["loss_ce"].item() == pytest.approx(ce, rel=1e-6)
    assert out["loss_mse"].item() == pytest.approx(mse, rel=1e-6)
    assert out["loss"].item() == pytest.approx(ce + mse, rel=1e-6)
    # d CE / d u^2 = -1/a_y + 1/sum(a) = -1/0.5 + 1/1.05; d u^2 / d u = 2u = 1.
    # d MSE / d u^2 = 2 * (-0.75); d MSE / d v_k = 2 * r_k * (-2 v_k) for k != y.
    d_ce_u, d_mse_u = -2 + 1 / 1.05, 2 * -0.75
    assert method.u.grad[1, 0].item() == pytest.approx(d_ce_u + d_mse_u, rel=1e-5)
    expected_v = torch.tensor([0.0, 2 * 0.84 * -0.8, 2 * -0.04 * -0.4])
    assert torch.allclose(method.v.grad[1], expected_v, atol=1e-6)
    others = [0, 2, 3]  # rows outside the batch get exactly zero
    assert not method.u.grad[others].any() and not method.v.grad[others].any()
    # u_from_mse=false: u learns from the CE term alone; v's gradient is the same.
    method = make_sop(u_from_mse=False)
    step(method, [1])
    assert method.u.grad[1, 0].item() == pytest.approx(d_ce_u, rel=1e-5)
    assert torch.allclose(method.v.grad[1], expected_v, atol=1e-6)


def test_v_gets_no_gradient_from_the_ce_term_and_the_net_none_from_the_mse_term():
    onehot = torch.tensor([[1.0, 0, 0]])
    u = torch.tensor([[U1]], requires_grad=True)
    v = torch.tensor([V1], requires_grad=True)
    z = LOGITS[1:2].clone().requires_grad_()
    q = corrected_prediction(z, *noise_terms(u, v, onehot))
    q[0, 0].log().neg().backward()
    assert v.grad is None or not v.grad.any()
    assert u.grad is not None and z.grad is not None and z.grad.abs().sum() > 0
    method = make_sop(u_from_mse=False)
    step(method, [1])
    # The net's gradient is the CE term's only: softmax-CE of the corrected prediction by hand.
    # d CE / d z_j = sum_k (d CE / d a_k) p_k (delta_kj - p_j), d CE / d a = -e_y/a_y + 1/S.
    p = torch.tensor([0.25, 0.5, 0.25])
    d_a = torch.tensor([-1 / 0.5, 0, 0]) + 1 / 1.05
    d_z = p * (d_a - (d_a * p).sum())
    assert torch.allclose(method.nets["net"].weight.grad[:, 1], d_z, atol=1e-6)


def test_rows_outside_the_batch_do_not_move_under_the_engines_optimizer():
    cfg = apply_overrides(get_preset("quickstart"), ["method.name=sop"])
    method = make_sop()
    optimizer, plans = build_optimizer(method, cfg)
    groups = {g["net"]: g for g in optimizer.param_groups}
    for name, lr in (("u", 1.0), ("v", 10.0)):
        assert plans[name] == [lr] * cfg.train.epochs  # constant, warmup included
        assert groups[name]["momentum"] == 0 and groups[name]["weight_decay"] == 0
    assert groups["net"]["momentum"] == 0.9  # the net keeps the run's SGD
    for group in optimizer.param_groups:
        group["lr"] = plans[group["net"]][0]
    u0, v0 = method.u.detach().clone(), method.v.detach().clone()
    for index in ([1, 2], [1, 2], [0]):  # a momentum or decay would move rows 0, 3 after 1, 2
        step(method, index)
        optimizer.step()
    assert torch.equal(method.u[3], u0[3]) and torch.equal(method.v[3], v0[3])
    assert not torch.equal(method.u[1], u0[1]) and not torch.equal(method.v[1], v0[1])
    # Plain SGD with the method's groups does the same (the public code's optimizer).
    method = make_sop()
    sgd = torch.optim.SGD(
        [{k: v for k, v in g.items() if k != "lr_plan"} for g in method.param_groups(cfg.optim)],
        lr=0.01,
    )
    u0 = method.u.detach().clone()
    step(method, [1])
    sgd.step()
    assert torch.equal(method.u[[0, 2, 3]], u0[[0, 2, 3]])


def test_adam_is_refused():
    with pytest.raises(UserError, match=r"optim\.name=sgd.*rows a step did not touch"):
        make_sop().param_groups(OptimConfig(name="adam"))


def test_two_processes_give_the_one_process_gradient_of_u_and_v():
    """No DDP averages u and v: each process's local batch mean would give its rows `world`
    times the one-process gradient, which the 1/world hook undoes."""
    whole = make_sop(init_std=0.3)
    step(whole, [0, 1, 2, 3])
    for part in ([0, 1], [2, 3]):
        rank = make_sop()
        rank.load_state_dict(whole.state_dict())
        rank.dist = _Processes(2)
        step(rank, part)
        assert torch.allclose(rank.u.grad[part], whole.u.grad[part], atol=1e-7)
        assert torch.allclose(rank.v.grad[part], whole.v.grad[part], atol=1e-7)


def _sgd_step(method: SOP, index: list[int]) -> None:
    groups = [
        {k: v for k, v in g.items() if k != "lr_plan"} for g in method.param_groups(OptimConfig())
    ]
    optimizer = torch.optim.SGD(groups, lr=0.01)
    step(method, index)
    optimizer.step()


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    method = make_sop(init_std=0.3)
    method.dist = Dist(rank, 2, rank, "gloo")
    method.fwd["net"] = method.dist.wrap(method.fwd["net"], torch.device("cpu"))
    part = [[0, 1], [2, 3]][rank]
    _sgd_step(method, part)
    mine = torch.zeros(N, dtype=torch.bool)
    mine[part] = True
    sync_rows(method.per_sample_state(), mine, torch.ones(N, dtype=torch.bool), method.dist)
    torch.save({"u": method.u.detach(), "v": method.v.detach()}, f"{out_dir}/rank{rank}.pt")
    tdist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_step_and_sync_u_v_as_one_process(tmp_path):
    """A real 2-process group: each rank steps its half with the engine's groups, then the
    engine's `sync_rows` (per-sample parameters included) gives both ranks the one-process u, v."""
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    whole = make_sop(init_std=0.3)
    _sgd_step(whole, [0, 1, 2, 3])
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(got["u"], whole.u.detach(), atol=1e-7)
        assert torch.allclose(got["v"], whole.v.detach(), atol=1e-7)


def test_sop_plus_terms_by_hand():
    weak = torch.tensor([[0.0, math.log(2), 0]], requires_grad=True)  # p = [1/4, 1/2, 1/4]
    strong = torch.zeros(1, 3, requires_grad=True)  # uniform
    kl = consistency_kl(weak, strong)
    assert kl.item() == pytest.approx(0.5 * math.log(0.75) + 0.5 * math.log(1.5), rel=1e-6)
    kl.backward()
    assert weak.grad is None and strong.grad.abs().sum() > 0  # the weak view is the target
    q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])  # mean [0.3, 0.3, 0.4]
    expected = sum(math.log((1 / 3) / m) for m in (0.3, 0.3, 0.4)) / 3
    assert balance_kl(q).item() == pytest.approx(expected, rel=1e-5)
    assert balance_kl(torch.full((2, 3), 1 / 3)).item() == pytest.approx(0, abs=1e-6)
    method = make_sop(plus=True)
    assert method.train_views() == ("weak", "strong") and method.settings.ratios() == (0.9, 0.1)
    out = step(method, [0, 1, 2])
    total = out["loss_ce"] + out["loss_mse"]
    total = total + 0.9 * out["loss_consistency"] + 0.1 * out["loss_balance"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    assert out["loss_consistency"].item() == pytest.approx(0, abs=1e-6)  # same input twice
    assert make_sop(plus=True, ratio_consistency=0.0).train_views() == ("weak",)


def test_warmup_loss_ce_trains_the_net_alone():
    method = make_sop(plus=True, warmup_loss="ce")
    method.on_epoch_start(0, warmup=True)
    assert method.train_views() == ("weak",)
    out = step(method, [1], warmup=True)
    assert out["loss"].item() == pytest.approx(math.log(4), rel=1e-6)  # CE of [1/4, 1/2, 1/4]
    assert method.u.grad is None and method.v.grad is None
    out = step(make_sop(), [1], warmup=True)  # the default: SOP's loss from the first step
    assert out["loss_ce"].item() == pytest.approx(math.log(2.1), rel=1e-6)


def test_settings_resolve_by_noise_kind_and_refuse_bad_values():
    s = SOP.Settings()
    assert (s.resolved(NoiseConfig(kind="symmetric")).lr_u, s.resolved(NoiseConfig()).lr_v) == (
        1.0,
        10.0,
    )
    asym = s.resolved(NoiseConfig(kind="asymmetric", rate=0.4))
    assert (asym.lr_u, asym.lr_v, asym.ratio_consistency, asym.ratio_balance) == (0.1, 100, 0, 0)
    plus = SOP.Settings(plus=True, lr_u=0.5, ratio_balance=0.0).resolved(NoiseConfig())
    assert (plus.lr_u, plus.lr_v, plus.ratio_consistency, plus.ratio_balance) == (0.5, 10, 0.9, 0)
    for key, value in (("lr_u", 0.0), ("lr_v", -1.0), ("init_std", -1.0), ("ratio_balance", -1)):
        with pytest.raises(UserError, match=rf"method\.{key}"):
            SOP.Settings(**{key: value})


def test_state_round_trip_clean_scores_and_registration():
    method = make_sop(init_std=1.0)
    with torch.no_grad():
        method.u[:, 0] = torch.tensor([0.0, 0.5, -0.9, 2.0])
    assert torch.allclose(method.clean_scores(), torch.tensor([1.0, 0.75, 1 - 0.81, 0.0]))
    assert {id(t) for t in method.per_sample_state()} == {id(method.u), id(method.v)}
    other = make_sop()
    other.load_state_dict(method.state_dict())
    assert torch.equal(other.u, method.u) and torch.equal(other.v, method.v)
    assert not torch.equal(make_sop(init_std=2.0).v, method.v)  # random rows, now restored
    assert "sop" in list_methods() and METHODS.get("sop") is SOP
    assert METHOD_SETTINGS.get("sop") is SOP.Settings
    assert method.paper_number("cifar100n-sym80", 40.74) == 34.23
    assert method.paper_number("web-car", None) == 85.71
    assert method.paper_number("food101n", None) is None


@pytest.mark.slow
def test_trains_through_the_cli(tmp_path):
    run = tmp_path / "run"
    tiny = [
        "train.epochs=2",
        "train.warmup_epochs=1",
        "optim.lr_decay=cosine:1,1e-3,2",
        "train.progress=false",
        "method.name=sop",
        "method.plus=true",
    ]
    sets = [arg for item in tiny for arg in ("--set", item)]
    assert main(["train", "--preset", "quickstart", *sets, "--out", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warmup", "robust"]
    assert 0 <= rows[-1]["noise_size"] <= 1 and rows[-1]["loss_consistency"] >= 0
    assert "loss_balance" in rows[-1] and rows[-1]["test_acc"] > 20
    assert (run / "label_issues.csv").exists()
