"""`asymco sweep`: the grid, skipping finished runs, resuming an interrupted one."""

from __future__ import annotations

import json

import pytest

from asymco.cli import main
from asymco.engine.rundir import RunDir

TINY = ["--set", "train.epochs=3", "--set", "train.warmup_epochs=1",
        "--set", "optim.lr_decay=cosine:1,1e-3,3", "--set", "train.progress=false"]


def sweep(out, *extra):
    return main(["sweep", "--presets", "quickstart", "--methods", "standard", "act",
                 "--seeds", "1", "--out", str(out), *TINY, *extra])


def test_interrupted_sweep_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    original = RunDir.write_metrics
    calls = {"n": 0}

    def interrupt_second_run(self, history):
        original(self, history)
        calls["n"] += 1
        if calls["n"] == 5:  # run 1 wrote 3 epochs; stop run 2 after its 2nd epoch
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "write_metrics", interrupt_second_run)
    assert sweep(tmp_path) == 130
    assert "sweep interrupted" in capsys.readouterr().err
    first, second = tmp_path / "quickstart/standard/seed1", tmp_path / "quickstart/act/seed1"
    assert (first / "summary.json").is_file()
    assert (second / "checkpoint.pt").is_file() and not (second / "summary.json").exists()
    monkeypatch.setattr(RunDir, "write_metrics", original)
    stamp = (first / "summary.json").stat().st_mtime_ns
    assert sweep(tmp_path) == 0
    assert (first / "summary.json").stat().st_mtime_ns == stamp  # complete run not redone
    rows = [json.loads(x) for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # resumed, not restarted from scratch
    assert "2 of 2 runs complete" in capsys.readouterr().out


def test_parallel_processes(tmp_path):
    assert sweep(tmp_path, "--parallel", "2") == 0
    for method in ("standard", "act"):
        summary = json.loads((tmp_path / "quickstart" / method / "seed1" / "summary.json")
                             .read_text())
        assert summary["method"] == method and summary["epochs"] == 3


@pytest.mark.parametrize(("args", "message"), [
    (["--presets", "nope"], "unknown preset"),
    (["--presets", "quickstart", "--methods", "nope"], "unknown method"),
    (["--presets", "quickstart", "--parallel", "0"], "--parallel"),
])
def test_bad_sweeps_are_refused(args, message, tmp_path, capsys):
    assert main(["sweep", *args, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
