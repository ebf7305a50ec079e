"""End to end on scikit-learn's digits: the quickstart run, its run directory, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from asymco import api
from asymco.cli import main
from asymco.data.sources import load_digits
from asymco.engine.rundir import RunDir
from asymco.label_issues import read_label_issues

METRIC_KEYS = {"epoch", "phase", "lr", "train_loss", "test_acc", "test_acc_ntm", "sel_precision",
               "sel_recall", "sel_f1", "sel_fraction", "mining_fraction", "epoch_seconds",
               "images_per_second"}
SUMMARY_KEYS = {"preset", "method", "epochs", "test_acc_last10_mean", "test_acc_last10_std",
                "test_acc_best", "best_epoch", "test_acc_final", "paper_test_acc",
                "noise_rate_actual", "wall_seconds", "device", "versions"}
TIMING_KEYS = {"epoch_seconds", "images_per_second", "eval_seconds"}


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_complete_run_dir(run: Path, epochs: int) -> tuple[list[dict], dict]:
    for name in ("config.yaml", "noisy_labels.npy", "metrics.jsonl", "summary.json",
                 "checkpoint.pt", "label_issues.csv"):
        assert (run / name).is_file(), name
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == list(range(epochs))
    for row in rows:
        assert row.keys() >= METRIC_KEYS
    summary = json.loads((run / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["epochs"] == epochs
    accs = [r["test_acc"] for r in rows]
    assert summary["test_acc_last10_mean"] == pytest.approx(np.mean(accs[-10:]), abs=1e-3)
    assert summary["test_acc_last10_std"] == pytest.approx(np.std(accs[-10:]), abs=1e-3)
    assert summary["test_acc_best"] == max(accs)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["train"]["epochs"] == epochs
    labels = np.load(run / "noisy_labels.npy")
    assert labels.dtype == np.int64
    return rows, summary


@pytest.mark.slow
def test_quickstart_act_beats_standard(tmp_path, capsys):
    """The README's main command end to end, and the comparison the quickstart exists for."""
    assert main(["train", "--preset", "quickstart", "--out", str(tmp_path / "act")]) == 0
    rows, act = assert_complete_run_dir(tmp_path / "act", 60)
    assert main(["train", "--preset", "quickstart", "--set", "method.name=standard",
                 "--out", str(tmp_path / "std")]) == 0
    std_rows, std = assert_complete_run_dir(tmp_path / "std", 60)
    assert "last-10 test accuracy" in capsys.readouterr().out
    # ACT: warmup then robust phases, selection scored against the clean mask, mining logged.
    assert [r["phase"] for r in rows[:11]] == ["warmup"] * 10 + ["robust"]
    assert all(r["mining_fraction"] is None for r in rows[:10])
    assert all(0 <= r["mining_fraction"] <= 1 for r in rows[10:])
    assert rows[-1]["sel_precision"] > 0.9  # 40% noise: a random subset would be ~0.6
    assert std_rows[-1]["sel_precision"] is None and std_rows[-1]["test_acc_ntm"] is None
    assert act["noise_rate_actual"] == std["noise_rate_actual"] == pytest.approx(0.4, abs=0.03)
    assert act["test_acc_last10_mean"] > std["test_acc_last10_mean"] + 5
    # label_issues.csv, read as a user would, separates the wrong labels from the right ones.
    source = load_digits(seed=0, test_fraction=0.2)
    rows = read_label_issues(tmp_path / "act" / "label_issues.csv")
    index = np.array([int(r["index"]) for r in rows])
    wrong = np.array([int(r["given_label"]) for r in rows]) != source.y_train[index]
    flagged = np.array([r["is_label_issue"] == "True" for r in rows])
    scores = np.array([float(r["label_score"]) for r in rows])
    assert sorted(index.tolist()) == list(range(1437)) and (np.diff(scores) >= 0).all()
    assert (flagged & wrong).sum() / flagged.sum() > 0.85  # precision
    assert (flagged & wrong).sum() / wrong.sum() > 0.85  # recall
    assert roc_auc_score(~wrong, scores) > 0.95


