"""Hostile and broken input through the real CLI entry point: each gets exit status 2 and one
sentence on stderr, never a traceback, and nothing already on disk is lost.

`asymco.cli.main` runs in this process (a subprocess per case would import torch dozens of
times); the `cli` fixture sends log records and warnings to the captured stderr as the command line
does, so anything printed before an error counts against the one-line rule too. Every case fails
before training starts.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asymco.cli import main
from asymco.data.datasets import read_own_npz
from asymco.errors import UserError

QUICK = ["train", "--preset", "quickstart", "--set", "train.progress=false"]


@pytest.fixture
def cli(capsys):
    """Run `asymco ARGS...` in-process; return (exit status, non-empty stderr lines, with the
    Python warnings the command line would print)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # capsys's stream: logs count as stderr lines
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    def run(*args: str | Path) -> tuple[int, list[str]]:
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:
            # Python's default filters outside __main__: these warnings would reach stderr.
            warnings.simplefilter("default")
            for hidden in (
                DeprecationWarning,
                PendingDeprecationWarning,
                ImportWarning,
                ResourceWarning,
            ):
                warnings.simplefilter("ignore", hidden)
            status = main([str(a) for a in args])
        err = capsys.readouterr().err
        err += "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
        return status, [line for line in err.splitlines() if line.strip()]

    yield run
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
def refused(cli):
    """Assert the command exits with 2 and exactly one error sentence; return that sentence."""

    def check(*args: str | Path) -> str:
        status, lines = cli(*args)
        assert status == 2, lines
        assert len(lines) == 1, lines
        assert lines[0].startswith("asymco: error: "), lines
        assert "Traceback" not in lines[0]
        message = lines[0].removeprefix("asymco: error: ")
        assert message.strip()
        return message

    return check


# ---------------------------------------------------------------------------- tiny data


def images(n: int = 40, side: int = 32, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, side, side, channels), dtype=np.uint8)


LABELS = np.repeat(np.arange(4), 10)


def npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def write_png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(path)


# ---------------------------------------------------------------------------- npz datasets

