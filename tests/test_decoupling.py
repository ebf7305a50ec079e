"""Decoupling (update by disagreement): its rule on hand-computed cases, and a run through the
command line, the sweep and the report like every other method."""

from __future__ import annotations

import json
import logging
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
from asymco.methods.decoupling import Decoupling, disagreement_losses
from asymco.presets import get_preset

K = 3
LABELS = torch.tensor([0, 0, 1, 1, 2])
# Rows: each sample's logits under net1 and net2 (one-hot inputs make a Linear a lookup table).
Z1 = torch.tensor([[2.0, 0, 0], [2, 0, 0], [0, 0, 2], [0, 0, 2], [0, 2, 0]])
Z2 = torch.tensor([[2.0, 0, 0], [0, 2, 0], [0, 2, 0], [0, 0, 2], [0, 0, 2]])
DISAGREE = [1, 2, 4]  # samples 0 and 3 get the same class from both nets (3 overrules label 1)


def ce(z: torch.Tensor, y: int) -> float:
    """Cross-entropy by hand: log-sum-exp of the logits minus the label's logit."""
    return math.log(sum(math.exp(v) for v in z.tolist())) - float(z[y])


def make_decoupling(z1=Z1, z2=Z2) -> Decoupling:
    method = Decoupling(
        Decoupling.Settings(),
        num_classes=K,
        observed_labels=LABELS,
        make_model=lambda: nn.Linear(len(LABELS), K, bias=False),
    )
    with torch.no_grad():
        method.nets["net1"].weight.copy_(z1.T)
        method.nets["net2"].weight.copy_(z2.T)
    return method


def step(method: Decoupling, *, warmup: bool = False):
    method.on_epoch_start(0, warmup=warmup)
    method.zero_grad(set_to_none=True)
    batch = Batch(torch.arange(5), (torch.eye(5),), LABELS)
    out = method.training_step(batch)
    out["loss"].backward()
    used = [
        (method.nets[name].weight.grad.abs().sum(0) > 0).nonzero().flatten().tolist()
        for name in ("net1", "net2")
    ]
    return out, used


def test_each_net_learns_from_the_disagreement_set_only():
    out, used = step(make_decoupling())
    expected1 = sum(ce(Z1[i], int(LABELS[i])) for i in DISAGREE) / 3
    expected2 = sum(ce(Z2[i], int(LABELS[i])) for i in DISAGREE) / 3
    assert out["loss_net1"].item() == pytest.approx(expected1, rel=1e-6)
    assert out["loss_net2"].item() == pytest.approx(expected2, rel=1e-6)
    assert out["loss"].item() == pytest.approx(expected1 + expected2, rel=1e-6)
    assert used == [DISAGREE, DISAGREE]  # sample 3's wrong label 1 is never fitted
    assert out["disagree_fraction"].item() == pytest.approx(3 / 5)
    assert out["empty_selection"].item() == 0


def test_warmup_updates_on_every_sample():
    out, used = step(make_decoupling(), warmup=True)
    expected1 = sum(ce(Z1[i], int(LABELS[i])) for i in range(5)) / 5
    assert out["loss_net1"].item() == pytest.approx(expected1, rel=1e-6)
    assert used == [list(range(5))] * 2
    assert out["disagree_fraction"].item() == pytest.approx(3 / 5)  # still measured


def test_agreeing_nets_update_nothing_and_stay_finite():
    out, used = step(make_decoupling(Z1, Z1))
    assert out["loss"].item() == 0.0 and out["empty_selection"].item() == 1
    assert used == [[], []]
    method = make_decoupling(Z1, Z1)
    step(method)
    for p in method.parameters():  # every parameter got a (zero) gradient: DDP needs that
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p.grad))


def test_two_processes_give_the_one_process_gradient():
    """Split the batch over two simulated ranks: the mean of their gradients (what DDP
    applies) equals the gradient of the whole batch in one process."""
    ce1 = torch.tensor([0.3, 1.2, 0.7, 2.0, 0.1, 0.9], requires_grad=True)
    ce2 = torch.tensor([1.1, 0.4, 0.8, 0.2, 1.5, 0.6], requires_grad=True)
    update = torch.tensor([True, False, True, True, False, True])
    z = torch.zeros(6, K, requires_grad=True)
    loss1, loss2 = disagreement_losses(z, z, ce1, ce2, update, update.sum().float(), 1)
    whole = torch.autograd.grad(loss1 + loss2, (ce1, ce2))
    count = update.sum().float()  # the global count both ranks see
    grads = [torch.zeros(6), torch.zeros(6)]
    for part in (slice(0, 2), slice(2, 6)):  # rank 0 holds 2 samples (one updated), rank 1 four
        a, b = ce1.detach()[part].requires_grad_(), ce2.detach()[part].requires_grad_()
        l1, l2 = disagreement_losses(z[part], z[part], a, b, update[part], count, 2)
        ga, gb = torch.autograd.grad(l1 + l2, (a, b))
        grads[0][part] += ga / 2
        grads[1][part] += gb / 2
    assert torch.allclose(grads[0], whole[0]) and torch.allclose(grads[1], whole[1])
    assert loss1.item() == pytest.approx((0.3 + 0.7 + 2.0 + 0.9) / 4)


def test_registered_with_its_settings_and_paper_numbers():
    assert "decoupling" in list_methods() and METHODS.get("decoupling") is Decoupling
    assert METHOD_SETTINGS.get("decoupling") is Decoupling.Settings
    method = make_decoupling()
    assert method.selected() is None and method.judgements() == {}  # no clean judgement
    assert method.paper_number("cifar100n-sym20", 65.51) == 33.10  # not ACT's preset number
    assert method.paper_number("quickstart", None) is None


def test_settings_of_another_method_are_refused():
    cfg = apply_overrides(get_preset("quickstart"), ["method.name=decoupling"])
    assert cfg.method == Decoupling.Settings()
    with pytest.raises(UserError, match=r"method\.tau.*decoupling has: label_smoothing, name"):
        apply_overrides(get_preset("quickstart"), ["method.tau=0.1", "method.name=decoupling"])


TINY = ["--set", "train.epochs=2", "--set", "train.warmup_epochs=1",
        "--set", "optim.lr_decay=cosine:1,1e-3,2", "--set", "train.progress=false"]


@pytest.mark.slow
def test_trains_through_the_cli_the_sweep_and_the_report(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    run = tmp_path / "run"
    assert main(["train", "--preset", "quickstart", "--set", "method.name=decoupling", *TINY,
                 "--out", str(run)]) == 0
    assert "quickstart / decoupling: last-10 test accuracy" in capsys.readouterr().out
    last = [line for line in caplog.text.splitlines() if "epoch 2/2 robust" in line]
    assert last and "| net2 " in last[0] and "| disagree " in last[0]  # its console words
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warmup", "robust"]
    assert rows[-1]["sel_precision"] is None and 0 <= rows[-1]["disagree_fraction"] <= 1
    assert "test_acc_net2" in rows[-1] and "loss_net2" in rows[-1]
    sweep = tmp_path / "sweep"
    assert main(["sweep", "--presets", "quickstart", "--methods", "decoupling", "standard",
                 "--seeds", "1", "--out", str(sweep), *TINY]) == 0
    summary = json.loads((sweep / "quickstart/decoupling/seed1/summary.json").read_text())
    assert summary["method"] == "decoupling" and summary["epochs"] == 2
    assert main(["report", str(sweep)]) == 0
    report = (sweep / "report" / "report.md").read_text()
    assert "| quickstart | decoupling |" in report and "| quickstart | standard |" in report
