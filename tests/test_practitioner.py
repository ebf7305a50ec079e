"""asymco.fit / asymco.find_label_issues: arrays in, a model and per-sample arrays out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import asymco
from asymco.engine.lock import LOCK_NAME, RunLock
from asymco.errors import UserError

FAST = {"train.epochs": 3, "train.warmup_epochs": 1, "train.progress": False,
        "data.batch_size": 16}


def coloured(n_per_class: int = 16, flip: int = 6):
    """Three colour classes of 32x32 images; `flip` labels of class 0 are set to class 1."""
    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(3), n_per_class)
    x = rng.integers(0, 60, (len(y_true), 32, 32, 3), dtype=np.uint8)
    x[np.arange(len(y_true)), :, :, y_true] += 180
    y = y_true.copy()
    y[:flip] = 1
    return x, y, y_true


def test_fit_on_arrays_returns_model_and_table_in_data_order(tmp_path):
    x, y, _ = coloured()
    result = asymco.fit(images=x, labels=y, class_names=["red", "green", "blue"],
                        settings=FAST, out_dir=tmp_path / "run")
    table = result.label_issues
    n_train = result.summary["num_train"]
    assert n_train == 38  # 48 images, 20% held out for testing
    assert (np.diff(table["index"]) > 0).all() and table["index"].max() < 48
    # `index` is the position in the arrays we passed: the given labels must match ours.
    np.testing.assert_array_equal(table["given_label"], y[table["index"]])
    assert set(table["given_class"]) <= {"red", "green", "blue"}
    assert table["is_label_issue"].dtype == bool and len(result.ranked()) == n_train
    logits = result.model(torch.zeros(2, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert logits.shape == (2, 3)
    assert len(list((tmp_path / "run").glob("inputs-*.npz"))) == 1


def test_a_second_fit_on_a_run_s_directory_never_replaces_its_arrays(tmp_path):
    """Two fits on one directory, the first still writing (its lock held) or finished: the
    second is refused, and the first run's arrays file and every other file stay as they were
    (the arrays were once saved as one fixed name, overwritten before the lock was taken)."""
    x, y, _ = coloured()
    run = tmp_path / "run"
    asymco.fit(images=x, labels=y, settings=FAST, out_dir=run)

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_NAME}

    before = files()
    other = x[::-1].copy()
    lock = RunLock.acquire(run)  # the first run, still writing
    try:
        with pytest.raises(UserError, match="another asymco process"):
            asymco.fit(images=other, labels=y, settings=FAST, out_dir=run)
    finally:
        lock.release()
    assert files() == before
    for images in (other, x):  # finished: refused with other arrays and with the same ones
        with pytest.raises(UserError, match="already holds a run"):
            asymco.fit(images=images, labels=y, settings=FAST, out_dir=run)
        assert files() == before


def test_a_refused_fit_leaves_no_arrays_and_no_directory_behind(tmp_path):
    x, y, _ = coloured()
    with pytest.raises(UserError, match=r"data\.batch_size"):
        asymco.fit(images=x, labels=y, settings={**FAST, "data.batch_size": 0},
                   out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_find_label_issues_mask_and_ranking(tmp_path):
    x, y, _ = coloured()
    mask = asymco.find_label_issues(x, y, settings=FAST, out_dir=tmp_path / "a")
    assert mask.dtype == bool and mask.shape == (38,)
    ranking = asymco.find_label_issues(x, y, settings=FAST, out_dir=tmp_path / "b",
                                       return_ranking=True)
    assert sorted(ranking.tolist()) == list(range(38))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "either images"),
    ({"images": np.zeros((4, 32, 32, 3), np.uint8)}, "labels="),
    ({"images": np.full((4, 8, 8), 3.0, np.float32), "labels": np.zeros(4, int)}, "in \\[0, 1\\]"),
    ({"images": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.zeros(3, int)}, "4 images"),
    ({"images": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.zeros(4)}, "integers"),
])
def test_bad_arrays_are_refused(kwargs, message, tmp_path):
    with pytest.raises(UserError, match=message):
        asymco.fit(out_dir=tmp_path / "run", **kwargs)