NPZ_CASES = {
    "labels-float": (dict(y_train=LABELS.astype(np.float64)), ["y_train", "integer", "float64"]),
    "labels-string": (dict(y_train=LABELS.astype(str)), ["y_train", "integer", "<U"]),
    "labels-bool": (dict(y_train=LABELS > 1), ["y_train", "integer", "bool"]),
    "labels-2d": (dict(y_train=LABELS[:, None]), ["y_train", "(40,)", "(40, 1)"]),
    "labels-too-few": (dict(y_train=LABELS[:-3]), ["y_train", "(40,)", "(37,)"]),
    "labels-too-many": (dict(y_train=np.append(LABELS, 0)), ["y_train", "(41,)"]),
    "labels-negative": (dict(y_train=LABELS - 1), ["y_train", "negative", "-1"]),
    "labels-huge-id": (dict(y_train=np.append(LABELS[:-1], 2**40)), ["y_train", "class id"]),
    "labels-beyond-class-names": (
        dict(class_names=np.array(["a", "b", "c"])),
        ["labels up to 3", "only 3 names"],
    ),
    "class-names-2d": (dict(class_names=np.array([["a", "b"], ["c", "d"]])), ["class_names"]),
    "class-names-twice": (
        dict(class_names=np.array(["a", "b", "a", "c"])),
        ["unique", "'a' more than once"],
    ),
    "one-class": (dict(y_train=np.zeros(40, np.int64)), ["single class", "at least 2"]),
    "images-float-nan": (
        dict(x_train=np.full((40, 32, 32, 3), np.nan, np.float32)),
        ["x_train", "NaN or infinite"],
    ),
    "images-float-inf": (
        dict(x_train=np.full((40, 32, 32, 3), np.inf)),
        ["x_train", "NaN or infinite"],
    ),
    # Floats in [0, 1] and sides other than 32 are trainable now (test_arrays.py).
    "images-float-0-255": (dict(x_train=images().astype(np.float32)), ["must be in [0, 1]"]),
    "images-2-channels": (dict(x_train=images(channels=2)), ["x_train", "1, 3 or 4 channels"]),
    "images-int64": (dict(x_train=images().astype(np.int64)), ["x_train", "scale the pixels"]),
    "images-1d": (dict(x_train=LABELS.astype(np.uint8)), ["x_train", "(40,)"]),
    "images-5d": (dict(x_train=images()[..., None]), ["x_train", "(40, 32, 32, 3, 1)"]),
    "empty": (
        dict(x_train=np.zeros((0, 32, 32, 3), np.uint8), y_train=np.zeros(0, np.int64)),
        ["x_train holds no images"],
    ),
    "labels-object-array": (
        dict(y_train=np.array([None] * 40, dtype=object)),
        ["object arrays", "not loaded"],
    ),
    "test-labels-unknown-class": (
        dict(x_test=images(8), y_test=np.full(8, 7)),
        ["y_test has class 7", "only 4 classes"],
    ),
    "test-labels-float": (dict(x_test=images(8), y_test=np.full(8, 1.5)), ["y_test", "float64"]),
    "test-labels-2d": (dict(x_test=images(8), y_test=np.ones((8, 2), int)), ["y_test", "(8, 2)"]),
    "test-images-float": (
        dict(x_test=images(8).astype(float), y_test=np.ones(8, int)),
        ["x_test", "uint8"],
    ),
    "test-images-other-size": (
        dict(x_test=images(8, side=8), y_test=np.ones(8, int)),
        ["x_test", "same image shape"],
    ),
    "test-empty": (
        dict(x_test=images(0), y_test=np.ones(0, int)),
        ["x_test holds no images"],
    ),
    "test-images-without-labels": (dict(x_test=images(8)), ["x_test but no y_test"]),
    "test-labels-without-images": (dict(y_test=np.ones(8, int)), ["y_test but no x_test"]),
}


@pytest.mark.parametrize(("arrays", "fragments"), NPZ_CASES.values(), ids=NPZ_CASES.keys())
def test_bad_npz_dataset(refused, tmp_path, arrays, fragments):
    data = npz(tmp_path / "mine.npz", **{"x_train": images(), "y_train": LABELS, **arrays})
    out = tmp_path / "run"
    message = refused("train", "--data", data, "--out", out)
    for fragment in fragments:
        assert fragment in message
    assert not out.exists()  # refused before a run directory was made


def test_npz_that_is_not_an_npz(refused, tmp_path):
    (tmp_path / "text.npz").write_text("no zip archive here")
    assert "not an .npz archive" in refused("train", "--data", f"npz:{tmp_path / 'text.npz'}")
    np.save(tmp_path / "bare.npy", LABELS)  # one array, not an archive of named ones
    assert "not an .npz archive" in refused("train", "--data", f"npz:{tmp_path / 'bare.npy'}")
    assert "does not exist" in refused("train", "--data", f"npz:{tmp_path / 'missing.npz'}")
    assert "does not exist" in refused("train", "--data", f"npz:{tmp_path}")
    np.savez(tmp_path / "nolabels.npz", x_train=images())
    assert "lacks the array y_train" in refused(
        "train", "--data", f"npz:{tmp_path / 'nolabels.npz'}"
    )


def test_bad_npz_with_a_preset_leaves_no_run_directory(refused, tmp_path):
    """With --preset the data is read inside the run; a refusal still leaves nothing behind."""
    data = npz(tmp_path / "mine.npz", x_train=images(), y_train=LABELS.astype(float))
    out = tmp_path / "run"
    assert "integer" in refused("train", "--preset", "custom", "--data", data, "--out", out)
    assert not out.exists()


