"""Packed runs (engine/pack.py, engine/pack_run.py): K runs trained as one batched model must
be K runs. One packed step equals K separate steps; a packed run's directory is a plain run's;
a killed pack resumes to the same figures."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asymco import api
from asymco.batch import Batch
from asymco.config import RunConfig
from asymco.config_io import to_dict
from asymco.data.pipeline import workers_for
from asymco.data.prepare import prepare_data
from asymco.engine.build import build_method, build_optimizer
from asymco.engine.loop import ALONE
from asymco.engine.pack import PackedModel, pack_key
from asymco.engine.precision import resolve_execution
from asymco.engine.run import run_pipeline
from asymco.engine.seeding import seed_everything
from asymco.errors import UserError
from asymco.methods import METHODS

PACKABLE = [name for name in METHODS.names() if METHODS.get(name).packable]
QUICK = ["train.epochs=3", "train.warmup_epochs=1", "train.progress=false"]


def _quick(seed: int, *extra: str, method: str = "act") -> RunConfig:
    cfg = api.resolve_config("quickstart", [*QUICK, f"method.name={method}",
                                            f"train.seed={seed}", "train.precision=fp32", *extra])
    return api._fixed(cfg)


def _member(cfg: RunConfig):
    """A method, its optimizer and its first batch, built as a run builds them."""
    seed_everything(cfg.train.seed)
    data = prepare_data(cfg.data, cfg.noise, workers=workers_for(cfg.data))
    exe = resolve_execution(cfg.train, torch.device("cpu"))
    method = build_method(cfg, data, exe, ALONE)
    optimizer, plans = build_optimizer(method, cfg)
    loader = run_pipeline(cfg, data, exe, ALONE).loader
    return method, optimizer, plans, loader, exe


def _state(method) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


@pytest.mark.parametrize("method_name", PACKABLE)
@pytest.mark.parametrize("warmup", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_packed_step_equals_separate_steps(method_name, warmup, dtype):
    """Pack of 3 (different seeds: labels, inits and batches differ): after one step the
    parameters, BN buffers, per-sample state, momentum and figures equal three plain steps.

    In float64 to rounding (the same arithmetic). In fp32 the grouped convolutions sum in
    another order, and a difference of 1e-7 can flip a ReLU or max-pool decision, which moves
    that one gradient entry by O(lr * activation); the plain fp32 step differs from its own
    float64 version in the same way. So in fp32 parameters get 1e-3 (momentum, a gradient,
    1e-2)."""
    exact = dtype == torch.float64
    members = [_member(_quick(seed, method=method_name)) for seed in (1, 2, 3)]
    epoch = 0 if warmup else 1
    batches = []
    for method, optimizer, plans, loader, _ in members:
        method.to(dtype)
        for group in optimizer.param_groups:
            group["lr"] = plans[group["net"]][epoch]
        method.train()
        method.on_epoch_start(epoch, warmup=warmup)
        if not warmup and hasattr(method, "select_count"):  # some selection history
            method.select_count.fill_(1)
        batch = next(iter(loader.epoch(epoch, views=method.train_views())))
        batches.append(Batch(batch.index, tuple(v.to(dtype) for v in batch.views), batch.label))
    alone = [copy.deepcopy((m, o)) for m, o, *_ in members]  # the optimizer follows the copy
    packed = PackedModel([m for m, *_ in members], [o for _, o, *_ in members])
    out = packed.step(batches, members[0][-1])
    packed.scatter()
    close = {"atol": 1e-10 if exact else 1e-5, "rtol": 0}
    weights = {"atol": 1e-10 if exact else 1e-3, "rtol": 0}
    gradients = {"atol": 1e-10 if exact else 1e-2, "rtol": 0}  # momentum: lr^-1 x weights
    for k, ((method, optimizer), batch) in enumerate(zip(alone, batches, strict=True)):
        figures = method.training_step(batch)
        optimizer.zero_grad(set_to_none=True)
        figures["loss"].backward()
        optimizer.step()
        for key, value in figures.items():
            assert torch.allclose(out[key][k].double(), value.double(), **close), key
        params = {name for name, _ in method.named_parameters()}
        expected, got = _state(method), _state(members[k][0])
        for name in expected:
            tol = weights if name in params else close  # buffers: BN statistics, per-sample
            assert torch.allclose(got[name].double(), expected[name].double(), **tol), name
        for p_alone, p_packed in zip(method.parameters(), members[k][0].parameters(), strict=True):
            momentum = optimizer.state[p_alone]["momentum_buffer"]
            got = members[k][1].state[p_packed]["momentum_buffer"]
            assert torch.allclose(got.double(), momentum.double(), **gradients)


def _figures(history: list[dict]) -> list[dict]:
    timing = {"epoch_seconds", "images_per_second", "eval_seconds"}
    return [{k: v for k, v in row.items() if k not in timing} for row in history]


def test_a_pack_of_one_is_a_plain_run(tmp_path):
    cfg = _quick(1)
    packed = api.train_pack([cfg], [tmp_path / "packed"])[0]
    plain = api.train(cfg, out_dir=tmp_path / "plain")
    assert _figures(packed.history) == _figures(plain.history)
    for name in ("config.yaml", "noisy_labels.npy", "label_issues.csv"):
        assert (tmp_path / "packed" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


def test_a_packed_run_directory_is_a_plain_one(tmp_path):
    """Same files, same config.yaml and noisy labels as the member trained alone, a summary
    with the same keys; the member's checkpoint resumes as a plain run."""
    cfgs = [_quick(seed) for seed in (1, 2)]
    results = api.train_pack(cfgs, [tmp_path / "p1", tmp_path / "p2"])
    plain = api.train(cfgs[1], out_dir=tmp_path / "plain")
    packed_dir, plain_dir = tmp_path / "p2", tmp_path / "plain"
    files = [sorted(p.name for p in d.iterdir()) for d in (packed_dir, plain_dir)]
    assert files[0] == files[1]
    for name in ("config.yaml", "noisy_labels.npy"):
        assert (packed_dir / name).read_bytes() == (plain_dir / name).read_bytes()
    assert results[1].summary.keys() == plain.summary.keys()
    assert results[1].summary["execution"]["pack"] == 2 and plain.summary["execution"]["pack"] == 1
    assert [r["epoch"] for r in results[1].history] == [0, 1, 2]
    assert results[0].summary["test_acc_final"] > 60  # 3 epochs on digits at 40% noise learn
    assert results[0].history != results[1].history  # two seeds, two runs


