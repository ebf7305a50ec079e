"""The fast paths (issue: speed) on CPU: batched crop/flip against torchvision, both loaders'
epoch contract, precision/compile settings, device-side failure detection, no host syncs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from asymco import api
from asymco.augment import random_crop, random_flip
from asymco.config import TrainConfig
from asymco.config_io import to_dict
from asymco.data.loader import ArrayLoader, normalizer_for
from asymco.data.pil_loader import PilLoader
from asymco.data.sharding import BatchPlan
from asymco.engine import loop, precision
from asymco.engine.checkpoint import load_checkpoint
from asymco.engine.precision import cpu_has_native_bf16, resolve_execution
from asymco.errors import UserError
from asymco.methods.act import ACT


def test_random_crop_equals_torchvision_pad_then_crop():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = random_crop(x, 4, torch.Generator().manual_seed(7))
    draws = torch.Generator().manual_seed(7)  # the same draws, in the same order
    top = torch.randint(0, 9, (16,), generator=draws)
    left = torch.randint(0, 9, (16,), generator=draws)
    for i in range(16):
        expected = TF.crop(TF.pad(x[i], [4]), int(top[i]), int(left[i]), 32, 32)
        assert torch.equal(out[i], expected)


def test_random_flip_equals_torchvision_hflip_per_sample():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_flip(x, torch.Generator().manual_seed(3))
    flipped = torch.rand(64, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 10 < flipped.sum() < 54
    for i in range(64):
        assert torch.equal(out[i], TF.hflip(x[i]) if flipped[i] else x[i])


def _images(n=70, size=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.mark.parametrize("kind", ["device", "pil"])
def test_every_sample_once_per_epoch_with_both_views(kind):
    images, labels = _images()
    cpu = torch.device("cpu")
    normalize = normalizer_for(images, "imagenet", cpu, torch.channels_last)
    common = dict(plan=BatchPlan(70, 32, seed=0), views="cifar", normalize=normalize, device=cpu)
    loader = (PilLoader(images, labels, workers=0, **common) if kind == "pil"
              else ArrayLoader(images, labels, **common))
    assert len(loader) == 3
    for epoch, strong in enumerate((True, False)):
        seen = []
        views = ("weak", "strong") if strong else ("weak",)
        for batch in loader.epoch(epoch, views=views):
            assert batch.weak.shape == (len(batch.index), 3, 32, 32)
            assert batch.weak.dtype == torch.float32
            assert batch.weak.is_contiguous(memory_format=torch.channels_last)
            assert len(batch.views) == len(views)
            assert torch.equal(batch.label, torch.as_tensor(labels)[batch.index])
            seen.append(batch.index)
        assert sorted(torch.cat(seen).tolist()) == list(range(70))  # once each, none dropped


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_execution(TrainConfig(precision="fp32"), cpu).precision == "fp32"
    assert resolve_execution(TrainConfig(precision="bf16"), cpu).precision == "bf16"
    with pytest.raises(UserError, match="fp16"):
        resolve_execution(TrainConfig(precision="fp16"), cpu)
    assert not resolve_execution(TrainConfig(precision="bf16"), cpu).make_scaler().is_enabled()


def test_auto_precision_is_bf16_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    exe = resolve_execution(TrainConfig(), torch.device("cuda"))
    assert exe.precision == "bf16" and exe.channels_last


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n", True),  # AMD Zen 4
        ("flags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n", True),  # Intel Sapphire Rapids
        ("Features\t: fp asimd bf16 i8mm\n", True),  # Arm Neoverse V1
        ("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n", False),  # AVX-512 without BF16
        ("model name\t: bf16 in a name is not a flag\nflags\t\t: fpu sse2\n", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, cpuinfo, native):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_has_native_bf16.__wrapped__(path) is native


def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, tmp_path):
    """auto = bf16 on a CPU with native bf16, fp32 on one without (or where it cannot tell)."""
    cpu = torch.device("cpu")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert resolve_execution(TrainConfig(), cpu).precision == expected
    assert not cpu_has_native_bf16.__wrapped__(tmp_path / "missing")  # not Linux: fp32


def _quick(tmp_path, *extra):
    cfg = api.resolve_config("quickstart", ["train.epochs=2", "train.warmup_epochs=1",
                                            "train.progress=false", *extra])
    return api.train(cfg, out_dir=tmp_path)


def test_bf16_autocast_run_completes(tmp_path):
    result = _quick(tmp_path, "train.precision=bf16")
    assert result.summary["execution"]["precision"] == "bf16"
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
    assert result.history[-1]["test_acc"] > 20  # it learned something in 2 epochs


@pytest.mark.parametrize(("setting", "under_autocast"), [("fp32", False), ("train", True)])
def test_evaluation_runs_in_fp32_unless_asked(tmp_path, monkeypatch, setting, under_autocast):
    """Training in bf16, test accuracy and label_issues.csv's probabilities are computed in
    fp32 (train.eval_precision=fp32, the default), or under the training autocast (`train`)."""
    from asymco.engine import loop, results

    seen = []

    def recording(real):
        def wrapper(net, batches, *args):
            seen.append(torch.is_autocast_enabled("cpu"))
            return real(net, batches, *args)

        return wrapper

    monkeypatch.setattr(loop, "accuracies", recording(loop.accuracies))
    monkeypatch.setattr(results, "predict_probs", recording(results.predict_probs))
    _quick(tmp_path, "train.precision=bf16", f"train.eval_precision={setting}")
    assert len(seen) == 2 + 1  # the nets tested together each epoch, then label scores once
    assert set(seen) == {under_autocast}


def test_compiled_run_keeps_plain_checkpoint_keys(tmp_path):
    result = _quick(tmp_path, "train.compile=true")
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["method"]
    assert not any("_orig_mod" in key or "module." in key for key in state)
    assert result.summary["execution"]["compile"] is True


def test_pil_loader_run_completes(tmp_path):
    result = _quick(tmp_path, "data.loader=pil", "data.workers=2")
    assert result.summary["execution"]["loader"] == "pil"
    assert [r["phase"] for r in result.history] == ["warmup", "robust"]


def test_non_finite_loss_stops_with_epoch_and_batch_and_keeps_checkpoint(tmp_path, monkeypatch):
    original = ACT.training_step

    def poisoned(self, batch):
        out = original(self, batch)
        if self.epoch == 1:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(ACT, "training_step", poisoned)
    with pytest.raises(UserError, match=r"non-finite at epoch 2, batch 1"):
        _quick(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # epoch 0 kept, the poisoned epoch never written
    config = to_dict(api.load_run_config(tmp_path))
    state = load_checkpoint(tmp_path / "checkpoint.pt", num_samples=1437, config=config)
    assert len(state["history"]) == 1


def test_an_epoch_reads_the_device_once(tmp_path, monkeypatch):
    """Without a progress bar, figures are read from the device once per epoch, not per step."""
    calls = {"reads": 0, "in_epoch": False}
    original_run = loop.EpochRun.run

    def counting(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args):
            calls["reads"] += calls["in_epoch"]
            return original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, read)

    def tracked_run(*args, **kwargs):
        calls["in_epoch"] = True
        try:
            return original_run(*args, **kwargs)
        finally:
            calls["in_epoch"] = False

    for name in ("item", "tolist", "__int__", "__float__", "__bool__"):
        counting(name)
    monkeypatch.setattr(loop.EpochRun, "run", tracked_run)
    _quick(tmp_path)
    assert calls["reads"] == 2  # one read per epoch (non-finite and visit checks), 23 batches each
