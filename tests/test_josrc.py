"""Jo-SRC: the JS clean likelihood, the clean/ID/OOD split, the mean teacher and the joint loss
on hand-computed cases, its state, and a tiny run through the command line.

The hand-made logits come from a "table" net: a bias-free Linear(N, K) fed c * e_i (a scaled
one-hot sample id), so sample i's logits are c times column i of the weight. The two views of
sample i are e_i and c_i * e_i: the second view's logits are c_i * z_i, and a negative c_i
makes the views disagree.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from torch import Tensor, nn

from asymco.batch import Batch
from asymco.cli import main
from asymco.config import METHOD_SETTINGS
from asymco.config_io import apply_overrides
from asymco.errors import UserError
from asymco.methods import METHODS, list_methods
from asymco.methods.josrc import (
    JoSRC,
    clean_threshold,
    joint_terms,
    js_divergence,
    smoothed_labels,
    split_samples,
    views_agree,
)
from asymco.presets import get_preset

K = 3
LABELS = torch.tensor([0, 1, 2, 2])
Z = torch.tensor([[3.0, 0, 0], [3, 0, 0], [0.5, 3, 0], [0, 0, 2]])  # student logits, view 1
C = torch.tensor([2.0, 2.0, -1.0, 2.0])  # view 2 = C_i * e_i: logits C_i * Z_i
# 0: clean; 1: label 1 but both views say 0 (ID, relabelled); 2: label 2, views say 1 and 2 (OOD)
# 3: clean.
SPLIT = {"clean": [True, False, False, True], "id": [False, True, False, False],
         "ood": [False, False, True, False]}
EPS, TAU, ALPHA, T = 0.2, 0.7, 0.5, 10.0


def js2(p: list[float], q: list[float]) -> float:
    """Jensen-Shannon divergence in bits, written out."""
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    kl = lambda a, b: sum(x * math.log2(x / y) for x, y in zip(a, b, strict=True) if x > 0)  # noqa: E731
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def make_josrc(**settings: object) -> JoSRC:
    defaults = dict(eps=EPS, tau_clean=TAU, tau_max=TAU, alpha=ALPHA, warmup_ramp_epochs=0)
    method = JoSRC(
        JoSRC.Settings(**{**defaults, **settings}),
        num_classes=K,
        observed_labels=LABELS,
        make_model=lambda: nn.Linear(len(LABELS), K, bias=False),
    )
    with torch.no_grad():
        method.nets["net"].weight.copy_(Z.T)
        method.averages["teacher"].weight.copy_(Z.T)  # the teacher starts as the student
    return method


def step(method: JoSRC, *, warmup: bool = False, epoch: int = 0):
    method.on_epoch_start(epoch, warmup=warmup)
    method.zero_grad(set_to_none=True)
    eye = torch.eye(len(LABELS))
    batch = Batch(torch.arange(len(LABELS)), (eye, eye * C[:, None]), LABELS)
    out = method.training_step(batch)
    out["loss"].backward()
    return out, method.nets["net"].weight.grad.T  # (N, K): dL/dW_i, per sample


# ------------------------------------------------------------------ JS and the split


def test_js_divergence_by_hand():
    p = torch.tensor([[0.2, 0.5, 0.3], [1, 0, 0], [0.5, 0.5, 0], [1, 0, 0]])
    q = torch.tensor([[0.2, 0.5, 0.3], [0, 1, 0], [0, 0.5, 0.5], [0.5, 0.5, 0]])
    # m = (0.25, 0.5, 0.25): each KL is 0.5 * log2(2) = 0.5.  Last row: m = (0.75, 0.25, 0),
    # KL(p||m) = log2(4/3), KL(q||m) = 0.5 log2(2/3) + 0.5 log2(2).
    last = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5)
    expected = torch.tensor([0.0, 1.0, 0.5, last])
    assert torch.allclose(js_divergence(p, q), expected, atol=1e-6)
    assert last == pytest.approx(0.311278, abs=1e-6)
    assert torch.allclose(js_divergence(q, p), expected, atol=1e-6)  # symmetric


def test_smoothed_labels_and_threshold_schedule():
    smoothed = smoothed_labels(torch.tensor([1]), 3, 0.6)
    assert torch.allclose(smoothed, torch.tensor([[0.3, 0.4, 0.3]]))  # 0.6 / 2 off the label
    s = JoSRC.Settings()  # the code's 0 -> 0.75 over warmup, then 0.75 -> 0.95
    plan = {"settings": s, "ramp_epochs": 50, "rise_epochs": 100}
    assert clean_threshold(0, -1, warmup=True, **plan) == 0.0
    assert clean_threshold(25, -1, warmup=True, **plan) == pytest.approx(0.375)
    assert clean_threshold(50, 0, warmup=False, **plan) == pytest.approx(0.75)
    assert clean_threshold(100, 50, warmup=False, **plan) == pytest.approx(0.85)
    assert clean_threshold(160, 110, warmup=False, **plan) == pytest.approx(0.95)
    plain = {**plan, "settings": JoSRC.Settings(warmup_selection=False)}  # engine's convention
    assert clean_threshold(40, -1, warmup=True, **plain) == 0.0


def test_threshold_schedule_follows_the_runs_warmup_and_length_by_default():
    method = JoSRC(JoSRC.Settings(), num_classes=K, observed_labels=LABELS,
                   make_model=lambda: nn.Linear(len(LABELS), K), epochs=60, warmup_epochs=10)
    method.on_epoch_start(5, warmup=True)  # half-way through the run's 10 warmup epochs
    assert method.threshold.item() == pytest.approx(0.75 * 5 / 10)
    method.on_epoch_start(10, warmup=False)
    method.on_epoch_start(35, warmup=False)  # 25 of the run's 50 robust epochs
    assert method.threshold.item() == pytest.approx(0.75 + 0.2 * 25 / 50)
    assert method.clean_cut() == pytest.approx(0.85)  # label issues: below Jo-SRC's own line


def test_clean_id_ood_split_on_hand_made_inputs():
    p_clean = torch.tensor([0.9, 0.7, 0.7, 0.75, 0.2])
    agree = torch.tensor([False, True, False, True, True])
    clean, id_noisy, ood = split_samples(p_clean, 0.75, agree)
    assert clean.tolist() == [True, False, False, True, False]  # P >= tau, as the code
    assert id_noisy.tolist() == [False, True, False, False, True]
    assert ood.tolist() == [False, False, True, False, False]
    p1 = torch.tensor([[0.6, 0.4, 0.0], [0.6, 0.4, 0.0]])
    p2 = torch.tensor([[0.4, 0.6, 0.0], [0.9, 0.1, 0.0]])
    assert views_agree(p1, p2, rule="argmax", tau_id=0.5).tolist() == [False, True]
    # "js": 1 - JS(p1 || p2). The first pair differs in argmax but is close (JS 0.029 bits),
    # the second shares the argmax but is further apart (JS 0.091): the soft rule flips both.
    js_first = js2([0.6, 0.4, 0.0], [0.4, 0.6, 0.0])
    js_second = js2([0.6, 0.4, 0.0], [0.9, 0.1, 0.0])
    assert js_first == pytest.approx(0.0290, abs=1e-4)
    assert js_second == pytest.approx(0.0913, abs=1e-4)
    assert views_agree(p1, p2, rule="js", tau_id=0.95).tolist() == [True, False]
    assert views_agree(p1, p2, rule="js", tau_id=0.9).tolist() == [True, True]


# ------------------------------------------------------------------ the mean teacher


def test_mean_teacher_after_step_by_hand():
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    method = JoSRC(JoSRC.Settings(), num_classes=K, observed_labels=LABELS, make_model=lambda: net)
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        method.averages["teacher"][0].weight.fill_(1.0)
        net[0].weight.fill_(3.0)  # as if an optimizer step moved the student
        net[1].running_mean.fill_(0.5)
    method.after_step()
    teacher = method.averages["teacher"]
    assert teacher[0].weight.item() == pytest.approx(0.99 * 1.0 + 0.01 * 3.0)  # 1.02
    assert teacher[1].running_mean.item() == 0.5  # buffers are copied, not averaged
    method.after_step()
    assert teacher[0].weight.item() == pytest.approx(0.99 * 1.02 + 0.01 * 3.0)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert list(method.eval_nets()) == ["net", "teacher"]  # the student is reported


# ------------------------------------------------------------------ the losses


def hand_terms() -> dict[str, Tensor]:
    """Each sample's pieces, written out from the formulas (not from the module)."""
    p1 = torch.softmax(Z, 1)
    p2 = torch.softmax(Z * C[:, None], 1)
    y = torch.full((4, K), EPS / (K - 1))
    y[torch.arange(4), LABELS] = 1 - EPS
    q = (p1 + p2) / 2  # the teacher equals the student here
    target = y.clone()
    target[1] = q[1]  # ID: relabelled by the teacher
    target[2] = torch.softmax(q[2] / T, 0)  # OOD: nearly uniform
    ce = -(target * (p1.log() + p2.log())).sum(1)
    g = p1.log() - p2.log()
    skl = ((p1 - p2) * g).sum(1) / math.log(2)
    # d skl / d z1 = p1 (g - <p1, g>) + p1 - p2; d skl / d z2 = p2 (<p2, g> - g) + p2 - p1
    dz1 = (p1 * (g - (p1 * g).sum(1, keepdim=True)) + p1 - p2) / math.log(2)
    dz2 = (p2 * ((p2 * g).sum(1, keepdim=True) - g) + p2 - p1) / math.log(2)
    return {"p1": p1, "p2": p2, "y": y, "target": target, "ce": ce, "skl": skl,
            "dskl": dz1 + C[:, None] * dz2, "dce": (p1 - target) + C[:, None] * (p2 - target)}