def test_bad_data_keeps_what_the_out_directory_held(refused, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    data = npz(tmp_path / "bad.npz", x_train=images(), y_train=LABELS - 1)
    refused("train", "--preset", "custom", "--data", data, "--out", out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_separate_npz_test_split(refused, tmp_path):
    """`--test npz:FILE` is read (not silently ignored) and checked like the training file."""
    train = tmp_path / "train.npz"
    np.savez(train, x_train=images(), y_train=LABELS)
    np.savez(tmp_path / "test.npz", x_test=images(8), y_test=np.arange(8) % 4)
    own = read_own_npz(train, tmp_path / "test.npz")
    assert own.x_test.shape == (8, 32, 32, 3) and list(own.y_test) == list(np.arange(8) % 4)
    np.savez(tmp_path / "as-train.npz", x_train=images(6), y_train=np.arange(6) % 4)
    assert len(read_own_npz(train, tmp_path / "as-train.npz").y_test) == 6
    np.savez(tmp_path / "unknown.npz", x_test=images(8), y_test=np.full(8, 9))
    message = refused(
        "train", "--data", f"npz:{train}", "--test", f"npz:{tmp_path / 'unknown.npz'}"
    )
    assert "y_test has class 9" in message
    both = npz(
        tmp_path / "both.npz",
        x_train=images(),
        y_train=LABELS,
        x_test=images(8),
        y_test=np.ones(8, int),
    )
    message = refused("train", "--data", both, "--test", f"npz:{tmp_path / 'test.npz'}")
    assert "drop one" in message
    np.savez(tmp_path / "nothing.npz", other=LABELS)
    message = refused(
        "train", "--data", f"npz:{train}", "--test", f"npz:{tmp_path / 'nothing.npz'}"
    )
    assert "lacks x_test and y_test" in message
    assert "same kind" in refused("train", "--data", f"npz:{train}", "--test", f"csv:{train}")


# ---------------------------------------------------------------------------- folders and CSV


def test_empty_image_folders(refused, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no class sub-folders" in refused("train", "--data", f"folder:{tmp_path / 'empty'}")
    for name in ("cat", "dog"):
        (tmp_path / "hollow" / name).mkdir(parents=True)
    (tmp_path / "hollow" / "dog" / "notes.txt").write_text("not an image")
    # One sentence, not first a warning for each empty class folder.
    assert "holds no images" in refused("train", "--data", f"folder:{tmp_path / 'hollow'}")
    write_png(tmp_path / "single" / "cat" / "a.png")
    assert "at least 2 classes" in refused("train", "--data", f"folder:{tmp_path / 'single'}")
    assert "does not exist" in refused("train", "--data", f"folder:{tmp_path / 'missing'}")


def test_test_folder_with_classes_the_training_set_lacks(refused, tmp_path):
    for name in ("cat", "dog"):
        for i in range(2):
            write_png(tmp_path / "train" / name / f"{i}.png", 50 * i)
    for name in ("cat", "dog", "eel"):
        write_png(tmp_path / "test" / name / "0.png")
    message = refused(
        "train", "--data", f"folder:{tmp_path / 'train'}", "--test", f"folder:{tmp_path / 'test'}"
    )
    assert "test classes" in message and "eel" in message


def test_holdout_smaller_than_the_classes(refused, tmp_path):
    """6 images in 3 classes: a 20% hold-out is 2 images, too few for a stratified split;
    scikit-learn's ValueError becomes one sentence with the ways out."""
    for name in ("cat", "dog", "eel"):
        for i in range(2):
            write_png(tmp_path / "few" / name / f"{i}.png", 60 * i)
    message = refused("train", "--data", f"folder:{tmp_path / 'few'}", "--out", tmp_path / "run")
    for fragment in ("data.holdout_fraction=0.2 of 6 images", "2 for testing", "3 images on "
                     "each side", "--test"):
        assert fragment in message
    assert not (tmp_path / "run").exists()


def test_every_image_unreadable(refused, tmp_path):
    """Not one image opens: the sentence says so (a count, one path), not blame data.subset."""
    for name in ("cat", "dog", "eel"):
        for i in range(10):
            path = tmp_path / "junk" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not a png at all")
    message = refused("train", "--data", f"folder:{tmp_path / 'junk'}", "--out", tmp_path / "run")
    assert "none of the 30 images can be read" in message
    assert ".png" in message and str(tmp_path / "junk") in message
    assert "data.subset" not in message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "is empty"),
        (b"path,label\n", "header but no rows"),
        (b"path,label\n\n  \n", "header but no rows"),
        (b"path\nimgs/a.png\n", "columns path and label"),
        (b"path,label\nimgs/a.png,cat\nimgs/b.png,cat\n", "at least 2 classes"),
        (b"path,label\nimgs/a.png,-1\nimgs/b.png,0\n", "negative labels"),
        (b"path,label\nimgs/a.png,0\nimgs/b.png,1" + b"0" * 5000 + b"\n", "class id"),
        (b"path,label\nimgs/a.png,0\nimgs/b.png,5000000\n", "class id 5000000"),
        (b"path,label\nimgs/a.png,\nimgs/b.png,1\n", "row 2"),
        (b"path,label\nimgs/a.png,0\nimgs/missing.png,1\n", "missing.png"),
        (b"\xff\xfe\x00\x01 not text", "not UTF-8"),
        (b"path,label\nimgs/a.png,caf\xe9\n", "not UTF-8"),
    ],
)
def test_bad_csv(refused, tmp_path, content, fragment):
    write_png(tmp_path / "imgs" / "a.png")
    write_png(tmp_path / "imgs" / "b.png", 200)
    (tmp_path / "labels.csv").write_bytes(content)
    assert fragment in refused("train", "--data", f"csv:{tmp_path / 'labels.csv'}")


