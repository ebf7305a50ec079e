"""Checkpoints under attack: corrupt, truncated, foreign, malicious or half-written files are
refused with one sentence (and nothing already written changes); a crash while a checkpoint is
being written leaves the previous one loadable; a disk too small fails before training."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import weakref
import zipfile
from pathlib import Path

import pytest
import torch

from asymco import api
from asymco.cli import main
from asymco.engine import checkpoint
from asymco.methods.act import ACT

SETTINGS = ["train.epochs=2", "train.warmup_epochs=1", "train.progress=false",
            "train.checkpoint_steps=5"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-epoch quickstart run; tests copy it before touching it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    api.train(api.resolve_config("quickstart", SETTINGS), out_dir=out)
    return out


def copy_run(src: Path, dst: Path) -> Path:
    """The finished run as if killed at its very end: every file but summary.json (a finished
    run is left alone by --resume)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name != "summary.json":
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def rewrite_checkpoint(path: Path, state: dict) -> None:
    """Save `state` as asymco would, with a digest of its (changed) content: a checkpoint
    whose values are wrong in some way its digest cannot reveal (another version, a bug)."""
    checkpoint.save_checkpoint(
        path, **{k: v for k, v in state.items() if k not in ("format", "digest")}
    )


def resume_fails(run: Path, capsys, match: str) -> None:
    """`asymco train --resume` exits 2 with one sentence, and the run directory is unchanged."""
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    assert main(["train", "--resume", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()} == before


def test_truncated_checkpoint(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    resume_fails(run, capsys, "is corrupt or truncated")


def test_corrupted_checkpoint(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    data = bytearray((run / "checkpoint.pt").read_bytes())
    for i in range(0, len(data), 997):  # scribble over the whole file, zip records included
        data[i] ^= 0xFF
    (run / "checkpoint.pt").write_bytes(bytes(data))
    resume_fails(run, capsys, "is corrupt or truncated")


def test_empty_and_foreign_files(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    (run / "checkpoint.pt").write_bytes(b"")
    resume_fails(run, capsys, "is corrupt or truncated")
    torch.save({"state_dict": {}}, run / "checkpoint.pt")  # some other tool's checkpoint
    resume_fails(run, capsys, f"is not an asymco checkpoint of format {checkpoint.FORMAT}")
    torch.save([1, 2, 3], run / "checkpoint.pt")
    resume_fails(run, capsys, "is not an asymco checkpoint")


def test_incomplete_checkpoint(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["optimizer"], state["rng"]
    rewrite_checkpoint(run / "checkpoint.pt", state)
    resume_fails(run, capsys, "is incomplete (it lacks optimizer, rng)")


def test_checkpoint_of_another_dataset_size_or_config(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    rewrite_checkpoint(run / "checkpoint.pt", {**state, "num_samples": 50000})
    resume_fails(run, capsys, "was written for 50000 training samples, this run has 1437")
    state["config"]["optim"]["lr"] = 0.5
    rewrite_checkpoint(run / "checkpoint.pt", state)
    resume_fails(run, capsys, "was written with another configuration (optim.lr: 0.5 in the "
                              "checkpoint")


def test_flipped_bytes_inside_a_tensor_are_caught_by_the_digest(finished, tmp_path, capsys):
    """A flip in a tensor's stored bytes still loads (the zip records and pickle are intact);
    only the digest notices. Flipped in the first net's first weights and in SGD momentum."""
    run = copy_run(finished, tmp_path / "run")
    good = (run / "checkpoint.pt").read_bytes()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    momentum = next(iter(state["optimizer"]["state"].values()))["momentum_buffer"]
    for tensor in (next(iter(state["method"].values())), momentum):
        stored = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        at = good.find(stored[:64])
        assert at > 0 and good.count(stored[:64]) == 1  # the tensor's bytes, found once
        data = bytearray(good)
        data[at + 7] ^= 0x10
        (run / "checkpoint.pt").write_bytes(bytes(data))
        torch.load(run / "checkpoint.pt", weights_only=True)  # torch itself sees nothing
        resume_fails(run, capsys, "is damaged (its content does not match the digest")


def test_a_checkpoint_written_before_the_digest_still_resumes(finished, tmp_path):
    """Format 2 (no digest) loads, checked as before, and the run finishes."""
    run = copy_run(finished, tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["digest"]
    torch.save({**state, "format": 2}, run / "checkpoint.pt")
    assert main(["train", "--resume", "--out", str(run)]) == 0
    resumed, original = (json.loads((r / "summary.json").read_text()) for r in (run, finished))
    assert resumed["test_acc_last10_mean"] == original["test_acc_last10_mean"]


def test_the_digest_covers_values_dtypes_shapes_and_order():
    base = {"a": torch.arange(6, dtype=torch.float32), "b": [1, 0.5, "x", None]}
    digest = checkpoint.content_digest(base)
    assert digest == checkpoint.content_digest({k: v for k, v in base.items()})
    for other in (
        {**base, "a": torch.arange(6, dtype=torch.float64)},
        {**base, "a": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
        {**base, "a": torch.arange(6, dtype=torch.float32).flip(0)},
        {**base, "b": [1, 0.5, "y", None]},
        {**base, "b": [True, 0.5, "x", None]},
        {"b": base["b"], "a": base["a"]},
        {**base, "c": torch.zeros(0, dtype=torch.bfloat16)},
    ):
        assert checkpoint.content_digest(other) != digest


def test_malicious_pickle_is_refused_and_never_runs(finished, tmp_path, capsys):
    """A checkpoint is code when unpickled freely; weights_only loading refuses the payload."""
    run = copy_run(finished, tmp_path / "run")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # torch's zip layout, a hostile data.pkl
        payload = pickle.dumps({"format": 2, "x": Payload()}, protocol=2)
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    (run / "checkpoint.pt").write_bytes(buffer.getvalue())
    resume_fails(run, capsys, "refused because loading it could run code")
    assert not marker.exists()


CRASH_WHILE_SAVING = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    from asymco import files
    from asymco.engine.checkpoint import save_checkpoint

    path, where = Path(sys.argv[1]), sys.argv[2]
    real_fdopen = os.fdopen

    class Dying:
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return False
        def write(self, data):
            self.f.write(data[: len(data) // 2])  # half the new checkpoint reaches the disk
            self.f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    if where == "writing":
        files.os.fdopen = lambda fd, mode: Dying(real_fdopen(fd, mode))
    else:  # the data is complete and synced, the rename has not happened
        files.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
    save_checkpoint(path, method={"w": torch.zeros(100_000)}, history=["new"])
""")


@pytest.mark.parametrize("where", ["writing", "before-rename"])
def test_crash_during_checkpoint_write_keeps_the_previous_one(finished, tmp_path, where):
    run = copy_run(finished, tmp_path / "run")
    good = (run / "checkpoint.pt").read_bytes()
    crashed = subprocess.run([sys.executable, "-c", CRASH_WHILE_SAVING,
                              str(run / "checkpoint.pt"), where], capture_output=True)
    assert crashed.returncode == -9, crashed.stderr.decode()
    assert (run / "checkpoint.pt").read_bytes() == good  # untouched, still loadable
    assert list(run.glob(".checkpoint.pt.*.tmp"))  # the half-written temporary file
    # --resume sweeps the leftover away and finds the run complete: nothing more to train.
    cfg = api.load_run_config(run)
    result = api.train(cfg, out_dir=run, resume=True)
    assert len(result.history) == 2 and not list(run.glob(".checkpoint.pt.*.tmp"))


def test_disk_too_small_fails_before_training(tmp_path, monkeypatch, capsys):
    class Usage:
        total, used, free = 10 * 2**20, 9 * 2**20, 2**20

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: Usage)
    out = tmp_path / "run"
    assert main(["train", "--preset", "quickstart", "--set", "train.progress=false",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only 1 MB are free under" in err, err
    assert not out.exists()  # nothing written, no empty run directory left behind


def test_non_finite_loss_mid_epoch_keeps_the_last_good_step_checkpoint(tmp_path, monkeypatch,
                                                                      capsys):
    original, steps = ACT.training_step, weakref.WeakKeyDictionary()

    def poisoned(self, batch):
        out = original(self, batch)
        # Counted per net pair: the run's step-time probe trains a throwaway pair for 3 steps.
        steps[self] = steps.get(self, 0) + 1
        if self.epoch == 1 and steps[self] == 23 + 8:  # 0-based epoch 1 (23 steps each), batch 8
            out["loss"] = out["loss"] * float("inf")
        return out

    monkeypatch.setattr(ACT, "training_step", poisoned)
    out = tmp_path / "run"
    args = [x for s in SETTINGS for x in ("--set", s)]
    assert main(["train", "--preset", "quickstart", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "non-finite at epoch 2, batch 8" in err and len(err.splitlines()) == 1, err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (len(state["history"]), state["step"]) == (1, 5)  # the last step before the bad one
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0]
    assert torch.isfinite(torch.cat([v.flatten().float() for v in state["method"].values()])).all()