def _cut_and_resume(monkeypatch, cfgs, root, save_checkpoint) -> list:
    """Train `cfgs` as a pack into root/c1, c2, ... with `save_checkpoint` in place of the
    engine's (it raises KeyboardInterrupt where the pack is cut), then resume the pack."""
    from asymco.engine import run

    original = run.save_checkpoint
    outs = [root / f"c{i}" for i in range(1, len(cfgs) + 1)]
    monkeypatch.setattr(run, "save_checkpoint", save_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        api.train_pack(cfgs, outs)
    monkeypatch.setattr(run, "save_checkpoint", original)
    return api.train_pack([api.load_run_config(o) for o in outs], outs, resume=True)


def test_a_killed_pack_resumes_to_the_same_figures(tmp_path, monkeypatch):
    """Stopped right after every member's mid-epoch checkpoint, the pack resumes and ends with
    the figures of a pack that was never stopped."""
    from asymco.engine import run

    cfgs = [_quick(seed, "train.checkpoint_steps=10") for seed in (1, 2)]
    whole = api.train_pack(cfgs, [tmp_path / "w1", tmp_path / "w2"])
    original, saved = run.save_checkpoint, []

    def stop_after_both(path, **state):
        original(path, **state)
        if (len(state["history"]), state["step"]) == (1, 20):
            saved.append(path)
            if len(saved) == 2:
                raise KeyboardInterrupt

    resumed = _cut_and_resume(monkeypatch, cfgs, tmp_path, stop_after_both)
    for a, b in zip(whole, resumed, strict=True):
        assert _figures(a.history) == _figures(b.history)


def test_a_pack_killed_between_its_members_checkpoints_still_finishes(tmp_path, monkeypatch):
    """One member saved step 20, the other still stands at step 10: they resume as two packs
    (here of one run each) and both finish their schedule."""
    from asymco.engine import run

    cfgs = [_quick(seed, "train.checkpoint_steps=10") for seed in (1, 2)]
    original = run.save_checkpoint

    def die_between(path, **state):
        if (len(state["history"]), state["step"]) == (1, 20) and path.parent.name == "c2":
            raise KeyboardInterrupt
        original(path, **state)

    resumed = _cut_and_resume(monkeypatch, cfgs, tmp_path, die_between)
    assert [len(r.history) for r in resumed] == [3, 3]
    assert all((tmp_path / c / "summary.json").is_file() for c in ("c1", "c2"))


def test_runs_that_cannot_share_a_pack_are_refused(tmp_path):
    with pytest.raises(UserError, match="only the seed and the noise may differ"):
        api.train_pack([_quick(1), _quick(2, "optim.lr=0.01")], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(UserError, match="cannot be packed"):
        api.train_pack([_quick(1, method="dividemix"), _quick(2, method="dividemix")],
                       [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(UserError, match=r"train\.budget chooses each run's epochs"):
        api.train_pack([_quick(1, "train.budget=1m"), _quick(2, "train.budget=1m")],
                       [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a").exists()  # refused before anything was written
    assert pack_key(_quick(1)) == pack_key(_quick(2, "noise.rate=0.2"))


@pytest.mark.slow
@pytest.mark.real_data
def test_the_gpu_check_runs_end_to_end_in_dry_mode(shared_data, tmp_path):
    """benchmarks/gpu_check.py --dry: every phase on the CPU at tiny sizes (checks, timing,
    the Table-1 sweep in packs, the report), so the first GPU window is not spent on a typo.
    Run twice: the second run continues (reads the finished phases)."""
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    cmd = [sys.executable, str(script), "--data-dir", str(shared_data), "--out", str(tmp_path),
           "--dry", "--table1", "--seeds", "1"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads(first.stdout.strip().splitlines()[-1])
    assert results["failed"] == []
    assert results["checks"]["packed step"] == "passed"
    assert results["checks"]["fp16+scaler"] == "skipped: needs CUDA"
    assert results["timing"]["table1_projected_seconds"] > 0
    assert "projected" in first.stderr
    summaries = sorted(tmp_path.glob("table1/*/act/seed1/summary.json"))
    assert len(summaries) == 2  # two cells in dry mode, trained as one pack
    assert {json.loads(p.read_text())["execution"]["pack"] for p in summaries} == {2}
    assert (tmp_path / "table1" / "report" / "report.md").is_file()
    # Run again (without the sweep, which tests/test_sweep.py checks for continuing): the
    # finished phases are read back, not redone.
    again = subprocess.run(cmd[:-3], capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["timing"] == results["timing"]


def test_a_member_whose_loss_breaks_is_named(tmp_path, monkeypatch):
    """One member's non-finite loss stops the pack with a sentence that names that run; every
    member keeps its last good checkpoint."""
    from asymco.engine import pack

    original, calls = pack.PackedModel.step, {"n": 0}

    def breaks_second(self, batches, exe):
        out = original(self, batches, exe)
        calls["n"] += 1
        if calls["n"] == 30:  # in the second epoch
            out["loss"] = out["loss"].detach().clone()
            out["loss"][1] = float("nan")
        return out

    monkeypatch.setattr(pack.PackedModel, "step", breaks_second)
    outs = [tmp_path / "first", tmp_path / "second"]
    with pytest.raises(UserError, match=r"second: the training loss became non-finite"):
        api.train_pack([_quick(1), _quick(2)], outs)
    assert all((o / "checkpoint.pt").is_file() for o in outs)  # epoch 1's, kept


def test_two_members_cannot_share_a_run_directory(tmp_path):
    with pytest.raises(UserError, match="its own run directory"):
        api.train_pack([_quick(1), _quick(2)], [tmp_path / "a", tmp_path / "b" / ".." / "a"])


def test_sigterm_stops_a_pack_at_a_step_with_every_members_checkpoint(tmp_path, monkeypatch):
    import os
    import signal

    from asymco.engine import pack
    from asymco.engine.checkpoint import load_checkpoint
    from asymco.errors import PreemptedError

    original, calls = pack.PackedModel.step, {"n": 0}

    def terminated(self, batches, exe):
        calls["n"] += 1
        if calls["n"] == 30:  # the scheduler's SIGTERM arrives in the second epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batches, exe)

    monkeypatch.setattr(pack.PackedModel, "step", terminated)
    outs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(PreemptedError):
        api.train_pack([_quick(1), _quick(2)], outs)
    positions = set()
    for out in outs:
        config = to_dict(api.load_run_config(out))
        state = load_checkpoint(out / "checkpoint.pt", num_samples=1437, config=config)
        positions.add((len(state["history"]), state["step"]))
    assert positions == {(1, 30 - 23)}  # both members, right after the step that saw SIGTERM
    monkeypatch.setattr(pack.PackedModel, "step", original)
    resumed = api.train_pack([api.load_run_config(o) for o in outs], outs, resume=True)
    assert [len(r.history) for r in resumed] == [3, 3]
