"""The paper's protocol on the real CIFAR-100 (../shared/data): exact noisy labels for all six
Table 1 cells, and short runs through the CLI. Skips without the data locally; fails under CI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asymco import api
from asymco.cli import main
from asymco.data.prepare import apply_noise
from asymco.data.sources import load_source
from asymco.label_issues import read_label_issues

pytestmark = pytest.mark.real_data

CELLS = {  # preset: (pair flip?, closed-set rate, open-set ratio)
    "cifar100n-sym20": (False, 0.2, 0.0),
    "cifar100n-sym80": (False, 0.8, 0.0),
    "cifar100n-asym40": (True, 0.4, 0.0),
    "cifar80n-sym20": (False, 0.2, 0.2),
    "cifar80n-sym80": (False, 0.8, 0.2),
    "cifar80n-asym40": (True, 0.4, 0.2),
}


def official_draw(labels: np.ndarray, pairflip: bool, rate: float, openset: float) -> np.ndarray:
    """The Jo-SRC/ACT protocol written out independently: build the 100x100 matrix row by row,
    then one RandomState(0).multinomial draw per sample in file order."""
    n, k = 100, int(100 * (1 - openset))
    if pairflip:
        matrix = np.eye(n)
        for i in range(k):
            matrix[i, i] = 1.0 - rate
            matrix[i, (i + 1) if i < k - 1 else 0] = rate
    else:
        matrix = np.ones((n, n)) * (rate / (k - 1))
        for i in range(k):
            matrix[i, i] = 1.0 - rate
    for i in range(k, n):
        matrix[i, :] = 1.0 / k
    for j in range(k, n):
        matrix[:, j] = 0.0
    flipper = np.random.RandomState(0)
    return np.array([np.argmax(flipper.multinomial(1, matrix[y], 1)[0]) for y in labels])


@pytest.fixture(scope="module")
def cifar100(shared_data):
    return load_source("cifar100", root=str(shared_data), download=False)


@pytest.mark.parametrize("preset", sorted(CELLS))
def test_noisy_labels_match_the_official_draw(preset, cifar100):
    cfg = api.resolve_config(preset, ["data.subset=1000"])
    data = apply_noise(cifar100, cfg.data, cfg.noise)
    expected = official_draw(cifar100.y_train, *CELLS[preset])
    np.testing.assert_array_equal(data.noisy_labels_full, expected)
    assert data.noise_rate_actual == pytest.approx(np.mean(expected != cifar100.y_train))
    openset = CELLS[preset][2]
    assert data.num_classes == (80 if openset else 100)
    assert len(data.test_label) == (8000 if openset else 10000)
    assert data.noisy_labels_full.max() < data.num_classes


def test_realised_rate_of_sym20_is_the_papers(cifar100):
    cfg = api.resolve_config("cifar100n-sym20")
    data = apply_noise(cifar100, cfg.data, cfg.noise)
    assert round(data.noise_rate_actual, 5) == 0.20108


@pytest.mark.slow
def test_cifar100_smoke_run_through_the_cli(shared_data, tmp_path):
    """Warmup then a robust epoch (strong AutoAugment view, selection, mining) on real images."""
    out = tmp_path / "run"
    args = ["train", "--preset", "cifar100n-sym20", "--data-dir", str(shared_data),
            "--set", "train.epochs=2", "--set", "train.warmup_epochs=1",
            "--set", "data.subset=600", "--set", "data.test_subset=500",
            "--set", "train.progress=false", "--out", str(out)]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warmup", "robust"]
    assert 0 < rows[1]["sel_fraction"] <= 1 and rows[1]["mining_fraction"] is not None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["paper_test_acc"] == 65.51 and summary["num_train"] == 600
    assert summary["noise_rate_actual"] == pytest.approx(0.20108)
    labels = np.load(out / "noisy_labels.npy")
    assert labels.shape == (50000,) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, official_draw(
        np.load(shared_data / "cifar100.npz")["y_train"], *CELLS["cifar100n-sym20"]))


@pytest.mark.slow
def test_cifar80n_run_has_80_outputs_and_the_filtered_test_set(shared_data, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "cifar80n-asym40", "--data-dir", str(shared_data),
                 "--set", "train.epochs=1", "--set", "data.subset=256",
                 "--set", "train.progress=false", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_classes"] == 80 and summary["num_test"] == 8000
    assert summary["noise_rate_actual"] == pytest.approx(0.52, abs=0.01)  # 20k closed + 10k open


@pytest.mark.slow
def test_cifar100n_human_labels_run_and_label_issues(shared_data, tmp_path):
    """The real CIFAR-100N human labels on the real images; label_issues.csv indexes the full
    training set and carries exactly the human labels. (How well it separates wrong from right
    labels needs a longer run; the closing note of the issue reports one.)"""
    out = tmp_path / "run"
    assert main(["train", "--preset", "cifar100n-human", "--data-dir", str(shared_data),
                 "--set", "train.epochs=2", "--set", "train.warmup_epochs=1",
                 "--set", "data.subset=300", "--set", "data.test_subset=300",
                 "--set", "train.progress=false", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["noise_rate_actual"] == pytest.approx(0.4020, abs=5e-5)
    labels = np.load(shared_data / "cifarn_labels.npz")
    rows = read_label_issues(out / "label_issues.csv")
    index = np.array([int(r["index"]) for r in rows])
    assert len(rows) == 300 and len(set(index)) == 300 and index.max() < 50_000
    given = np.array([int(r["given_label"]) for r in rows])
    np.testing.assert_array_equal(given, labels["cifar100n_noisy_label"][index])
    np.testing.assert_array_equal(np.load(out / "noisy_labels.npy"),
                                  labels["cifar100n_noisy_label"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["sel_precision"] == pytest.approx(
        np.mean(given == labels["cifar100n_clean_label"][index]))  # warmup selects everyone
