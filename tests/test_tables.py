"""Hugging Face datasets (`--data hf:PATH`) and Parquet files (`--data parquet:PATH`): tables of
tiny generated PNGs read into splits, trained end to end, and the bad tables a user may hand us
refused with one sentence each."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asymco.cli import main
from asymco.config import DataConfig
from asymco.data.datasets import load_dataset
from asymco.data.encoded import ImageBlob
from asymco.data.tables import table_splits
from asymco.errors import UserError
from asymco.label_issues import read_label_issues

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CLASSES = ["cat", "dog", "fox"]
TINY = ["train.epochs=2", "train.warmup_epochs=1", "data.batch_size=8", "train.progress=false",
        "data.workers=0", "train.precision=fp32"]


def png(label: int, index: int, side: int | None = None) -> bytes:
    """A PNG whose colour says its class; mixed sizes unless `side` is given."""
    rng = np.random.default_rng(100 * label + index)
    h, w = (side, side) if side else (34 + index % 5, 36 + index % 3)
    pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    pixels[..., label] += 150
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def rows(n: int, side: int | None = None, start: int = 0) -> tuple[list[bytes], list[int]]:
    labels = [i % 3 for i in range(start, start + n)]
    return [png(y, i, side) for i, y in enumerate(labels, start)], labels


def hf_dataset(images: list[bytes], labels: list[int]):
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}
    )
    cells = [{"bytes": b, "path": None} for b in images]
    return datasets.Dataset.from_dict({"image": cells, "label": labels}, features=features)


def write_parquet(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def run(data: str, out: Path, *extra: str) -> list[dict[str, str]]:
    settings = [a for s in (*TINY, *extra) for a in ("--set", s)]
    assert main(["train", "--data", data, "--out", str(out), *settings]) == 0
    return read_label_issues(out / "label_issues.csv")


def test_hf_dataset_dict_with_mixed_sizes_trains_from_its_own_splits(tmp_path: Path):
    train, test = hf_dataset(*rows(30)), hf_dataset(*rows(9, start=30))
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "pets"))
    out = tmp_path / "run"
    issues = run(f"hf:{tmp_path / 'pets'}", out)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["num_train"], summary["num_test"]) == (30, 9)
    assert summary["execution"]["loader"] == "files"  # mixed sizes: decoded by workers
    assert {r["given_class"] for r in issues} == set(CLASSES)  # the ClassLabel's names
    assert all(r["path"] == f"pets[train]#{r['index']}" for r in issues)  # its row, by name
    by_index = {int(r["index"]): r for r in issues}
    assert by_index[4]["given_class"] == "dog"


def test_parquet_of_32px_images_with_string_labels_trains_in_memory(tmp_path: Path):
    images, labels = rows(40, side=32)
    names = [CLASSES[y] for y in labels]
    path = write_parquet(tmp_path / "pets.parquet", {"img": images, "class": names})
    out = tmp_path / "run"
    issues = run(f"parquet:{path}", out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_train"] + summary["num_test"] == 40
    assert summary["execution"]["loader"] == "device"  # all 32x32: the in-memory route
    assert "name: cnn7" in (out / "config.yaml").read_text()
    for row in issues:  # `index` is the row in the table, even after the hold-out
        assert row["given_class"] == names[int(row["index"])]


def test_single_dataset_struct_paths_and_hub_parquet_layout(tmp_path: Path):
    images, labels = rows(12)
    hf_dataset(images, labels).save_to_disk(str(tmp_path / "one"))
    train, test = table_splits(DataConfig(dataset="hf", root=str(tmp_path / "one")))
    assert test is None and len(train) == 12 and train.classes == CLASSES
    assert isinstance(train.paths[0], ImageBlob) and str(train.paths[0]) == "one#0"
    # Paths relative to the Parquet file, in a struct without bytes; a Hub-style folder of
    # train-* and test-* files gives the splits.
    for i, data in enumerate(images):
        (tmp_path / "hub" / "pics").mkdir(parents=True, exist_ok=True)
        (tmp_path / "hub" / "pics" / f"{i}.png").write_bytes(data)
    cells = [{"bytes": None, "path": f"pics/{i}.png"} for i in range(12)]
    write_parquet(tmp_path / "hub" / "train-0.parquet", {"image": cells[:8], "label": labels[:8]})
    write_parquet(tmp_path / "hub" / "test-0.parquet", {"image": cells[8:], "label": labels[8:]})
    train, test = table_splits(DataConfig(dataset="parquet", root=str(tmp_path / "hub")))
    assert (len(train), len(test)) == (8, 4) and train.classes == ["0", "1", "2"]
    assert train.paths[1] == str(tmp_path / "hub" / "pics" / "1.png")
    source = load_dataset(DataConfig(dataset="parquet", root=str(tmp_path / "hub")))
    assert source.is_files and list(source.y_test) == labels[8:]
    # --test names the test table; a table that has its own test split refuses a second one.
    files = {"root": str(tmp_path / "hub" / "train-0.parquet"),
             "test_root": str(tmp_path / "hub" / "test-0.parquet")}  # fmt: skip
    train, test = table_splits(DataConfig(dataset="parquet", **files))
    assert (len(train), len(test)) == (8, 4)
    both = DataConfig(dataset="parquet", root=str(tmp_path / "hub"), test_root=files["test_root"])
    assert "drop one of them" in one_sentence(both)


def test_bad_images_are_left_out_or_stop_naming_the_row(tmp_path: Path, caplog):
    images, labels = rows(12)
    images[3] = b"\x89PNG but not really"
    path = write_parquet(tmp_path / "t.parquet", {"image": images, "label": labels})
    with caplog.at_level("WARNING"):
        source = load_dataset(DataConfig(dataset="parquet", root=str(path)))
    assert len(source.y_train) + len(source.y_test) == 11 and "t.parquet#3" in caplog.text
    assert [str(p) for p in source.x_train] == [f"t.parquet#{i}" for i in source.train_ids]
    with pytest.raises(UserError, match=r"cannot read image t\.parquet#3"):
        load_dataset(DataConfig(dataset="parquet", root=str(path), on_bad_image="stop"))


def one_sentence(data: DataConfig) -> str:
    with pytest.raises(UserError) as info:
        table_splits(data)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_tables_are_one_sentence_each(tmp_path: Path):
    images, labels = rows(6)

    def table(name: str, **columns) -> DataConfig:
        return DataConfig(dataset="parquet", root=str(write_parquet(tmp_path / name, columns)))

    assert "no image column" in one_sentence(table("a.parquet", pic=images, label=labels))
    assert "no label column" in one_sentence(table("b.parquet", image=images, kind=labels))
    named = DataConfig(dataset="parquet", root=str(tmp_path / "b.parquet"), label_column="nope")
    assert "no column 'nope'" in one_sentence(named)
    floats = [float(y) for y in labels]
    assert "integer class ids or class names" in one_sentence(
        table("c.parquet", image=images, label=floats))
    assert "-1" in one_sentence(table("d.parquet", image=images, label=[-1, *labels[1:]]))
    assert "not images" in one_sentence(table("e.parquet", image=labels, label=labels))
    empty = {"image": pa.array([], pa.binary()), "label": pa.array([], pa.int64())}
    assert "no rows" in one_sentence(table("f.parquet", **empty))
    assert "no image in column" in one_sentence(table("g.parquet", image=[None, *images[1:]],
                                                      label=labels))  # fmt: skip
    assert "2 classes" in one_sentence(table("h.parquet", image=images, label=[0] * 6))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 no parquet")
    assert "not a readable Parquet" in one_sentence(DataConfig(dataset="parquet",
                                                               root=str(tmp_path / "bad.parquet")))
    (tmp_path / "none").mkdir()
    assert "no .parquet files" in one_sentence(DataConfig(dataset="parquet",
                                                          root=str(tmp_path / "none")))
    assert "save_to_disk" in one_sentence(DataConfig(dataset="hf", root=str(tmp_path / "none")))
    assert "does not exist" in one_sentence(DataConfig(dataset="hf", root=str(tmp_path / "x")))


def test_a_bad_table_on_the_command_line_is_one_line_and_status_2(tmp_path: Path):
    images, labels = rows(6)
    path = write_parquet(tmp_path / "t.parquet", {"jpeg": images, "label": labels})
    proc = subprocess.run([sys.executable, "-m", "asymco", "train", "--data", f"parquet:{path}"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("asymco: error")]
    assert len(errors) == 1 and "data.image_column=NAME" in errors[0], proc.stderr


def test_loader_pil_on_mixed_sizes_and_a_missing_extra(tmp_path: Path, monkeypatch):
    images, labels = rows(12)
    path = write_parquet(tmp_path / "t.parquet", {"image": images, "label": labels})
    with pytest.raises(UserError, match=r"data\.loader=pil.*leave data\.loader at auto"):
        load_dataset(DataConfig(dataset="parquet", root=str(path), loader="pil"))
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UserError, match=r'pip install "asymco\[hf\]"'):
        table_splits(DataConfig(dataset="hf", root=str(tmp_path)))
