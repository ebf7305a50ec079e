"""Sharding and the distributed pieces, without torchrun: the batch plan's guarantees (property
tests), loaders that restart at any step, and a real 2-process gloo group (spawned here) in which
ACT's gradients and per-sample state equal one process's on the same global batch, even when
one rank has no selected sample."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from asymco import api
from asymco.batch import Batch
from asymco.data.loader import ArrayLoader, normalizer_for
from asymco.data.pil_loader import PilLoader
from asymco.data.sharding import MIN_PER_RANK, BatchPlan
from asymco.engine.checkpoint import load_checkpoint
from asymco.engine.distributed import Dist, sync_rows
from asymco.errors import UserError
from asymco.methods.act import ACT, ACTSettings
from tests.test_checkpoint import rewrite_checkpoint

CPU = torch.device("cpu")


def _flat(batch: Batch) -> list[torch.Tensor]:
    return [batch.index, *batch.views, batch.label]


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 400),
    batch=st.integers(1, 130),
    world=st.integers(1, 4),
    seed=st.integers(0, 2**40),
    epoch=st.integers(0, 300),
)
def test_every_sample_once_per_epoch_over_all_ranks(n, batch, world, seed, epoch):
    try:
        plans = [BatchPlan(n, batch, seed, rank=r, world=world) for r in range(world)]
    except UserError as err:  # too little data or too small a batch for this many processes
        assert n < MIN_PER_RANK * world or batch < MIN_PER_RANK * world
        assert str(err)
        return
    shares = [plan.batches(epoch) for plan in plans]
    assert len({len(s) for s in shares}) == 1 == len({len(p) for p in plans})
    assert len(shares[0]) == len(plans[0])  # every rank takes the same number of steps
    seen = torch.cat([index for share in shares for index in share])
    assert sorted(seen.tolist()) == list(range(n))  # nothing padded, repeated or dropped
    for step in range(len(plans[0])):
        sizes = [len(share[step]) for share in shares]
        assert max(sizes) - min(sizes) <= 1  # ranks share each global batch evenly
        assert min(sizes) >= MIN_PER_RANK  # BatchNorm can train on every share
    # The order is a function of (seed, epoch) only: every rank computes the same one.
    assert torch.equal(plans[0].order(epoch), plans[-1].order(epoch))


def test_epochs_and_seeds_reshuffle():
    plan = BatchPlan(100, 10, seed=3)
    assert not torch.equal(plan.order(0), plan.order(1))
    assert not torch.equal(plan.order(0), BatchPlan(100, 10, seed=4).order(0))
    assert torch.equal(plan.order(5), BatchPlan(100, 10, seed=3).order(5))
    assert len(BatchPlan(129, 64, seed=0)) == 2  # a single leftover sample joins the batch before


def _images(n=40, size=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.mark.parametrize("kind", ["device", "pil"])
def test_loaders_restart_at_any_step_with_the_same_pixels(kind):
    images, labels = _images()
    normalize = normalizer_for(images, "imagenet", CPU)

    def loader(workers=0):
        common = dict(plan=BatchPlan(40, 8, seed=1), views="cifar", normalize=normalize,
                      device=CPU)
        if kind == "pil":
            return PilLoader(images, labels, workers=workers, **common)
        return ArrayLoader(images, labels, **common)

    full = list(loader().epoch(2, views=("weak", "strong")))
    tail = list(loader().epoch(2, views=("weak", "strong"), start_step=3))
    assert len(full) == 5 and len(tail) == 2
    for a, b in zip(full[3:], tail, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(_flat(a), _flat(b), strict=True))
    if kind == "pil":  # per-sample seeds: the worker that decodes an image does not matter
        two_workers = list(loader(workers=2).epoch(2, views=("weak", "strong")))
        for a, b in zip(full, two_workers, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(_flat(a), _flat(b), strict=True))


# ---- a real 2-process group -------------------------------------------------------------------

K, N, FEATURES = 4, 16, 12


def _act(labels: torch.Tensor) -> ACT:
    torch.manual_seed(0)  # the same two initialisations in every process
    return ACT(ACTSettings(use_cr=False), num_classes=K, observed_labels=labels,
               make_model=lambda: nn.Sequential(nn.Flatten(), nn.Linear(FEATURES, K)))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs, and labels chosen so that rank 0's share (even positions) has agreed samples and
    rank 1's share (odd positions) has none: neither net predicts its label."""
    x = torch.randn(N, FEATURES, generator=torch.Generator().manual_seed(5))
    method = _act(torch.zeros(N, dtype=torch.long))
    with torch.no_grad():
        rtm, ntm = method.nets["rtm"](x).argmax(1), method.nets["ntm"](x).argmax(1)
    labels = torch.empty(N, dtype=torch.long)
    for i in range(N):
        if i % 2 == 0:
            labels[i] = rtm[i] if i % 4 == 0 else (rtm[i] + 1) % K
        else:
            labels[i] = next(c for c in range(K) if c not in (rtm[i], ntm[i]))
    return x, labels


