"""What every registered method owes the harness, checked on each one the same way: a run
stopped right after a mid-epoch checkpoint (in a robust epoch) and resumed ends exactly where an
uninterrupted run ends, metrics and label_issues.csv alike; every metrics row has the contract
columns; label_issues.csv ranks every training sample once.

The runs are tiny (300 digits, three epochs, one of them warmup) so the whole method list fits
in about a minute. Under torchrun (two gloo processes) each method must finish with one
per-sample state on both processes.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from asymco import api
from asymco.methods import list_methods
from asymco.methods.reporting import ROW_COLUMNS

SETTINGS = [
    "train.epochs=3",
    "train.warmup_epochs=1",
    "optim.lr_decay=cosine:1,1e-3,3",
    "train.progress=false",
    "train.checkpoint_steps=2",
    "data.subset=300",
]
TIMING_KEYS = {"epoch_seconds", "images_per_second", "eval_seconds"}


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


@pytest.mark.parametrize("name", list_methods())
def test_mid_epoch_resume_is_exact(tmp_path: Path, cut_and_resume, name: str):
    cfg = api.resolve_config("quickstart", [f"method.name={name}", *SETTINGS])
    api.train(cfg, out_dir=tmp_path / "full")
    cut_and_resume(cfg, tmp_path / "cut", epochs_done=2, step=2)  # inside the last epoch

    full = _rows(tmp_path / "full")
    assert _rows(tmp_path / "cut") == full
    for name_ in ("label_issues.csv", "noisy_labels.npy"):
        assert (tmp_path / "cut" / name_).read_bytes() == (tmp_path / "full" / name_).read_bytes()
    assert [row["phase"] for row in full] == ["warmup", "robust", "robust"]
    for row in full:
        assert set(ROW_COLUMNS) <= set(row)
        assert 0.0 <= row["test_acc"] <= 100.0
    with open(tmp_path / "full" / "label_issues.csv", newline="") as f:
        issues = list(csv.DictReader(f))
    assert len({r["index"] for r in issues}) == len(issues) == 300  # each sample once
    scores = [float(r["label_score"]) for r in issues]
    assert scores == sorted(scores)  # most suspect first
    assert all(0.0 <= s <= 1.0 for s in scores)


def _train_every_method(rank: int, world: int, folder: str) -> None:
    """One of two gloo processes: joins the group once and trains every method in turn, as
    torchrun would start each run (the engine reuses a group it finds)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank,
                             world_size=world)
    for name in list_methods():
        cfg = api.resolve_config("quickstart", [f"method.name={name}", *SETTINGS[:4],
                                                "data.subset=200"])
        api.train(cfg, out_dir=Path(folder) / name)
    tdist.destroy_process_group()


@pytest.mark.slow
def test_every_method_trains_on_two_processes_with_one_state(tmp_path: Path):
    """Two real processes (gloo) train each method; both end with the same per-sample state
    (each trained its share of the rows, then merged)."""
    context = mp.start_processes(_train_every_method, args=(2, str(tmp_path)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 600
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process runs did not finish in 10 minutes")
    for name in list_methods():
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        digests = summary["distributed"]["per_sample_state_sha256"]
        assert summary["distributed"]["world_size"] == 2, name
        assert digests[0] == digests[1], name
