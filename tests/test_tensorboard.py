"""log.tensorboard=true writes the metrics.jsonl figures as TensorBoard scalars."""

from __future__ import annotations

import json

import pytest

from asymco import api


def test_tensorboard_scalars_match_metrics(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = api.resolve_config("quickstart", ["train.epochs=2", "train.warmup_epochs=1",
                                            "train.progress=false", "log.tensorboard=true"])
    api.train(cfg, out_dir=tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for key in ("test_acc", "test_acc_ntm", "train_loss", "lr", "sel_precision"):
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [0, 1]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in rows], rel=1e-6)