def _step(method: ACT, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> dict:
    method.on_epoch_start(3, warmup=False)
    out = method.training_step(Batch(index, (x[index],), labels[index]))
    out["loss"].backward()
    return out


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world)
    dist = Dist(rank, world, rank, "gloo")
    x, labels = _data()
    method = _act(labels)
    method.dist = dist
    for name, views in method.fwd.items():
        method.fwd[name] = dist.wrap(views, CPU)
    index = torch.arange(N)[rank::world]
    out = _step(method, x, labels, index)
    mine = torch.zeros(N, dtype=torch.bool)
    mine[index] = True
    sync_rows(method.per_sample_state(), mine, torch.ones(N, dtype=torch.bool), dist)
    try:
        dist.on_main(lambda: (_ for _ in ()).throw(UserError("only rank 0 saw this")))
        error = None
    except UserError as err:
        error = str(err)
    torch.save({
        "grads": {k: p.grad for k, p in method.named_parameters()},
        "buffers": dict(method.named_buffers()),
        "out": {k: v.detach() for k, v in out.items()},
        "local_chosen": int(method.is_selected[index].sum()),
        "error": error,
        "gathered": dist.gather(rank * 10),
    }, Path(out_dir) / f"rank{rank}.pt")
    tdist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank_main, args=(2, str(folder / "init"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_ranks_compute_what_one_process_computes(two_ranks):
    x, labels = _data()
    alone = _act(labels)
    out = _step(alone, x, labels, torch.arange(N))
    assert two_ranks[1]["local_chosen"] == 0 < two_ranks[0]["local_chosen"]  # rank 1: none
    for rank in two_ranks:
        # DDP's averaged gradients equal the single-process gradients of the global batch.
        for name, param in alone.named_parameters():
            torch.testing.assert_close(rank["grads"][name], param.grad, rtol=1e-5, atol=1e-7)
        # After the sync each rank holds every sample's state, as the single process does.
        for name, buf in alone.named_buffers(recurse=False):
            assert torch.equal(rank["buffers"][name], buf), name
        # The memorization metric, the gate and the selected share are global-batch figures.
        for key in ("memorization_gap", "mining_on", "selected_share", "train_acc_rtm"):
            torch.testing.assert_close(rank["out"][key], out[key])


def test_rank0_errors_reach_every_rank_and_gather_orders_by_rank(two_ranks):
    assert [r["error"] for r in two_ranks] == ["only rank 0 saw this"] * 2
    assert two_ranks[0]["gathered"] == two_ranks[1]["gathered"] == [0, 10]


# ---- checkpoints of distributed runs --------------------------------------------------------


def test_mid_epoch_checkpoint_refuses_another_process_count(tmp_path):
    cfg = api.resolve_config("quickstart", ["train.epochs=1", "train.progress=false",
                                            "train.checkpoint_steps=5"])
    api.train(cfg, out_dir=tmp_path)
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    # As two processes write it mid-epoch: each rank's running figures and RNG states.
    state.update(step=5, world_size=2, history=[], sums=state["sums"] * 2, rng=state["rng"] * 2)
    rewrite_checkpoint(path, state)
    (tmp_path / "summary.json").unlink()  # killed mid-epoch: no summary yet
    assert load_checkpoint(path, num_samples=1437, config=state["config"])["step"] == 5
    with pytest.raises(UserError, match=r"middle of an epoch by 2 process\(es\); resume it "
                                        r"with 2 \(torchrun --nproc-per-node 2\)"):
        api.train(cfg, out_dir=tmp_path, resume=True)


def test_gpu_processes_without_a_gpu_are_refused(monkeypatch):
    from asymco.engine.distributed import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU is available"):
        init_distributed("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="local rank 1 has no GPU: this node has 1"):
        init_distributed("auto")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu") == (Dist(), "cpu")  # alone: no process group at all
    assert not tdist.is_initialized()
