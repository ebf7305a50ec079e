"""`asymco sweep`: the grid, skipping finished runs, resuming an interrupted one, going on past a
failed one, and stopping on Ctrl-C or SIGTERM."""

from __future__ import annotations

import ast
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import asymco.sweep
from asymco import api
from asymco.cli import main
from asymco.engine.rundir import RunDir
from asymco.errors import PreemptedError

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


def test_packed_sweep(tmp_path, capsys, monkeypatch):
    """`--pack 2`: ACT's two seeds train as one pack, standard's two as another, DivideMix
    (not packable) alone; killed in the middle, the same command finishes every run."""
    def packed(*extra):
        return main(["sweep", "--presets", "quickstart", "--methods", "act", "standard",
                     "dividemix", "--seeds", "1", "2", "--out", str(tmp_path), *TINY,
                     "--set", "train.epochs=2", "--pack", "2", *extra])

    original = RunDir.write_metrics
    calls = {"n": 0}

    def interrupt(self, history):
        original(self, history)
        calls["n"] += 1
        if calls["n"] == 2:  # the ACT pack wrote its first epoch for both members
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "write_metrics", interrupt)
    assert packed() == 130
    monkeypatch.setattr(RunDir, "write_metrics", original)
    assert packed() == 0
    assert "6 of 6 runs complete" in capsys.readouterr().out
    for method, size in (("act", 2), ("standard", 2), ("dividemix", 1)):
        for seed in (1, 2):
            summary = json.loads((tmp_path / f"quickstart/{method}/seed{seed}/summary.json")
                                 .read_text())
            assert summary["execution"]["pack"] == size and summary["epochs"] == 2


def test_a_failed_pack_trains_its_runs_one_at_a_time(tmp_path, capsys, monkeypatch):
    """A damaged checkpoint in one member must not cost the other: the pack fails, then each run
    continues alone; the damaged one fails with its own sentence."""
    def packed():
        return main(["sweep", "--presets", "quickstart", "--methods", "act", "--seeds", "1", "2",
                     "--out", str(tmp_path), *TINY, "--set", "train.epochs=2", "--pack", "2"])

    original = RunDir.write_metrics
    calls = {"n": 0}

    def interrupt(self, history):
        original(self, history)
        calls["n"] += 1
        if calls["n"] == 2:  # both members wrote their first epoch
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "write_metrics", interrupt)
    assert packed() == 130
    monkeypatch.setattr(RunDir, "write_metrics", original)
    damaged = tmp_path / "quickstart/act/seed2/checkpoint.pt"
    damaged.write_bytes(b"not a checkpoint")
    assert packed() == 1
    err = capsys.readouterr().err
    assert "1 runs failed (quickstart/act/seed2)" in err
    healthy = json.loads((tmp_path / "quickstart/act/seed1/summary.json").read_text())
    assert healthy["epochs"] == 2 and healthy["execution"]["pack"] == 1  # finished alone
    assert not (tmp_path / "quickstart/act/seed2/summary.json").exists()