def test_the_example_splits_as_designed():
    h = hand_terms()
    p_clean = [1 - js2(h["p1"][i].tolist(), h["y"][i].tolist()) for i in range(4)]
    assert [p >= TAU for p in p_clean] == SPLIT["clean"]
    method = make_josrc()
    out, _ = step(method, warmup=False)
    assert method.is_selected.tolist() == SPLIT["clean"]
    assert method.is_relabelled.tolist() == SPLIT["id"]
    assert method.is_ood.tolist() == SPLIT["ood"]
    assert method.clean_scores().tolist() == pytest.approx(p_clean, abs=1e-5)
    assert out["id_share"].item() == 0.25 and out["ood_share"].item() == 0.25


def test_joint_loss_value_and_gradient():
    h = hand_terms()
    sign = torch.tensor([1.0, 1.0, -1.0, 1.0])
    out, grad = step(make_josrc(), warmup=False)
    assert out["loss_cls"].item() == pytest.approx(h["ce"].mean().item(), rel=1e-5)
    assert out["loss_cons"].item() == pytest.approx((sign * h["skl"]).mean().item(), rel=1e-5)
    expected = (1 - ALPHA) * h["ce"].mean() + ALPHA * (sign * h["skl"]).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    hand_grad = ((1 - ALPHA) * h["dce"] + ALPHA * sign[:, None] * h["dskl"]) / 4
    assert torch.allclose(grad, hand_grad, atol=1e-6)