# ---------------------------------------------------------------------------- human-noise labels


@pytest.fixture
def tiny_cifar10(tmp_path) -> Path:
    """A 50-image stand-in for CIFAR-10 in a data directory (the CIFAR-N label files must be
    aligned with it: 50 labels each)."""
    y = np.arange(50) % 10
    np.savez(
        tmp_path / "cifar10.npz", x_train=images(50), y_train=y, x_test=images(10), y_test=y[:10]
    )
    return tmp_path


CLEAN = np.arange(50) % 10
HUMAN_CASES = {
    "float": (dict(aggre_label=CLEAN.astype(np.float64)), ["aggre_label", "dtype float64"]),
    "string": (dict(aggre_label=CLEAN.astype(str)), ["aggre_label", "integers"]),
    "2d": (dict(aggre_label=CLEAN[:, None]), ["aggre_label", "(50, 1)"]),
    "short": (dict(aggre_label=CLEAN[:-1]), ["aggre_label", "(49,)", "50 images"]),
    "clean-short": (dict(clean_label=CLEAN[:-1]), ["clean_label", "(49,)"]),
    "negative": (dict(aggre_label=CLEAN - 1), ["aggre_label", "-1", "outside [0, 10)"]),
    "too-high": (dict(aggre_label=CLEAN + 1), ["aggre_label", "10", "outside [0, 10)"]),
    "other-order": (dict(clean_label=np.roll(CLEAN, 1)), ["do not match", "official order"]),
    "no-clean-labels": (dict(clean_label=None), ["has no clean_label"]),
    "cifar100-file": (
        dict(aggre_label=None, noisy_label=CLEAN),
        ["no aggre_label", "cifar100"],
    ),
}


