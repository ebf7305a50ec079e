"""One command that starts or resumes a run, and one writer per run directory.

`asymco train ... --out DIR --resume` starts a run in an empty DIR, starts again a run that died
before its first checkpoint, continues an interrupted run, leaves a finished one alone, and
names the first setting in which the command and the saved run differ. An OS lock keeps a
second writer out and never outlives its process. (Killed processes and torchrun: the slow
tests in test_resume.py.)
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from asymco import api
from asymco.cli import main
from asymco.engine.claim import first_difference, run_state
from asymco.engine.lock import LOCK_NAME, RunLock
from asymco.errors import UserError

SETTINGS = ["train.epochs=2", "train.warmup_epochs=1", "train.progress=false",
            "train.checkpoint_steps=5"]
COMMAND = ["train", "--preset", "quickstart", *[x for s in SETTINGS for x in ("--set", s)]]
SRC = Path(__file__).resolve().parents[1] / "src"
FIGURES = ("test_acc_final", "test_acc_best", "test_acc_last10_mean", "sel_precision_final")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-epoch quickstart run, trained by the command the tests repeat."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*COMMAND, "--out", str(out)]) == 0
    return out


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below `folder`: its bytes and modification time."""
    return {str(f.relative_to(folder)): (f.read_bytes(), f.stat().st_mtime_ns)
            for f in sorted(folder.rglob("*")) if f.is_file()}


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("asymco: error: "), err
    return err


def copy_files(src: Path, dst: Path, names: tuple[str, ...]) -> Path:
    dst.mkdir(parents=True)
    for name in names:
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_run_state_reads_the_files(tmp_path):
    assert run_state(tmp_path / "missing") == "empty"
    assert run_state(tmp_path) == "empty"
    (tmp_path / LOCK_NAME).write_text("host 1\n")  # a killed run's lock file is no run
    assert run_state(tmp_path) == "empty"
    (tmp_path / "noisy_labels.npy").write_bytes(b"")
    assert run_state(tmp_path) == "unstarted"
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert run_state(tmp_path) == "interrupted"
    (tmp_path / "summary.json").write_text("{}")
    assert run_state(tmp_path) == "finished"


def test_first_difference_names_the_setting_and_forgives_what_a_budget_chose():
    saved = {"train": {"epochs": 7, "warmup_epochs": 2, "budget": "2m", "seed": 1},
             "optim": {"lr_decay": "cosine:2,1e-3,7"}}
    given = {"train": {"epochs": 100, "warmup_epochs": 30, "budget": "2m", "seed": 1},
             "optim": {"lr_decay": "cosine:30,1e-3,100"}}
    assert first_difference(saved, given, budget="2m") is None
    given["train"]["seed"] = 2
    assert first_difference(saved, given, budget="2m") == "train.seed is 2 here but 1 in the run"
    given["train"].update(seed=1, budget="5m")
    assert first_difference(saved, given, budget="2m").startswith("optim.lr_decay is")
    assert first_difference(saved, saved, budget=None) is None


def test_finished_run_is_left_alone(finished, capsys):
    before = snapshot(finished)
    assert main([*COMMAND, "--out", str(finished), "--resume"]) == 0
    assert main(["train", "--resume", "--out", str(finished)]) == 0
    out = capsys.readouterr().out
    assert out.count("already finished, nothing rewritten") == 2 and str(finished) in out
    assert snapshot(finished) == before


def test_resume_continues_an_interrupted_run_with_the_same_command(finished, tmp_path):
    run = copy_files(finished, tmp_path / "run", ("config.yaml", "noisy_labels.npy",
                                                   "checkpoint.pt", "metrics.jsonl"))
    assert main([*COMMAND, "--out", str(run), "--resume"]) == 0  # finishes the last step
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (run, finished))
    assert all(ours[k] == theirs[k] for k in FIGURES)


def test_a_command_that_differs_is_named_and_changes_nothing(finished, tmp_path, capsys):
    run = copy_files(finished, tmp_path / "run", ("config.yaml", "noisy_labels.npy",
                                                   "checkpoint.pt", "metrics.jsonl"))
    before = snapshot(run)
    assert main([*COMMAND, "--set", "optim.lr=0.5", "--out", str(run), "--resume"]) == 2
    err = one_error(capsys)
    assert "differs from the run saved in" in err, err
    assert "optim.lr is 0.5 here but 0.05 in the run" in err, err
    assert main([*COMMAND, "--device", "meta", "--out", str(run), "--resume"]) == 2
    capsys.readouterr()
    assert snapshot(run) == before


def test_a_run_that_died_before_its_first_checkpoint_starts_again(finished, tmp_path, capsys):
    """What a run killed in its first epoch leaves (config, noisy labels, TensorBoard files, a
    stray transition matrix): the same command with --resume trains it from the start."""
    run = copy_files(finished, tmp_path / "run", ("config.yaml", "noisy_labels.npy"))
    (run / "noise_transition.npy").write_bytes(b"stale")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out").write_bytes(b"stale")
    assert main([*COMMAND, "--out", str(run)]) == 2  # without --resume: refused, with the hint
    assert "pass --resume (with the same command) to start it again" in one_error(capsys)
    assert main(["train", "--resume", "--out", str(run)]) == 2  # no command to start it with
    assert "holds no run to continue" in one_error(capsys)
    assert main([*COMMAND, "--out", str(run), "--resume"]) == 0
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (run, finished))
    assert all(ours[k] == theirs[k] for k in FIGURES)
    transition = (run / "noise_transition.npy").read_bytes()
    assert transition == (finished / "noise_transition.npy").read_bytes()  # written anew
    assert not (run / "tensorboard").exists()  # this command logs no TensorBoard scalars
    assert not (run / LOCK_NAME).exists()  # released and removed at the end


