"""Real-noise and own-data runs end to end, on tiny image trees built on the fly in each layout
(web, Food-101N, ImageFolder, CSV, npz), with ResNet-50 (no pretrained weights) and the paper's
CNN; plus the bad inputs a user may hand us."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asymco.cli import main
from asymco.label_issues import read_label_issues

CLASSES = ("apple", "pear", "plum")
TINY = ["--set", "train.epochs=2", "--set", "train.warmup_epochs=1", "--set", "data.batch_size=8",
        "--set", "train.progress=false", "--set", "data.workers=0"]
RESNET_32PX = ["--set", "model.pretrained=false", "--set", "data.image_size=32",
               "--set", "data.resize=36"]


def write_image(path: Path, index: int, label: int) -> None:
    """Mixed sizes, RGB and grayscale, JPEG and PNG; each class has its own colour."""
    rng = np.random.default_rng(index)
    w, h = 40 + 7 * (index % 5), 36 + 5 * (index % 3)
    pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    pixels[..., label] += 150
    img = Image.fromarray(pixels)
    if index % 4 == 0:
        img = img.convert("L")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")


def image_tree(root: Path, per_class: int = 6, single: str | None = None) -> list[tuple[str, int]]:
    """root/<class>/<image> with upper- and lower-case extensions; `single` gets one image."""
    items = []
    for label, name in enumerate(CLASSES):
        for i in range(1 if name == single else per_class):
            rel = f"{name}/img{i}{['.jpg', '.JPG', '.png', '.PNG'][i % 4]}"
            write_image(root / rel, 10 * label + i, label)
            items.append((rel, label))
    return items


def corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff this is no jpeg")


def run_summary(out: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((out / "summary.json").read_text())
    rows = read_label_issues(out / "label_issues.csv")
    assert len(rows) == summary["num_train"]
    scores = [float(r["label_score"]) for r in rows]
    assert scores == sorted(scores) and all(0 <= s <= 1 for s in scores)
    return summary, rows


@pytest.mark.parametrize("model", [RESNET_32PX, ["--set", "model.name=cnn7"]],
                         ids=["resnet50", "paper-cnn"])
def test_web_layout(tmp_path, model):
    root = tmp_path / "web-aircraft"
    image_tree(root / "train", single="plum")
    image_tree(root / "val", per_class=2)
    corrupt(root / "train" / "pear" / "broken.jpg")
    out = tmp_path / "run"
    assert main(["train", "--preset", "web-aircraft", "--data-dir", str(root), "--out", str(out),
                 *TINY, "--set", "data.image_size=32", "--set", "data.resize=36", *model]) == 0
    summary, rows = run_summary(out)
    assert summary["num_train"] == 13 and summary["num_test"] == 6  # the corrupt file left out
    assert summary["noise_rate_actual"] is None and summary["paper_test_acc"] == 86.56
    assert {r["given_class"] for r in rows} == set(CLASSES)
    assert all(Path(r["path"]).is_file() for r in rows)
    assert not any("broken" in r["path"] for r in rows)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[1]["sel_fraction"] is not None and metrics[1]["sel_precision"] is None


def food_tree(root: Path) -> None:
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "classes.txt").write_text("class_name\n" + "\n".join(CLASSES) + "\n")
    lines = ["class_name/key"]
    for label, name in enumerate(CLASSES):
        for i in range(4):
            write_image(root / "images" / name / f"{i}.jpg", 10 * label + i, label)
            lines.append(f"{name}/{i}.jpg")
    (root / "meta" / "imagelist.tsv").write_text("\n".join(lines) + "\n")
    test = root / "food-101"
    (test / "meta").mkdir(parents=True)
    (test / "meta" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (test / "meta" / "test.txt").write_text("\n".join(f"{c}/t{i}" for c in CLASSES
                                                      for i in range(2)) + "\n")
    for label, name in enumerate(CLASSES):
        for i in range(2):
            write_image(test / "images" / name / f"t{i}.jpg", 100 + 10 * label + i, label)


def test_food101n_layout_with_resnet50_and_the_200_logit_quirk(tmp_path, monkeypatch):
    from asymco.data import layouts

    food_tree(tmp_path / "food")
    # The real Food-101N has 101 classes; the tiny stand-in has 3.
    original = layouts.food101n
    monkeypatch.setattr("asymco.data.datasets.food101n",
                        lambda root, test_root=None: original(root, test_root, num_classes=3))
    out = tmp_path / "run"
    assert main(["train", "--preset", "food101n", "--data-dir", str(tmp_path / "food"),
                 "--out", str(out), "--set", "model.num_outputs=200", *TINY, *RESNET_32PX]) == 0
    summary, rows = run_summary(out)
    assert summary["num_train"] == 12 and summary["num_test"] == 6
    assert summary["paper_test_acc"] == 86.81
    import torch

    state = torch.load(out / "checkpoint.pt", weights_only=True)["method"]
    assert state["nets.rtm.classifier.weight"].shape == (200, 2048)
    assert all(int(r["predicted_label"]) < 200 for r in rows)


def test_image_folder_with_paper_cnn_and_a_separate_test_folder(tmp_path):
    image_tree(tmp_path / "train")
    image_tree(tmp_path / "test", per_class=2)
    out = tmp_path / "run"
    assert main(["train", "--data", f"folder:{tmp_path / 'train'}",
                 "--test", f"folder:{tmp_path / 'test'}", "--out", str(out), *TINY,
                 "--set", "model.name=cnn7", "--set", "data.image_size=32"]) == 0
    summary, _ = run_summary(out)
    assert summary["num_train"] == 18 and summary["num_test"] == 6
    assert summary["preset"] == "custom"


def test_csv_with_relative_paths_and_held_out_split(tmp_path):
    items = image_tree(tmp_path / "pics")
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "note"])
        for rel, label in items:
            writer.writerow([f"pics/{rel}", CLASSES[label], "x"])
    out = tmp_path / "run"
    assert main(["train", "--data", f"csv:{tmp_path / 'labels.csv'}", "--out", str(out), *TINY,
                 *RESNET_32PX]) == 0
    summary, rows = run_summary(out)
    assert summary["num_train"] + summary["num_test"] == 18
    assert {r["given_class"] for r in rows} == set(CLASSES)


def test_npz_arrays_choose_the_paper_cnn(tmp_path, caplog):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.integers(0, 60, (60, 32, 32, 3), dtype=np.uint8)
    x[np.arange(60), :, :, y] += 150
    np.savez(tmp_path / "mine.npz", x_train=x, y_train=y, class_names=np.array(CLASSES))
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        assert main(["train", "--data", f"npz:{tmp_path / 'mine.npz'}", "--out", str(out),
                     *TINY]) == 0
    assert "model cnn7 at 32 px" in caplog.text  # the defaults are printed
    config = (out / "config.yaml").read_text()
    assert "name: cnn7" in config
    summary, rows = run_summary(out)
    assert summary["num_train"] == 48 and rows[0]["given_class"] in CLASSES


def one_line_error(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "asymco", "train", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("asymco: error")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_bad_own_data_is_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "empty" in one_line_error("--data", f"folder:{tmp_path / 'empty'}")
    image_tree(tmp_path / "one")
    for name in CLASSES[1:]:
        for f in (tmp_path / "one" / name).iterdir():
            f.unlink()
        (tmp_path / "one" / name).rmdir()
    assert "class" in one_line_error("--data", f"folder:{tmp_path / 'one'}")
    (tmp_path / "bad.csv").write_text("path,label\nnowhere/a.jpg,cat\nnowhere/b.jpg,dog\n")
    assert "nowhere/a.jpg" in one_line_error("--data", f"csv:{tmp_path / 'bad.csv'}")
    assert "folder:PATH" in one_line_error("--data", "zip:/tmp/x")
    assert "does not exist" in one_line_error("--data", f"folder:{tmp_path / 'missing'}")
