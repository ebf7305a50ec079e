"""Never stuck, never silently wrong: settings refused where they are declared, untrusted text
(class names, paths) neutralised where it leaves asymco, and precise words for the weaker cases.

The command-line refusals of single settings live in test_hostile.py (`test_bad_setting`);
this file holds the units and the round trips.
"""

from __future__ import annotations

import csv
import logging
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import asymco
from asymco.api import describe_run
from asymco.cli import main
from asymco.config import DataConfig, NoiseConfig, TrainConfig
from asymco.data.datasets import check_holdout
from asymco.data.folders import verify_images
from asymco.data.sources import load_source
from asymco.engine.device import resolve_device
from asymco.errors import PreemptedError, UserError
from asymco.label_issues import read_label_issues
from asymco.lr_plan import parse_decay
from asymco.report.gallery import gallery_html
from asymco.suggest import read_suspects
from asymco.text import csv_cell, csv_value, printable

# Names a hostile (or unlucky) data set may carry: a spreadsheet formula with a link, another
# formula, a terminal colour escape, and markup.
HOSTILE = ['=HYPERLINK("http://x")', "@SUM(1)", "\x1b[31mred", "<script>alert(1)</script>"]


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda v: DataConfig(subset_seed=v), "data.subset_seed"),
        (lambda v: NoiseConfig(seed=v), "noise.seed"),
        (lambda v: TrainConfig(seed=v), "train.seed"),
    ],
)
def test_seeds_are_integers_below_2_to_the_32(make, key):
    for bad in (-1, 2**32, 2**40):
        with pytest.raises(UserError, match=rf"^{key} must be a whole number from 0 to 4294967295"):
            make(bad)
    for good in (0, 2**32 - 1):  # numpy takes both ends
        make(good)
        np.random.RandomState(good)


@pytest.mark.parametrize(
    "decay",
    ["step:1e400", "step:inf", "cosine:0,inf,10", "cosine:nan,0,10", "cosine:0,0,1e400",
     "cosine:-1,0,10", "cosine:0,-0.1,10", "cosine:0.5,0,10", "cosine:0,0,100001",
     "step:100001", "step:5,1e300"],
)
def test_lr_plans_take_finite_bounded_numbers_only(decay):
    with pytest.raises(UserError, match=r"optim\.lr_decay"):
        parse_decay(decay)


def test_lr_plans_at_the_bounds_still_parse():
    assert parse_decay("cosine:0,0,100000") == ("cosine", (0.0, 0.0, 100000.0))
    assert parse_decay("step:0,100000,0.5")[1] == (0.0, 100000.0, 0.5)


@pytest.mark.parametrize("name", ["meta", "xpu", "hpu", "lazy", "cuda:x", "cuda:-1", "cpu:1"])
def test_devices_asymco_cannot_train_on(name):
    with pytest.raises(UserError, match=r"^train\.device"):
        resolve_device(name)


def test_cuda_and_mps_say_when_they_are_not_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU is available"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="MPS is not available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"has 2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda:1")  # only named, not touched
    assert resolve_device("cpu") == torch.device("cpu")


def test_holdout_needs_every_class_on_both_sides():
    labels = np.repeat(np.arange(3), 2)  # 6 images, 3 classes: 20% is 2 test images
    with pytest.raises(UserError, match=r"keeps 4 for training and 2 for testing.*3 images"):
        check_holdout(labels, 0.2)
    check_holdout(labels, 0.5)  # 3 and 3: one of each class on each side
    with pytest.raises(UserError, match="one on each side"):
        check_holdout(np.array([0, 1, 2]), 0.9)  # classes of 1 image: a plain split, 0 left
    check_holdout(np.repeat(np.arange(3), 10), 0.2)


# ---------------------------------------------------------------------------- printable text


def test_printable_escapes_every_control_and_keeps_letters():
    assert printable("plain/path_01.png") == "plain/path_01.png"
    assert printable("Ünïcödé 名前 café") == "Ünïcödé 名前 café"
    hostile = "\x1b]8;;http://x\x1b\\a\x1b]8;;\x1b\\ \x1b[2J\x07\x00\x7f\x9b\u202e\u2028x\ny\rz\t"
    shown = printable(hostile)
    assert shown.isprintable()
    assert "\\x1b]8;;http://x" in shown and "\\x1b[2J" in shown and "\\x07" in shown
    assert "\\x9b" in shown and "\\u202e" in shown and "\\n" in shown and "\\r" in shown
    assert printable(Path("a\nb")) == "a\\nb"


def test_user_errors_are_one_printable_line():
    err = UserError("cannot read class \x1b[2J\nforged line")
    assert str(err) == "cannot read class \\x1b[2J\\nforged line" and isinstance(err, ValueError)


def test_csv_cells_are_inert_and_read_back():
    for name in [*HOSTILE, "-x", "+1", "\tTab", "\rCR", "'quoted", "''", "plain", "", "a=b"]:
        cell = csv_cell(name)
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
        assert csv_value(cell) == name


# ---------------------------------------------------------------------------- a hostile run


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> tuple[Path, asymco.FitResult, str]:
    """A tiny run on arrays whose class names are `HOSTILE`, in a directory whose name holds a
    screen-clearing escape; returns its directory, the result and the log it wrote."""
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 12)
    x = rng.integers(0, 60, (len(y), 16, 16, 3), dtype=np.uint8)
    x[np.arange(len(y)), :, :, y % 3] += 150
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    logging.getLogger("asymco").addHandler(handler)
    old = logging.getLogger("asymco").level
    logging.getLogger("asymco").setLevel(logging.INFO)
    try:
        result = asymco.fit(
            images=x, labels=y, class_names=HOSTILE, out_dir=root / "run\x1b[2J",
            settings={"train.epochs": 2, "train.warmup_epochs": 1, "train.progress": False,
                      "data.batch_size": 16},
        )
    finally:
        logging.getLogger("asymco").removeHandler(handler)
        logging.getLogger("asymco").setLevel(old)
    return result.run_dir, result, "\n".join(records)