@pytest.mark.parametrize(("arrays", "fragments"), HUMAN_CASES.values(), ids=HUMAN_CASES.keys())
def test_bad_human_noise_labels_file(refused, tiny_cifar10, arrays, fragments):
    stored = {"clean_label": CLEAN, "aggre_label": CLEAN, **arrays}
    np.savez(tiny_cifar10 / "human.npz", **{k: v for k, v in stored.items() if v is not None})
    message = refused(
        "train",
        "--preset",
        "cifar10n-aggre",
        "--data-dir",
        tiny_cifar10,
        "--set",
        f"noise.labels_file={tiny_cifar10 / 'human.npz'}",
        "--out",
        tiny_cifar10 / "run",
    )
    for fragment in fragments:
        assert fragment in message
    assert not (tiny_cifar10 / "run").exists()


def test_human_noise_labels_file_missing_or_corrupt(refused, tiny_cifar10):
    base = ["train", "--preset", "cifar10n-aggre", "--data-dir", tiny_cifar10]
    assert "does not exist" in refused(*base, "--set", "noise.labels_file=/no/such/file.pt")
    (tiny_cifar10 / "junk.pt").write_bytes(b"\x80\x04 not a pickle at all")
    assert "cannot read CIFAR-N label file" in refused(
        *base, "--set", f"noise.labels_file={tiny_cifar10 / 'junk.pt'}"
    )
    assert "label set" in refused(*base, "--set", "noise.label_set=nonsense")
    assert "cifar10 or cifar100" in refused(*QUICK, "--set", "noise.kind=human")


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--set", "train.epochs=abc"], ["train.epochs", "whole number", "'abc'"]),
        (["--set", "train.epochs=2.5"], ["train.epochs", "whole number"]),
        (["--set", "train.epochs=" + "9" * 5000], ["train.epochs", "whole number", "..."]),
        (["--set", "nosuch.key=1"], ["unknown setting 'nosuch.key'", "section one of"]),
        (["--set", "train.nosuch=1"], ["unknown setting 'train.nosuch'", "epochs"]),
        (["--set", "a.b.c=1"], ["unknown setting 'a.b.c'"]),
        (["--set", "=1"], ["unknown setting ''"]),
        (["--set", "data=1"], ["unknown setting 'data'"]),
        (["--set", "train.epochs"], ["section.key=value"]),
        (["--set", "train.epochs=-3"], ["train.epochs must be positive"]),
        (["--set", "train.epochs=0"], ["train.epochs must be positive"]),
        (["--set", "train.warmup_epochs=-1"], ["train.warmup_epochs"]),
        (["--set", "data.batch_size=0"], ["data.batch_size must be positive"]),
        (["--set", "data.subset=0"], ["data.subset"]),
        (["--set", "noise.rate=1.5"], ["noise.rate", "[0, 1)", "1.5"]),
        (["--set", "noise.rate=-0.1"], ["noise.rate"]),
        (["--set", "noise.rate=nan"], ["noise.rate", "finite"]),
        (["--set", "noise.rate=0"], ["noise.rate must be above 0", "noise.kind=none"]),
        (["--set", "noise.openset_ratio=0.95"], ["at least 2 known classes"]),
        (["--set", "optim.lr=inf"], ["optim.lr", "finite"]),
        (["--set", "optim.lr=-1"], ["optim.lr must be positive"]),
        (["--set", "method.tau=inf"], ["method.tau", "finite"]),
        (["--set", "optim.lr_decay=cosine:a,b,c"], ["optim.lr_decay", "not a number"]),
        (["--set", "optim.lr_decay=junk"], ["optim.lr_decay", "not supported"]),
        (["--set", "train.progress=maybe"], ["train.progress", "true or false"]),
        (["--set", "data.loader=gpu"], ["data.loader", "device, pil", "'gpu'"]),
        (["--set", "method.name=unicon"], ["unknown method 'unicon'", "act"]),
        (["--set", "model.name="], ["unknown model ''"]),
        (["--set", "model.num_outputs=1"], ["model.num_outputs must be > 1"]),
        (["--set", "train.threads=0"], ["train.threads"]),
        (["--set", "train.device=tpu"], ["train.device 'tpu'"]),
        (["--set", "paper_test_acc=abc"], ["paper_test_acc", "number"]),
        (["--set", "train.epochs=1\n2"], ["train.epochs", "'1\\n2'"]),
        (["--device", ""], ["train.device ''"]),
        # Seeds: numpy and scikit-learn take [0, 2**32) only.
        (["--set", "data.subset_seed=-1"], ["data.subset_seed", "from 0 to 4294967295", "-1"]),
        (["--set", f"train.seed={2**40}"], ["train.seed", "from 0 to 4294967295"]),
        (["--set", f"noise.seed={2**32}"], ["noise.seed", "from 0 to 4294967295"]),
        (["--set", "method.name=dividemix", "--set", "method.gmm_seed=-5"], ["method.gmm_seed"]),
        # LR plans: finite, bounded numbers only (a huge cosine would fill the memory).
        (["--set", "optim.lr_decay=step:1e400"], ["optim.lr_decay", "not a finite number"]),
        (["--set", "optim.lr_decay=cosine:0,nan,10"], ["optim.lr_decay", "not a finite"]),
        (["--set", "optim.lr_decay=cosine:inf,0,10"], ["optim.lr_decay", "not a finite"]),
        (["--set", "optim.lr_decay=cosine:-5,0,10"], ["the epoch -5", "from 0 to 100000"]),
        (["--set", "optim.lr_decay=cosine:0,-1e-3,10"], ["end value -0.001 must be >= 0"]),
        (["--set", "optim.lr_decay=cosine:0,0,1e12"], ["the epoch 1e+12", "from 0 to 100000"]),
        (["--set", "optim.lr_decay=step:1e300"], ["the milestone 1e+300"]),
        # Devices asymco cannot train on.
        (["--device", "meta"], ["train.device 'meta'", "cpu, cuda, cuda:N or mps"]),
        (["--device", "xpu"], ["train.device 'xpu'", "cpu, cuda, cuda:N or mps"]),
        (["--device", "cuda:-1"], ["train.device 'cuda:-1'"]),
        (["--device", "cpu:3"], ["train.device 'cpu:3'", "use cpu"]),
        # Sizes that would fail allocating, fork thousands of processes or loop for ever.
        (["--set", f"model.num_outputs={2**40}"], ["model.num_outputs", "at most 100000"]),
        (["--set", f"data.workers={2**40}"], ["data.workers must be from 0 to 256"]),
        (["--set", f"train.threads={2**40}"], ["train.threads must be from 1 to 256"]),
        (["--set", f"data.image_size={2**40}"], ["data.image_size must be from 1 to 8192"]),
        (["--set", "data.resize=0"], ["data.resize must be from 1 to 8192"]),
        (["--set", f"train.epochs={2**40}"], ["train.epochs", "at most 100000"]),
        (["--set", f"train.warmup_epochs={2**40}"], ["train.warmup_epochs", "100000"]),
        (["--set", "method.name=agce", "--set", "method.q=1e30"], ["(a + 1)^q overflow"]),
    ],
)
def test_bad_setting(refused, tmp_path, args, fragments):
    message = refused(*QUICK, *args, "--out", tmp_path / "run")
    for fragment in fragments:
        assert fragment in message
    assert not (tmp_path / "run").exists()