def test_dropping_ood_samples_removes_them_from_both_terms():
    h = hand_terms()
    out, grad = step(make_josrc(ood_target="drop", ood_consistency=0.0), warmup=False)
    keep = torch.tensor([1.0, 1.0, 0.0, 1.0])
    assert out["loss_cls"].item() == pytest.approx((h["ce"] * keep).sum().item() / 3, rel=1e-5)
    assert out["loss_cons"].item() == pytest.approx((h["skl"] * keep).sum().item() / 4, rel=1e-5)
    assert torch.equal(grad[2], torch.zeros(K))  # the OOD sample teaches nothing


def test_warmup_trains_on_the_clean_samples_with_smoothed_labels():
    h = hand_terms()
    out, grad = step(make_josrc(), warmup=True)  # warmup_ramp_epochs=0: tau_clean at once
    ce = -(h["y"] * (h["p1"].log() + h["p2"].log())).sum(1)
    assert out["loss"].item() == pytest.approx((ce[0] + ce[3]).item() / 2, rel=1e-5)
    assert out["loss_cons"].item() == 0.0
    dce = (h["p1"] - h["y"]) + C[:, None] * (h["p2"] - h["y"])
    assert torch.allclose(grad[[0, 3]], dce[[0, 3]] / 2, atol=1e-6)
    assert torch.equal(grad[[1, 2]], torch.zeros(2, K))
    method = make_josrc(tau_clean=1.0, tau_max=1.0)  # nothing is clean: exact zero, no NaN
    out, grad = step(method, warmup=True)
    assert out["loss"].item() == 0.0 and out["empty_selection"].item() == 1.0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_two_processes_give_the_one_process_gradient():
    z1 = torch.randn(6, K, generator=torch.Generator().manual_seed(0))
    z2 = torch.randn(6, K, generator=torch.Generator().manual_seed(1))
    ce = torch.rand(6, generator=torch.Generator().manual_seed(2))
    ood = torch.tensor([False, True, False, False, True, False])
    s = JoSRC.Settings()

    def grads(part: slice, world: int) -> Tensor:
        a = z1[part].clone().requires_grad_()
        six = torch.tensor(6.0)
        cls, cons = joint_terms(a, z2[part], ce[part], ood[part], s, (six, six), world)
        return torch.autograd.grad(cls + cons, a)[0]

    whole = grads(slice(0, 6), 1)
    split = torch.cat([grads(slice(0, 2), 2), grads(slice(2, 6), 2)]) / 2  # DDP's mean
    assert torch.allclose(split, whole, atol=1e-6)


