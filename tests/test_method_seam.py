"""What the engine offers a method besides its batches, checked through the real loop on tiny
data: any number of views, an un-augmented training-set pass before an epoch (not repeated when
a run resumes inside that epoch), EMA copies of nets updated after every step, per-sample
parameters with their own optimizer options, and a method's own clean score in
label_issues.csv."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from asymco.augment import Normalizer
from asymco.config import OptimConfig, RunConfig, TrainConfig
from asymco.data.loader import ArrayLoader, array_batches
from asymco.data.sharding import BatchPlan
from asymco.engine.build import build_optimizer
from asymco.engine.checkpoint import Position
from asymco.engine.evaluate import logits as eval_logits
from asymco.engine.loop import train_epochs
from asymco.engine.precision import Execution
from asymco.label_issues import label_quality
from asymco.lr_plan import LRPlan
from asymco.methods.base import Batch, Method, MethodSettings

CPU = torch.device("cpu")
N, K = 24, 3


class Probe(Method):
    """A one-net method that records what the engine handed it."""

    Settings = MethodSettings

    def setup(self, make_model: Callable[[], nn.Module], observed_labels: Tensor) -> None:
        self.add_net("net", make_model())
        self.add_average("mean", of="net", decay=0.5)
        self.shift = nn.Parameter(torch.zeros(self.num_samples, K))  # per-sample, own LR
        self.passes: list[tuple[int, dict[str, Tensor]]] = []
        self.views_seen: list[int] = []

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        extra = {"params": [self.shift], "net": "shift", "lr_plan": LRPlan(2.0, 2.0, "constant"),
                 "momentum": 0.0, "weight_decay": 0.0}
        return [*super().param_groups(optim), extra]

    def train_views(self) -> tuple[str, ...]:
        return ("weak",) if self.warmup else ("weak", "weak", "strong")

    def training_pass_nets(self) -> tuple[str, ...]:
        return () if self.warmup else ("net", "mean")

    def on_training_pass(self, logits: dict[str, Tensor]) -> None:
        self.passes.append((self.epoch, logits))

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        self.views_seen.append(len(batch.views))
        z = self.fwd["net"](batch.weak) + self.shift[batch.index]
        return {"loss": nn.functional.cross_entropy(z, batch.label)}


def _parts(epochs: int = 3):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, K, N)
    normalize = Normalizer((0.5,) * 3, (0.25,) * 3, CPU)
    loader = ArrayLoader(images, labels, plan=BatchPlan(N, 8, seed=1), views="cifar",
                         normalize=normalize, device=CPU)
    train_eval = array_batches(loader.images, loader.labels, batch_size=10, normalize=normalize)
    torch.manual_seed(0)
    method = Probe(MethodSettings(name="probe"), num_classes=K,
                   observed_labels=torch.as_tensor(labels),
                   make_model=lambda: nn.Sequential(nn.Flatten(), nn.Linear(192, K)))
    cfg = RunConfig(optim=OptimConfig(lr_decay="constant"),
                    train=TrainConfig(epochs=epochs, warmup_epochs=1))
    optimizer, plans = build_optimizer(method, cfg)  # the engine's, over the method's groups
    return method, optimizer, plans, loader, train_eval


def _train(method, optimizer, plans, loader, train_eval, *, start=None, save=None, epochs=3,
           checkpoint_steps=0):
    exe = Execution(CPU, "fp32", channels_last=False)
    return train_epochs(method, optimizer, loader, train_eval, train_eval=train_eval, exe=exe,
                        plans=plans, epochs=epochs, warmup_epochs=1, is_clean=None,
                        start=start or Position([]), save=save or (lambda p: None),
                        checkpoint_steps=checkpoint_steps, progress=False)


def test_views_training_pass_and_per_sample_parameters():
    method, optimizer, plans, loader, train_eval = _parts()
    before = method.shift.detach().clone()
    history = _train(method, optimizer, plans, loader, train_eval)
    # Warmup batches carry one view, robust ones the three asked for.
    assert method.views_seen == [1] * 3 + [3] * 6
    # One pass per robust epoch, of the named nets, before the epoch's first step.
    assert [epoch for epoch, _ in method.passes] == [1, 2]
    for _, logits in method.passes:
        assert set(logits) == {"net", "mean"}
        assert logits["net"].shape == (N, K) and logits["net"].dtype == torch.float32
        assert not logits["net"].requires_grad and not logits["net"].is_inference()
    # The per-sample parameters follow their own constant LR and are in the metrics' LRs.
    assert history[-1].get("lr") == pytest.approx(0.01)
    assert plans["shift"] == [2.0, 2.0, 2.0]
    assert not torch.equal(method.shift.detach(), before)
    assert method.shift in method.per_sample_state()
    assert "averages.mean.1.weight" in method.state_dict()


def test_training_pass_logits_are_the_nets_eval_logits_at_epoch_start():
    method, optimizer, plans, loader, train_eval = _parts()
    seen = {}

    def keep(position: Position) -> None:  # after epoch 1 (the warmup): the net as it starts 2
        if len(position.history) == 1 and position.step == 0:
            seen["net"] = eval_logits(method.nets["net"], train_eval)

    _train(method, optimizer, plans, loader, train_eval, save=keep)
    assert torch.equal(method.passes[0][1]["net"], seen["net"])


def test_no_second_training_pass_when_resuming_inside_the_epoch():
    method, optimizer, plans, loader, train_eval = _parts()
    saved = []

    def keep(position: Position) -> None:  # the loop's history list grows: copy it
        saved.append(Position(list(position.history), position.step, dict(position.sums)))

    _train(method, optimizer, plans, loader, train_eval, save=keep, epochs=2, checkpoint_steps=1)
    mid = next(p for p in saved if len(p.history) == 1 and p.step == 2)
    method.passes.clear()
    _train(method, optimizer, plans, loader, train_eval, start=mid, epochs=2)
    assert method.passes == []  # the epoch's division was made before the checkpoint


def test_average_follows_the_net_after_every_step():
    method, *_ = _parts()
    net, mean = method.nets["net"], method.averages["mean"]
    assert torch.equal(net[1].weight, mean[1].weight)  # starts equal
    old = mean[1].weight.detach().clone()
    with torch.no_grad():
        net[1].weight.add_(1.0)
    method.after_step()
    # decay 0.5: halfway from the old average to the net.
    torch.testing.assert_close(mean[1].weight, old + 0.5)
    assert not mean[1].weight.requires_grad
    assert "mean" in method.eval_nets() and next(iter(method.eval_nets())) == "net"


def test_own_clean_score_ranks_label_issues():
    given = np.array([0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])
    plain = label_quality(given, probs)
    assert plain["label_score"].tolist() == pytest.approx([0.9, 0.2, 0.9])
    own = label_quality(given, probs, clean_score=np.array([0.3, 0.7, 0.5]))
    assert own["label_score"].tolist() == [0.3, 0.7, 0.5]
    assert own["is_label_issue"].tolist() == [True, False, False]  # below 0.5
    assert own["given_label_prob"].tolist() == pytest.approx([0.9, 0.2, 0.9])
    # A method whose rule draws its line elsewhere (Jo-SRC: its threshold tau) says where.
    cut = label_quality(given, probs, clean_score=np.array([0.3, 0.7, 0.5]), clean_cut=0.75)
    assert cut["is_label_issue"].tolist() == [True, True, True]


def test_views_draw_in_order_so_older_runs_repeat():
    _, _, _, loader, _ = _parts()
    one = next(loader.epoch(0, views=("weak",)))
    two = next(loader.epoch(0, views=("weak", "strong")))
    twice = next(loader.epoch(0, views=("weak", "weak")))
    assert torch.equal(one.weak, two.weak) and torch.equal(one.weak, twice.weak)
    assert not torch.equal(twice.views[0], twice.views[1])  # independent draws