def test_hostile_names_round_trip_through_every_reader(hostile_run):
    run_dir, result, _ = hostile_run
    assert set(result.label_issues["given_class"]) <= set(HOSTILE)  # practitioner's reader
    assert set(result.label_issues["predicted_class"]) <= set(HOSTILE)
    rows = read_label_issues(run_dir / "label_issues.csv")
    assert {r["given_class"] for r in rows} == set(HOSTILE)  # all four classes were trained on
    assert {s.given_class for s in read_suspects(run_dir / "label_issues.csv")} == set(HOSTILE)
    with (run_dir / "label_issues.csv").open(newline="") as f:
        raw = list(csv.DictReader(f))
    cells = {r["given_class"] for r in raw}
    assert "'=HYPERLINK(\"http://x\")" in cells and "'@SUM(1)" in cells  # inert on disk
    assert not any(c.startswith(("=", "@", "+", "-")) for r in raw for c in r.values())
    assert all(0 <= float(r["label_score"]) <= 1 for r in raw)  # numbers stay numbers


def test_hostile_names_and_paths_are_escaped_on_the_terminal(hostile_run, capsys):
    run_dir, result, log = hostile_run
    assert "\x1b" not in log and "run\\x1b[2J" in log  # the data line names the saved arrays' path
    assert "\x1b" not in describe_run(result.summary, run_dir)
    capsys.readouterr()
    assert main(["issues", str(run_dir), "--top", "48"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31mred" in out
    assert len(out.splitlines()) == 2 + len(read_suspects(run_dir / "label_issues.csv")[:48])


def test_hostile_names_in_the_export_are_inert_and_numbers_stay(hostile_run, tmp_path, capsys):
    run_dir, _, _ = hostile_run
    export = tmp_path / "fixes.csv"
    assert main(["issues", str(run_dir), "--export", str(export)]) == 0
    with export.open(newline="") as f:
        rows = list(csv.DictReader(f))
    text_columns = ("path", "given_class", "suggested_class", "predicted_class")
    for row in rows:
        for column, cell in row.items():
            if column in text_columns:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
            else:
                assert cell == "" or cell in ("keep", "relabel", "review") or float(cell) >= 0
    assert {csv_value(r["given_class"]) for r in rows} == set(HOSTILE)
    assert "'=HYPERLINK(\"http://x\")" in {r["given_class"] for r in rows}


def test_negative_numbers_in_number_columns_stay_numbers(tmp_path):
    from asymco.suggest import Suspect, export_rows

    suspect = Suspect(0, 3, "-a.png", 0, "-neg", 1, "+pos", -0.5, True, 0.0, 0.0, 0.9)
    cells = export_rows([suspect])[0]
    assert cells[-1] == "-0.500000"  # label_score: a number, no apostrophe
    assert (cells[1], cells[3], cells[7]) == ("'-a.png", "'-neg", "'+pos")


def test_html_escapes_a_script_class_name():
    from asymco.suggest import Suspect

    s = Suspect(0, 1, "<img src=x onerror=alert(1)>.png", 0, HOSTILE[3], 1, "<b>", 0.1, True,
                0.0, 0.1, 0.9)
    page = gallery_html("<script>run</script>", [s], [(b"\x89PNG", "image/png")])
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>run" not in page and "<img src=x" not in page
    assert page.count("<script>") == 1  # the page's own filter script only


# ---------------------------------------------------------------------------- precise words


def test_every_image_unreadable_is_said_so(tmp_path):
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(b"junk")
    with pytest.raises(UserError, match=r"none of the 5 images can be read \(e\.g\. .*0\.png"):
        verify_images(paths)
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(paths[2])
    assert verify_images(paths).tolist() == [True, True, False, True, True]  # skipped, no error


def test_offline_cifar_download_says_how_to_point_at_a_copy(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    def offline(self):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(UserError) as err:
        load_source("cifar10", root=str(tmp_path), download=True)
    message = str(err.value)
    assert "could not download cifar10" in message and "no network?" in message
    assert "--data-dir" in message and "cifar10.npz" in message and "\n" not in message


def test_a_mistyped_data_dir_grows_no_folders(tmp_path):
    typo = tmp_path / "dtaa" / "cifar"
    with pytest.raises(UserError, match=r"dtaa/cifar \(--data-dir, data\.root\) does not exist"):
        load_source("cifar10", root=str(typo), download=True)
    assert not (tmp_path / "dtaa").exists()
    status = main(["train", "--preset", "cifar10n-aggre", "--data-dir", str(typo),
                   "--out", str(tmp_path / "run")])
    assert status == 2 and not (tmp_path / "dtaa").exists()


def test_epochs_read_by_people_count_from_1():
    summary = {"preset": "p", "method": "act", "test_acc_last10_mean": 50.0,
               "test_acc_last10_std": 1.0, "paper_test_acc": None, "test_acc_best": 60.0,
               "best_epoch": 0, "wall_seconds": 3.0}
    assert "best 60.00 at epoch 1," in describe_run(summary, Path("r"))
    assert str(PreemptedError(2, 7)) == "stopped by SIGTERM in epoch 3 after step 7; " \
        "checkpoint saved"
    assert "at the end of epoch 2;" in str(PreemptedError(2, 0))
    assert (PreemptedError(2, 7).epoch, PreemptedError(2, 7).step) == (2, 7)  # positions: 0-based