# ------------------------------------------------------------------ state and registration


def test_state_round_trips_with_the_teacher():
    method = make_josrc()
    step(method, warmup=False, epoch=3)
    with torch.no_grad():
        method.nets["net"].weight.add_(1.0)
    method.after_step()
    clone = make_josrc()
    clone.load_state_dict(method.state_dict())
    for (key, a), (_, b) in zip(method.state_dict().items(), clone.state_dict().items(),
                                strict=True):
        assert torch.equal(a, b), key
    assert "averages.teacher.weight" in method.state_dict()
    assert int(clone.robust_start) == 3 and clone.threshold.item() == pytest.approx(TAU)
    assert {t.data_ptr() for t in method.per_sample_state()} == {
        t.data_ptr() for t in (method.is_selected, method.select_count, method.is_relabelled,
                               method.is_ood, method.clean_score)}


def test_robust_threshold_rises_from_the_first_robust_epoch():
    method = make_josrc(tau_clean=0.75, tau_max=0.95, rise_epochs=10)
    method.on_epoch_start(7, warmup=False)
    method.on_epoch_start(12, warmup=False)
    assert int(method.robust_start) == 7
    assert method.threshold.item() == pytest.approx(0.75 + 0.2 * 5 / 10)
    method.set_phase(12, warmup=False)  # a mid-epoch resume decides the same
    assert method.threshold.item() == pytest.approx(0.85)


def test_registered_with_settings_checks_and_paper_numbers():
    assert "josrc" in list_methods() and METHODS.get("josrc") is JoSRC
    assert METHOD_SETTINGS.get("josrc") is JoSRC.Settings
    assert JoSRC.paper_numbers["cifar80n-asym40"] == 53.03
    assert make_josrc().paper_number("cifar100n-sym20", 65.51) == 58.15
    cfg = apply_overrides(get_preset("quickstart"), ["method.name=josrc", "method.alpha=0.4"])
    assert cfg.method == JoSRC.Settings(alpha=0.4)
    for key, value in (("alpha", 1.5), ("tau_max", 0.5), ("ood_target", "keep"),
                       ("rise_epochs", -1), ("eps", 1.0)):
        with pytest.raises(UserError, match=rf"method\.{key}"):
            JoSRC.Settings(**{key: value})


# ------------------------------------------------------------------ end to end

TINY = ["--set", "train.epochs=3", "--set", "train.warmup_epochs=1",
        "--set", "optim.lr_decay=cosine:1,1e-3,3", "--set", "train.progress=false"]


@pytest.mark.slow
def test_trains_through_the_cli(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    run = tmp_path / "run"
    assert main(["train", "--preset", "quickstart", "--set", "method.name=josrc", *TINY,
                 "--out", str(run)]) == 0
    assert "quickstart / josrc: last-10 test accuracy" in capsys.readouterr().out
    last = [line for line in caplog.text.splitlines() if "epoch 3/3 robust" in line]
    assert last and "| teacher " in last[0] and "relabel " in last[0]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warmup", "robust", "robust"]
    assert rows[-1]["sel_precision"] is not None and "test_acc_teacher" in rows[-1]
    assert rows[-1]["threshold"] == pytest.approx(0.75 + 0.2 * 1 / 2)
    assert 0 <= rows[-1]["relabelled_fraction"] <= 1 and "ood_fraction" in rows[-1]
    issues = (run / "label_issues.csv").read_text().splitlines()
    assert len(issues) > 1 and "label_score" in issues[0]
