"""Shared fixtures: where the real data lives, whether missing data may skip, and a run cut
right after a mid-epoch checkpoint then resumed."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from hypothesis import settings

# CI draws the same property-test examples on every run, so a red build can be reproduced;
# locally hypothesis explores new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SHARED_DATA = Path(os.environ.get("ASYMCO_SHARED_DATA", REPO.parent / "shared" / "data"))


def _must_have_real_data() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true") or bool(
        os.environ.get("ASYMCO_REQUIRE_REAL_DATA"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data with cifar100.npz; skips without it locally, fails under CI."""
    if not (SHARED_DATA / "cifar100.npz").is_file():
        message = f"real data not found: {SHARED_DATA / 'cifar100.npz'}"
        if _must_have_real_data():
            pytest.fail(message + " (CI must run the real-data tests)")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture
def chromium(tmp_path: Path):
    """`chromium(*args)` runs headless Chromium with a fresh profile and returns the finished
    process (`--dump-dom` prints to its stdout); skips without Chromium locally, fails under CI."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found (apt-get install chromium) for the headless-browser test"
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(reason + "; CI must run it")
        pytest.skip(reason)

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", "--no-first-run",
                   f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    return run


@pytest.fixture(scope="session")
def cifar100_labels(shared_data: Path):
    import numpy as np

    with np.load(shared_data / "cifar100.npz") as archive:
        return archive["y_train"]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch):
    """Fail any test that tries to open an internet connection (nothing may download here).

    Yields the list of attempts; a test that expects one clears it after checking it.
    """
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access is disabled in the test suite")

    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    if attempts:
        pytest.fail(f"the test tried to reach the network: {attempts}")


class _CutError(Exception):
    pass


@pytest.fixture
def cut_and_resume(monkeypatch: pytest.MonkeyPatch):
    """`cut_and_resume(cfg, out, epochs_done=E, step=S)` trains `cfg` into `out`, stops it right
    after the checkpoint at step S of the epoch after E finished ones (as a crash there would),
    then resumes it from that checkpoint to the end."""
    from asymco import api
    from asymco.engine import run

    def train(cfg, out: Path, *, epochs_done: int, step: int) -> None:
        original = run.save_checkpoint

        def stop_there(path, **state):
            original(path, **state)
            if len(state["history"]) == epochs_done and state["step"] == step:
                raise _CutError

        monkeypatch.setattr(run, "save_checkpoint", stop_there)
        with pytest.raises(_CutError):
            api.train(cfg, out_dir=out)
        monkeypatch.setattr(run, "save_checkpoint", original)
        api.train(api.load_run_config(out), out_dir=out, resume=True)

    return train
