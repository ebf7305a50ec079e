"""A user's image arrays of any common form: grey/RGB/RGBA, uint8 or floats in [0, 1], any side;
small ones padded or resized for the paper's CNN, large ones cropped per image as files are."""

from __future__ import annotations

import numpy as np
import pytest

import asymco
from asymco.cli import main
from asymco.data.arrays import as_uint8_images, describe_fit, fit_plan, fit_to_side
from asymco.errors import UserError
from asymco.label_issues import read_label_issues

QUICK = ["--set", "train.progress=false", "--set", "data.workers=0"]


def grey_digits(n: int, side: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, side, side) float images in [0, 1] of 4 classes (a bright bar per class) and labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.uniform(0, 0.3, (n, side, side)).astype(np.float32)
    for label in range(4):
        rows = slice(3 + 6 * label, 7 + 6 * label)
        x[y == label, rows, :] += 0.6
    return np.clip(x, 0, 1), y


def symmetric_noise(y: np.ndarray, rate: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = y.copy()
    flip = rng.random(len(y)) < rate
    noisy[flip] = (y[flip] + rng.integers(1, 4, flip.sum())) % 4
    return noisy


def test_every_common_array_form_becomes_uint8_with_one_or_three_channels():
    grey = np.full((2, 5, 6), 0.5, dtype=np.float64)
    out = as_uint8_images(grey, "x")
    assert out.dtype == np.uint8 and out.shape == (2, 5, 6, 1) and (out == 128).all()
    rgba = np.zeros((2, 5, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7
    out = as_uint8_images(rgba, "x")
    assert out.shape == (2, 5, 5, 3) and (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()
    ones = as_uint8_images(np.ones((1, 4, 4, 3), np.float16), "x")
    assert (ones == 255).all()


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.full((2, 4, 4), 1.5, np.float32), "from 1.5 to 1.5"),
        (np.full((2, 4, 4), np.nan, np.float32), "NaN"),
        (np.zeros((2, 4, 4), np.int64), "scale the pixels"),
        (np.zeros((2, 4, 4, 2), np.uint8), "1, 3 or 4 channels"),
        (np.zeros((0, 4, 4), np.uint8), "holds no images"),
        (np.zeros((4, 4), np.uint8), "(N, H, W)"),
    ],
)
def test_unusable_arrays_get_one_sentence(array, words):
    with pytest.raises(UserError, match="x_train") as err:
        as_uint8_images(array, "x_train")
    assert words in str(err.value)


def test_small_images_are_padded_when_that_is_the_smaller_change_else_resized():
    assert fit_plan(28, 28, 32) == "pad"
    assert fit_plan(32, 32, 32) is None
    assert fit_plan(16, 16, 32) == "resize"  # padding would be half the image
    assert fit_plan(48, 48, 32) == "resize"
    assert fit_plan(28, 40, 32) == "resize"  # one side does not fit
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    padded = fit_to_side(x, 32)
    assert padded.shape == (3, 32, 32, 1)
    assert (padded[:, 2:30, 2:30] == x).all() and padded[:, :2].sum() == 0  # no pixel touched
    flat = np.full((2, 48, 64, 3), 77, np.uint8)
    resized = fit_to_side(flat, 32)
    assert resized.shape == (2, 32, 32, 3) and (resized == 77).all()  # a flat image stays flat
    assert describe_fit(28, 28, 1, 32) == "28x28 grey images padded with zeros to 32x32"
    assert describe_fit(32, 32, 3, 32) == ""


@pytest.mark.slow
def test_grey_28px_npz_with_40_percent_noise_trains_with_the_defaults(tmp_path, caplog):
    """The MNIST-shaped first data set: the defaults (and a short budget) train it, and the
    data line says the images were padded."""
    x, y = grey_digits(160)
    np.savez(tmp_path / "grey.npz", x_train=x, y_train=symmetric_noise(y, 0.4))
    out = tmp_path / "cli"
    with caplog.at_level("INFO"):
        assert main(["train", "--data", f"npz:{tmp_path / 'grey.npz'}", "--budget", "20s",
                     "--out", str(out), *QUICK]) == 0
    assert "28x28 grey images padded with zeros to 32x32" in caplog.text
    assert "model cnn7 at 32 px" in caplog.text and "plan:" in caplog.text
    rows = read_label_issues(out / "label_issues.csv")
    assert len(rows) == 128  # 80 % of 160; the rest is the held-out test split

    result = asymco.fit(images=x, labels=symmetric_noise(y, 0.4),
                        settings={"train.budget": "20s", "train.progress": False},
                        out_dir=tmp_path / "api")
    assert (tmp_path / "api" / "label_issues.csv").is_file()
    assert len(result.ranked()) == 128 and result.model is not None


@pytest.mark.slow
def test_large_arrays_take_the_image_file_route(tmp_path, caplog):
    """Arrays above 64 px train a ResNet on per-image crops (as folders do), RGB from grey."""
    x, y = grey_digits(24, side=80)
    np.savez(tmp_path / "big.npz", x_train=(x * 255).astype(np.uint8), y_train=y)
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        assert main(["train", "--data", f"npz:{tmp_path / 'big.npz'}", "--out", str(out),
                     "--set", "model.pretrained=false", "--set", "data.image_size=72",
                     "--set", "data.batch_size=8", "--set", "train.epochs=1",
                     "--set", "train.warmup_epochs=0", "--set", "train.budget=null",
                     *QUICK]) == 0
    assert "model resnet50" in caplog.text
    summary = (out / "summary.json").read_text()
    assert '"loader": "workers"' in summary
    assert len(read_label_issues(out / "label_issues.csv")) == 19