def test_num_outputs_below_the_number_of_classes(refused, tmp_path):
    message = refused(*QUICK, "--set", "model.num_outputs=5", "--out", tmp_path / "run")
    assert "model.num_outputs=5 is below the 10 classes" in message
    assert not (tmp_path / "run").exists()


def test_too_few_samples_for_a_batch(refused, tmp_path):
    message = refused(*QUICK, "--set", "data.subset=1", "--out", tmp_path / "run")
    assert "too few" in message or "too small" in message


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--preset", "nope"], ["unknown preset 'nope'", "quickstart"]),
        (["train"], ["--preset", "--data"]),
        (["train", "--preset", "quickstart", "--test", "csv:x.csv"], ["--test goes with --data"]),
        (["train", "--data", "zip:/tmp/x"], ["folder:PATH"]),
        (["train", "--data", "npz:"], ["folder:PATH"]),
        (["train", "--resume"], ["--resume needs --out"]),
        (["train", "--preset", "quickstart", "--out", ""], ["--out is empty"]),
        (["train", "--preset", "quickstart", "--epochs", "3"], ["unrecognized arguments"]),
        (["frobnicate"], ["invalid choice"]),
        (["sweep", "--presets", "quickstart", "--seeds", "a", "--out", "x"], ["--seeds", "'a'"]),
        (["issues", "/no/such/run"], ["label_issues.csv does not exist"]),
        (["issues", "/no/such/run", "--top", "-1"], ["--top must be 0 or more"]),
    ],
)
def test_bad_command_line(refused, args, fragments):
    message = refused(*args)
    for fragment in fragments:
        assert fragment in message