def _short_config() -> api.RunConfig:
    return api.resolve_config("quickstart", ["train.epochs=6", "train.warmup_epochs=2",
                                             "optim.lr_decay=cosine:2,1e-3,6",
                                             "train.progress=false"])


class _CrashError(Exception):
    pass


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """A run stopped after epoch 3 and resumed equals an uninterrupted run (timings aside)."""
    cfg = _short_config()
    full = api.train(cfg, out_dir=tmp_path / "full")
    original = RunDir.write_metrics

    def crash_after_three(self, history):
        original(self, history)
        if len(history) == 3:
            raise _CrashError

    monkeypatch.setattr(RunDir, "write_metrics", crash_after_three)
    with pytest.raises(_CrashError):
        api.train(cfg, out_dir=tmp_path / "cut")
    monkeypatch.setattr(RunDir, "write_metrics", original)
    assert len(read_metrics(tmp_path / "cut")) == 3 and not (tmp_path / "cut/summary.json").exists()
    resumed = api.train(api.load_run_config(tmp_path / "cut"), out_dir=tmp_path / "cut",
                        resume=True)

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]

    assert strip(read_metrics(tmp_path / "cut")) == strip(full.history)
    assert strip(resumed.history) == strip(full.history)
    for key in ("test_acc_last10_mean", "test_acc_best", "test_acc_final"):
        assert resumed.summary[key] == full.summary[key]
    a = torch.load(tmp_path / "full/checkpoint.pt", weights_only=True)["method"]
    b = torch.load(tmp_path / "cut/checkpoint.pt", weights_only=True)["method"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_config(tmp_path):
    cfg = _short_config()
    api.train(api.resolve_config("quickstart", ["train.epochs=1", "train.progress=false"]),
              out_dir=tmp_path)
    (tmp_path / "summary.json").unlink()  # as if killed at its very end: a run to continue
    with pytest.raises(api.UserError, match="this command differs from the run saved in"):
        api.train(cfg, out_dir=tmp_path, resume=True)


def test_truncated_checkpoint_is_refused(tmp_path):
    cfg = api.resolve_config("quickstart", ["train.epochs=1", "train.progress=false"])
    api.train(cfg, out_dir=tmp_path)
    (tmp_path / "summary.json").unlink()  # as if killed at its very end: a run to continue
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(api.UserError, match="corrupt or truncated"):
        api.train(cfg, out_dir=tmp_path, resume=True)


def test_a_mean_of_nets_evaluated_beside_them_reuses_their_logits():
    """Evaluation runs each net once per batch: a mean of nets that are evaluated too (ACT's
    held warmup, DivideMix) is combined from their logits, with the figures of running it on
    its own; every module keeps its train/eval mode."""
    from asymco.engine.evaluate import accuracies, forward_passes
    from asymco.methods.base import MeanPrediction

    torch.manual_seed(0)
    calls = []

    class Counted(torch.nn.Linear):
        def forward(self, x):
            calls.append(self)
            return super().forward(x)

    a, b = Counted(5, 3), Counted(5, 3)
    b.eval()  # a mode of its own, to be kept
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))

    def batches():
        return iter([(x[:25], y[:25]), (x[25:], y[25:])])

    nets = {"mean": MeanPrediction([a, b]), "a": a, "b": b}
    accs = accuracies(nets, batches)
    assert len(calls) == 4 and forward_passes(nets) == 2  # 2 nets x 2 batches, not 8
    alone = {name: accuracies({name: net}, batches)[name] for name, net in nets.items()}
    assert accs == alone
    assert (a.training, b.training) == (True, False)
    assert forward_passes({"mean": nets["mean"]}) == 2  # alone, the mean runs its members