def test_parallel_processes(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert sweep(tmp_path, "--parallel", "2") == 0
    for method in ("standard", "act"):
        summary = json.loads((tmp_path / "quickstart" / method / "seed1" / "summary.json")
                             .read_text())
        assert summary["method"] == method and summary["epochs"] == 3
        log = (tmp_path / "quickstart" / method / "seed1.log").read_text()
        assert "epoch 3/3" in log  # the worker's own log lines landed in its file
        assert f"quickstart / {method}: last-10 test accuracy" in log
        assert f"quickstart / {method} / seed 1: done" in caplog.text  # and the parent says so
        assert f"quickstart / {method}: last-10 test accuracy" in caplog.text


def test_a_refused_run_is_logged_and_the_others_complete(tmp_path, caplog, capsys):
    # Co-teaching needs its forget rate for clean labels; api.train refuses it before any data.
    assert main(["sweep", "--presets", "quickstart", "--methods", "coteaching", "standard",
                 "--seeds", "1", "--out", str(tmp_path), *TINY, "--set", "noise.kind=none"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["quickstart / coteaching / seed 1: method.name=coteaching needs "
                      "method.forget_rate for none noise, whose rate is not known in advance"]
    assert (tmp_path / "quickstart/standard/seed1/summary.json").is_file()
    out, err = capsys.readouterr()
    assert "1 of 2 runs complete" in out and "1 runs failed (quickstart/coteaching/seed1)" in err


def test_a_crashed_run_does_not_stop_the_others(tmp_path, monkeypatch, caplog, capsys):
    original = api.train

    def crash_act(cfg, **kwargs):
        if cfg.method.name == "act":
            raise RuntimeError("out of luck")
        return original(cfg, **kwargs)

    monkeypatch.setattr(api, "train", crash_act)
    assert main(["sweep", "--presets", "quickstart", "--methods", "act", "standard",
                 "--seeds", "1", "--out", str(tmp_path), *TINY]) == 1
    assert "quickstart / act / seed 1: RuntimeError: out of luck" in caplog.text
    assert (tmp_path / "quickstart/standard/seed1/summary.json").is_file()
    assert "1 runs failed (quickstart/act/seed1)" in capsys.readouterr().err


def test_sigterm_stops_the_sweep(tmp_path, monkeypatch, capsys):
    def preempted(self, history):  # what the loop raises after SIGTERM, checkpoint saved
        raise PreemptedError(len(history), 0)

    monkeypatch.setattr(RunDir, "write_metrics", preempted)
    assert sweep(tmp_path) == 143
    run = tmp_path / "quickstart/standard/seed1"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"asymco: sweep stopped by SIGTERM at the end of epoch 1; checkpoint saved ({run}); "
        "run the same command to continue it"
    )
    assert not (tmp_path / "quickstart/act").exists()  # the next run never started


@pytest.mark.slow
def test_sigterm_stops_a_parallel_sweep_and_its_workers(tmp_path):
    command = [sys.executable, "-m", "asymco", "sweep", "--presets", "quickstart", "--methods",
               "standard", "act", "--seeds", "1", "--out", str(tmp_path),
               "--set", "train.epochs=200", "--set", "train.progress=false", "--parallel", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = [tmp_path / "quickstart" / m / "seed1" / "metrics.jsonl" for m in ("standard", "act")]
    deadline = time.monotonic() + 120
    while not all(m.is_file() for m in metrics) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the sweep process only: it stops its workers
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err.decode()[-2000:]
    assert err.decode().strip().splitlines()[-1] == (
        f"asymco: sweep stopped by SIGTERM; the runs in progress saved checkpoints ({tmp_path}); "
        "run the same command to continue it"
    )
    for m in metrics:
        assert (m.parent / "checkpoint.pt").is_file() and not (m.parent / "summary.json").exists()
        assert "stopped by SIGTERM" in (m.parent.parent / "seed1.log").read_text()


def test_the_sweep_does_not_import_the_command_line():
    tree = ast.parse(Path(asymco.sweep.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    assert "asymco" in imported or "asymco.api" in imported  # the walk found the imports
    assert not {name for name in imported if name == "asymco.cli" or name.startswith("asymco.cli.")}


@pytest.mark.parametrize(("args", "message"), [
    (["--presets", "nope"], "unknown preset"),
    (["--presets", "quickstart", "--methods", "nope"], "unknown method"),
    (["--presets", "quickstart", "--parallel", "0"], "--parallel"),
    (["--presets", "quickstart", "--pack", "0"], "--pack"),
    (["--presets", "quickstart", "--pack", "2", "--parallel", "2"], "not both"),
])
def test_bad_sweeps_are_refused(args, message, tmp_path, capsys):
    assert main(["sweep", *args, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