# ---------------------------------------------------------------------------- --out


def test_a_file_given_as_out(refused, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    assert "not a directory" in refused(*QUICK, "--out", blocker)
    assert "cannot write" in refused(*QUICK, "--out", blocker / "run")
    assert blocker.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_read_only_out_directory(refused, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert "cannot write" in refused(*QUICK, "--out", locked / "run")
        assert "cannot write" in refused(*QUICK, "--out", locked)
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_out_name_too_long(refused, tmp_path):
    """An --out the file system refuses (unwritable even for root) fails before training."""
    message = refused(*QUICK, "--out", tmp_path / ("x" * 300))
    assert "File name too long" in message


def test_out_holding_a_run_is_never_overwritten(refused, tmp_path):
    (tmp_path / "config.yaml").write_text("mine: true\n")
    assert "already holds a run" in refused(*QUICK, "--out", tmp_path)
    assert (tmp_path / "config.yaml").read_text() == "mine: true\n"


def test_resume_with_a_broken_config(refused, tmp_path):
    """A hand-edited config.yaml gets one sentence naming the key, not a TypeError."""
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    for text, fragment in [
        ("train:\n  epochs: abc\n", "train.epochs must be a whole number"),
        ("train:\n  nosuch: 1\n", "unknown setting 'train.nosuch'"),
        ("train: 5\n", "section train must be a mapping"),
        ("- a list\n", "must be a mapping"),
        ("data:\n  loader: gpu\n", "data.loader must be one of"),
        ("train: [unclosed\n", "cannot read"),
        ("", "must be a mapping of settings, got None"),
    ]:
        (tmp_path / "config.yaml").write_text(text)
        assert fragment in refused("train", "--resume", "--out", tmp_path)


# ---------------------------------------------------------------------------- Python API


def test_api_refuses_bad_arrays(tmp_path):
    import asymco

    bad = [
        (dict(images=images().astype(np.float32), labels=LABELS), r"in \[0, 1\]"),
        (dict(images=np.full((40, 32, 32, 3), np.nan), labels=LABELS), "NaN"),
        (dict(images=images(), labels=LABELS.astype(float)), "integers"),
        (dict(images=images(), labels=LABELS[:-1]), "labels"),
        (dict(images=images(), labels=np.stack([LABELS, LABELS], 1)), "one label per image"),
        (dict(images=images(), labels=LABELS - 1), "negative"),
        (dict(images=images(), labels=LABELS, class_names=["a", "b"]), "only 2 names"),
        (dict(images=images(0), labels=LABELS[:0]), "no images"),
    ]
    for i, (arrays, fragment) in enumerate(bad):
        with pytest.raises(UserError, match=fragment):
            asymco.fit(**arrays, out_dir=tmp_path / f"run{i}")
        assert not (tmp_path / f"run{i}").exists()  # no directory, no saved arrays left behind
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="negative"):
        asymco.fit(images=images(), labels=LABELS - 1, out_dir=kept)
    assert [f.name for f in kept.iterdir()] == ["notes.txt"]  # a user's directory stays
