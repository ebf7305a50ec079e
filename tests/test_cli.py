"""Command-line behaviour: bad input gets one sentence, exit status 2 and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asymco.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asymco", *args], capture_output=True,
                          text=True, timeout=120)


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_presets_lists_every_paper_cell_and_quickstart(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in out]
    assert names == sorted([
        "cifar100n-sym20", "cifar100n-sym80", "cifar100n-asym40", "cifar80n-sym20",
        "cifar80n-sym80", "cifar80n-asym40", "quickstart", "web-aircraft", "web-bird", "web-car",
        "food101n", "cifar100n-human", "cifar10n-aggre", "cifar10n-random1", "cifar10n-worst",
        "custom",
    ])
    assert any("65.51" in line for line in out if line.startswith("cifar100n-sym20"))


@pytest.mark.parametrize(("args", "fragments"), [
    (["train", "--preset", "nope"], ["unknown preset 'nope'", "quickstart"]),
    (["train", "--preset", "quickstart", "--set", "train.epoch=3"], ["train.epoch"]),
    (["train", "--preset", "quickstart", "--set", "nosection=3"], ["nosection"]),
    (["train", "--preset", "quickstart", "--set", "train.epochs=three"], ["train.epochs"]),
    (["train", "--preset", "quickstart", "--set", "train.epochs"], ["section.key=value"]),
    (["train", "--preset", "quickstart", "--set", "noise.rate=1.5"], ["noise.rate"]),
    (["train", "--preset", "quickstart", "--set", "method.name=unicon"], ["method"]),
    (["train", "--preset", "quickstart", "--set", "method.mining_gate=sometimes"],
     ["method.mining_gate", "per_batch"]),
    (["train", "--preset", "quickstart", "--set", "optim.lr_decay=cosine:1,2"], ["lr_decay"]),
    (["train", "--preset", "quickstart", "--set", "train.device=cuda:7"], ["device"]),
    (["train"], ["--preset", "--data"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_bad_input_is_one_sentence_and_status_2(args, fragments, tmp_path):
    assert_clean_error(run_cli(*args, "--out", str(tmp_path / "run")) if args[0] == "train"
                       else run_cli(*args), *fragments)


def test_missing_data_with_downloads_off(tmp_path):
    proc = run_cli("train", "--preset", "cifar100n-sym20", "--data-dir", str(tmp_path),
                   "--set", "data.download=false", "--out", str(tmp_path / "run"))
    assert_clean_error(proc, "not found", "download")


def test_corrupt_npz_is_refused(tmp_path):
    (tmp_path / "cifar100.npz").write_bytes(b"this is not a zip archive")
    proc = run_cli("train", "--preset", "cifar100n-sym20", "--data-dir", str(tmp_path),
                   "--out", str(tmp_path / "run"))
    assert_clean_error(proc, "cifar100.npz")


def test_resume_needs_a_checkpoint(tmp_path):
    assert_clean_error(run_cli("train", "--resume", "--out", str(tmp_path)),
                       "holds no run to continue")


def test_existing_run_is_never_overwritten(tmp_path):
    (tmp_path / "summary.json").write_text('{"kept": true}')
    proc = run_cli("train", "--preset", "quickstart", "--out", str(tmp_path))
    assert_clean_error(proc, "already holds a run")
    assert (tmp_path / "summary.json").read_text() == '{"kept": true}'


def test_unwritable_out_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_clean_error(run_cli("train", "--preset", "quickstart", "--out", str(blocker)),
                       "not a directory")
    proc = run_cli("train", "--preset", "quickstart", "--out", str(Path(blocker) / "sub"))
    assert_clean_error(proc, "cannot write")