def test_resume_starts_a_run_in_an_empty_directory(finished, tmp_path):
    run = tmp_path / "new"
    assert main([*COMMAND, "--out", str(run), "--resume"]) == 0
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (run, finished))
    assert all(ours[k] == theirs[k] for k in FIGURES)


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lock = RunLock.acquire(run)
    try:
        for extra in ([], ["--resume"]):
            assert main([*COMMAND, "--out", str(run), *extra]) == 2
            err = one_error(capsys)
            assert f"another asymco process (pid {os.getpid()} on {socket.gethostname()}) is " \
                   f"writing to {run}" in err, err
        with pytest.raises(UserError, match="another asymco process"):
            api.train_pack([api.resolve_config("quickstart", SETTINGS)], [run])
        assert {p.name for p in run.iterdir()} == {LOCK_NAME}  # nothing written beside it
    finally:
        lock.release()
    assert not (run / LOCK_NAME).exists()


HOLD_AND_DIE = textwrap.dedent("""
    import os, subprocess, sys, time
    from pathlib import Path
    from asymco.engine.lock import RunLock
    lock = RunLock.acquire(Path(sys.argv[1]))
    child, seconds = sys.argv[2], sys.argv[3]
    if child == "exec":  # a program given the lock's descriptor: it shares the lock
        subprocess.Popen(["sleep", seconds], pass_fds=[lock._fd])
    elif child == "fork" and os.fork() == 0:  # a DataLoader worker: it must not keep the lock
        time.sleep(float(seconds))
        os._exit(0)
    print("held", flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize(("child", "seconds", "most"), [("none", 0, 5), ("exec", 2, 7),
                                                        ("fork", 60, 5)])
def test_a_killed_holder_never_blocks_the_next_run(tmp_path, child, seconds, most):
    """SIGKILL the holder: its lock is free at once, or as soon as a program it handed the lock
    to exits; a process it forked never keeps it (it sleeps 60 s, the next run does not wait)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_DIE, str(tmp_path), child,
                               str(seconds)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(SRC)})
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(UserError, match=f"pid {holder.pid} "):  # alive: refused at once
        RunLock.acquire(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    began = time.monotonic()
    lock = RunLock.acquire(tmp_path)  # the file still names the dead pid: no matter
    waited = time.monotonic() - began
    lock.release()
    assert waited < most, waited
    if child == "exec":
        assert waited > 0.5, waited  # it did wait for the program holding the lock


def test_disk_full_mid_run_is_one_sentence_and_resume_finishes(finished, tmp_path, monkeypatch,
                                                               capsys):
    """The second checkpoint write meets a full disk: one sentence naming the file, the first
    checkpoint intact, and the same command with --resume ends where an intact run ends."""
    real_replace, calls = os.replace, {"n": 0}

    def full_disk(src, dst):
        if str(dst).endswith("checkpoint.pt"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    run = tmp_path / "run"
    monkeypatch.setattr(os, "replace", full_disk)
    assert main([*COMMAND, "--out", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"asymco: error: No space left on device ({run / 'checkpoint.pt'}); free "
                       "some space and run the same command with --resume to continue from "
                       "the last checkpoint"), err
    assert not list(run.glob(".*.tmp")) and not (run / LOCK_NAME).exists()
    monkeypatch.setattr(os, "replace", real_replace)
    assert main([*COMMAND, "--out", str(run), "--resume"]) == 0
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (run, finished))
    assert all(ours[k] == theirs[k] for k in FIGURES)


def test_interrupt_hint_names_the_run_directory(tmp_path, monkeypatch, capsys):
    from asymco.engine import run as engine_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_run, "train_epochs", interrupted)
    run = tmp_path / "my run"
    assert main([*COMMAND, "--out", str(run)]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"asymco: interrupted; run the same command with --resume --out '{run}' " \
                  "to continue", err


def test_disk_full_while_writing_a_report_is_one_sentence(finished, tmp_path, monkeypatch,
                                                          capsys):
    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    out = tmp_path / "report"
    assert main(["report", str(finished), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("asymco: error: No space left on device ("), err
    assert str(out) in err[0], err
    assert not [p for p in out.rglob("*") if p.is_file()]  # no temporary file left behind


@pytest.mark.parametrize("damage", [b'{"x": 1}', b"\xff\xfe", b"[1, 2]", b""])
def test_a_damaged_summary_of_a_finished_run_is_one_sentence(finished, tmp_path, capsys, damage):
    run = copy_files(finished, tmp_path / "run", ("config.yaml", "checkpoint.pt"))
    (run / "summary.json").write_bytes(damage)
    before = snapshot(run)
    assert main([*COMMAND, "--out", str(run), "--resume"]) == 2
    assert "cannot read the run's summary" in one_error(capsys)
    assert snapshot(run) == before
