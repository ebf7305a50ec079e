"""Every reader of untrusted bytes under a seeded mutation loop: truncations, 1-4 flipped bytes,
inserted and deleted bytes, and edits of .npy and zip headers, aimed half the time at the bytes
that decide the parse (pickles, headers, zip records). Each input either reads (a mutation can
leave a file valid) or raises `UserError` with one line, and no file beside it changes; any
other exception fails the test, naming the reader, the mutation and the exception.

The loops are seeded, so a failure reproduces; `_INPUTS` sets how many inputs each reader gets.
"""

from __future__ import annotations

import io
import logging
import random
import re
import struct
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asymco import api
from asymco.cli import main
from asymco.errors import UserError
from tests.test_checkpoint import rewrite_checkpoint

SETTINGS = [
    "train.epochs=2",
    "train.warmup_epochs=1",
    "train.progress=false",
    "data.subset=256",
    "data.test_subset=64",
]
_INPUTS = 150  # per reader; the whole file stays near a minute on two cores


# ---------------------------------------------------------------------------- mutations


def zip_hot(data: bytes) -> list[tuple[int, int]]:
    """The byte ranges of a zip that decide its parse: each local header with the start of its
    data (an .npy header, a pickle), every pickle whole, and the central directory."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile:
        return []
    hot = []
    for info in infos:
        start = info.header_offset
        head = 30 + len(info.filename.encode()) + len(info.extra)
        body = info.compress_size if info.filename.endswith(".pkl") else 160
        hot.append((start, start + head + min(info.compress_size, body)))
    end = max(info.header_offset + 30 + info.compress_size for info in infos)
    hot.append((end, len(data)))
    return hot


def mutants(data: bytes, n: int, seed: int, hot: list[tuple[int, int]]) -> list[tuple[str, bytes]]:
    """`n` seeded mutations of `data`: truncation, flips, insertions, deletions in turn."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        buf = bytearray(data)
        low, high = rng.choice(hot) if hot and rng.random() < 0.6 else (0, len(buf))
        high = max(low + 1, min(high, len(buf)))

        def at() -> int:
            return rng.randrange(low, high)  # noqa: B023 - drawn now, for this mutant

        kind = ("truncate", "flip", "insert", "delete")[i % 4]
        if kind == "truncate":
            del buf[at() :]
        elif kind == "flip":
            for _ in range(rng.randint(1, 4)):
                buf[min(at(), len(buf) - 1)] ^= rng.randrange(1, 256)
        elif kind == "insert":
            spot = at()
            buf[spot:spot] = rng.randbytes(rng.randint(1, 8))
        else:
            spot = at()
            del buf[spot : spot + rng.randint(1, 8)]
        out.append((f"{kind} #{i}", bytes(buf)))
    return out


_HEADER_EDITS = [
    (r"'shape': \([^)]*\)", "'shape': (1000000000, 32, 32, 3)"),
    (r"'shape': \([^)]*\)", "'shape': (-1,)"),
    (r"'shape': \([^)]*\)", "'shape': ()"),
    (r"'shape': \([^)]*\)", "'shape': (0,)"),
    (r"'shape': \([^)]*\)", "'shape': (4611686018427387904,)"),
    (r"'shape': \([^)]*\)", "'shape': (3, 'a')"),
    (r"'descr': '[^']*'", "'descr': '<f8'"),
    (r"'descr': '[^']*'", "'descr': '|O'"),
    (r"'descr': '[^']*'", "'descr': '<U3'"),
    (r"'descr': '[^']*'", "'descr': '>i2'"),
    (r"'descr': '[^']*'", "'descr': 'zz'"),
    (r"'descr': '[^']*'", "'descr': '<c16'"),
    (r"'descr': '[^']*'", "'descr': [('a', '<i4')]"),
    (r"'fortran_order': False", "'fortran_order': True"),
    (r"\}", ""),
    (r"'descr'", "'kind'"),
]


def _npy_with_header(npy: bytes, old: str, new: str) -> bytes:
    length = struct.unpack("<H", npy[8:10])[0]
    header = npy[10 : 10 + length].decode("latin1")
    edited = re.sub(old, new, header, count=1).rstrip() + " "
    edited += " " * (-(10 + len(edited) + 1) % 64) + "\n"
    return npy[:8] + struct.pack("<H", len(edited)) + edited.encode("latin1") + npy[10 + length :]


def header_edits(npz: bytes, seed: int) -> list[tuple[str, bytes]]:
    """The npz rebuilt with one member's .npy header edited (shape, dtype, order, syntax),
    and with random values in its zip records' fields (method, CRC, sizes, name length)."""
    rng = random.Random(seed)
    with zipfile.ZipFile(io.BytesIO(npz)) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
        method = archive.infolist()[0].compress_type
    out = []
    for name in members:
        for number, (old, new) in enumerate(_HEADER_EDITS):
            edited = dict(members, **{name: _npy_with_header(members[name], old, new)})
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", method) as archive:
                for member, content in edited.items():
                    archive.writestr(member, content)
            out.append((f"npy header edit {number} of {name}", buf.getvalue()))
    for i, (low, _) in enumerate(zip_hot(npz)[:-1] * 3):
        buf = bytearray(npz)
        field, size = rng.choice([(8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)])
        buf[low + field : low + field + size] = rng.randbytes(size)
        out.append((f"zip header edit {i}", bytes(buf)))
    return out


# ---------------------------------------------------------------------------- checking


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def fuzz(
    reader: str, path: Path, inputs: list[tuple[str, bytes]], read: Callable[[], object]
) -> None:
    """Write each input to `path` and `read()` it: it reads or raises a one-line `UserError`,
    and the other files of the folder stay as they were."""
    for label, data in inputs:
        path.write_bytes(data)
        before = snapshot(path.parent)
        try:
            read()
        except UserError as err:
            message = str(err)
            assert message.strip() and "\n" not in message, f"{reader}, {label}: {message!r}"
        except Exception as err:  # the bug this file hunts: name it with its input
            pytest.fail(f"{reader}, {label}: {type(err).__name__}: {err}"[:600])
        assert snapshot(path.parent) == before, f"{reader}, {label} changed a file"


def seeded(
    data: bytes, seed: int, n: int = _INPUTS, hot: list[tuple[int, int]] | None = None
) -> list[tuple[str, bytes]]:
    """The seed file itself, random bytes, and `n` mutations of `data` (aimed at `hot`, by
    default a zip's records)."""
    noise = random.Random(seed).randbytes(len(data) % 4096 + 1)
    hot = zip_hot(data) if hot is None else hot
    return [("unchanged", data), ("random bytes", noise), *mutants(data, n, seed, hot)]


def _pickle_range(checkpoint: bytes) -> list[tuple[int, int]]:
    return [zip_hot(checkpoint)[0]]  # torch.save writes data.pkl first


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 2-epoch quickstart run: the seeds of the run files; tests copy it."""
    out = tmp_path_factory.mktemp("fuzz") / "run"
    api.train(api.resolve_config("quickstart", SETTINGS), out_dir=out)
    return out


def copy_run(run: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


# ---------------------------------------------------------------------------- run files


@pytest.fixture
def resumable(run, tmp_path):
    """A copy of the run with this process's nets and optimizer built for it, and
    `read()`, which loads the checkpoint and restores it into them as a resume does."""
    from asymco.config_io import to_dict
    from asymco.data.prepare import prepare_data
    from asymco.engine.build import build_method, build_optimizer
    from asymco.engine.checkpoint import load_checkpoint, restore
    from asymco.engine.distributed import Dist
    from asymco.engine.precision import resolve_execution

    folder = copy_run(run, tmp_path / "run")
    cfg = api.load_run_config(folder)
    data = prepare_data(cfg.data, cfg.noise, workers=0)
    method = build_method(cfg, data, resolve_execution(cfg.train, torch.device("cpu")), Dist())
    optimizer = build_optimizer(method, cfg)[0]
    config, n = to_dict(cfg), len(data.noisy_label)

    def read() -> None:
        state = load_checkpoint(folder / "checkpoint.pt", num_samples=n, config=config)
        restore(state, method, optimizer, Dist())

    rng = torch.get_rng_state()  # restore() sets the global generators from the file
    yield folder / "checkpoint.pt", read
    torch.set_rng_state(rng)


def test_checkpoint(resumable):
    path, read = resumable
    seed = path.read_bytes()
    inputs = [*seeded(seed, 1), *mutants(seed, _INPUTS, 1, _pickle_range(seed))]
    fuzz("checkpoint", path, inputs, read)


def test_checkpoint_state_that_does_not_fit_the_nets(resumable):
    path, read = resumable
    state = torch.load(path, weights_only=True)
    first = next(iter(state["method"]))
    for change, fragment in [
        (lambda s: s["method"].pop(first), f"missing {first}"),
        (lambda s: s["method"].update(extra=torch.zeros(1)), "unexpected extra"),
        (lambda s: s["method"].update({first: torch.zeros(7, 7)}), f"wrong {first} (7, 7)"),
        (lambda s: s.update(history=[{"epoch": 5}]), "training position is unreadable"),
    ]:
        damaged = {**state, "method": dict(state["method"])}
        change(damaged)
        rewrite_checkpoint(path, damaged)
        with pytest.raises(UserError, match=re.escape(fragment)):
            read()


def test_run_config(run, tmp_path):
    folder = copy_run(run, tmp_path / "run")
    seed = (folder / "config.yaml").read_bytes()
    fuzz(
        "config.yaml", folder / "config.yaml", seeded(seed, 2), lambda: api.load_run_config(folder)
    )


@pytest.mark.parametrize("name", ["config.yaml", "metrics.jsonl", "summary.json"])
def test_report_files(run, tmp_path, name):
    from asymco.report.collect import load_run

    folder = copy_run(run, tmp_path / "run")
    seed = (folder / name).read_bytes()
    fuzz(name, folder / name, seeded(seed, 3, _INPUTS // 2), lambda: load_run(folder))


def test_sweep_summary_is_a_warning(run, tmp_path, caplog):
    from asymco.sweep import _log_summary

    folder = copy_run(run, tmp_path / "run")
    seed = (folder / "summary.json").read_bytes()
    fuzz(
        "sweep summary", folder / "summary.json", seeded(seed, 4, 40), lambda: _log_summary(folder)
    )


def test_label_table(run, tmp_path):
    from asymco.label_issues import read_label_issues
    from asymco.practitioner import _read_table
    from asymco.suggest import read_suspects

    folder = copy_run(run, tmp_path / "run")
    path = folder / "label_issues.csv"
    seed = path.read_bytes()

    def read() -> None:
        read_label_issues(path)
        read_suspects(path)
        _read_table(path)

    fuzz("label_issues.csv", path, seeded(seed, 5), read)


# ---------------------------------------------------------------------------- data files


def _tiny_images(n: int, side: int = 8) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def npz_bytes(compressed: bool, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def npz_inputs(seed: bytes, number: int) -> list[tuple[str, bytes]]:
    return [*seeded(seed, number, _INPUTS // 2), *header_edits(seed, number)]


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_own_npz(tmp_path, compressed):
    from asymco.data.datasets import read_own_npz

    y = np.arange(40) % 4
    seed = npz_bytes(
        compressed,
        x_train=_tiny_images(40),
        y_train=y,
        x_test=_tiny_images(8),
        y_test=y[:8],
        class_names=np.array(["a", "b", "c", "d"]),
    )
    path = tmp_path / "data.npz"
    fuzz("own npz", path, npz_inputs(seed, 6 + compressed), lambda: read_own_npz(path))


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_cifar_npz(tmp_path, compressed):
    from asymco.data import sources

    y = np.arange(20) % 10
    seed = npz_bytes(
        compressed, x_train=_tiny_images(20), y_train=y, x_test=_tiny_images(10), y_test=y[:10]
    )
    path = tmp_path / "cifar10.npz"

    def read() -> None:
        sources._load_npz.cache_clear()  # each input is read, not the last one's copy
        sources.load_npz(path, "cifar10")

    fuzz("CIFAR npz", path, npz_inputs(seed, 8 + compressed), read)


def test_cifarn_label_files(tmp_path):
    from asymco.data.cifarn import cifarn_label_sets

    labels = {"clean_label": np.arange(50) % 10, "aggre_label": (np.arange(50) + 1) % 10}
    pt = io.BytesIO()
    torch.save(labels, pt)
    for name, seed, inputs in [
        ("labels.npz", npz_bytes(False, **labels), npz_inputs),
        ("labels.pt", pt.getvalue(), lambda data, n: seeded(data, n, _INPUTS // 2)),
    ]:
        path = tmp_path / name
        fuzz(
            f"CIFAR-N {name}",
            path,
            inputs(seed, 10),
            lambda path=path: cifarn_label_sets(path, "cifar10", num_samples=50),
        )


def test_weights_file(tmp_path):
    from asymco.models.weights import load_matching, read_state_dict

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    path, fix = tmp_path / "weights.pth", "fix model.weights"

    def read() -> None:
        state = read_state_dict(path, what="tiny", fix=fix)
        load_matching(net, state, source=str(path), what="tiny", fix=fix)

    fuzz("weights", path, seeded(buf.getvalue(), 11), read)


def test_csv_labels(tmp_path):
    from asymco.data.layouts import csv_dataset

    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    seed = b"path,label\na.png,cat\nb.png,dog\nc.png,1\n\xef\xbb\xbfb.png,7\n"
    seed = b"\xef\xbb\xbf" + seed.replace(b"\xef\xbb\xbf", b"")  # a BOM, as Excel writes
    path = tmp_path / "labels.csv"
    fuzz("CSV labels", path, seeded(seed, 12), lambda: csv_dataset(path))


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_images(tmp_path, kind):
    from asymco.data.folders import verify_images
    from asymco.data.images import open_file_image

    pixels = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, kind)
    path = tmp_path / f"image.{kind.lower()}"

    def read() -> None:
        assert verify_images([str(path)], on_bad_image="skip").shape == (1,)  # never raises
        verify_images([str(path)], on_bad_image="stop")
        open_file_image(str(path))  # the gallery's reader

    with pytest.MonkeyPatch.context() as patch:  # the skip policy's warnings are expected
        patch.setattr(logging.getLogger("asymco.data.folders"), "disabled", True)
        fuzz(f"{kind} image", path, seeded(buf.getvalue(), 13), read)


# ---------------------------------------------------------------------------- the command line


@pytest.fixture
def cli(capsys):
    """`cli(*args)` runs `asymco ARGS` in-process: (exit status, non-empty stderr lines, log
    records and warnings counted as the command line would print them)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # capsys's stream: logs count as stderr lines
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    old_level, root.level = root.level, logging.INFO

    def run(*args: str | Path) -> tuple[int, list[str]]:
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            warnings.simplefilter("ignore", DeprecationWarning)
            status = main([str(a) for a in args])
        err = capsys.readouterr().err + "".join(f"{w.message}\n" for w in caught)
        return status, [line for line in err.splitlines() if line.strip()]

    yield run
    root.removeHandler(handler)
    root.setLevel(old_level)


def refused_or_ran(cli, folder: Path, label: str, *args: str | Path) -> None:
    """The command succeeds (the input was still valid), or exits 2 with one line and leaves
    the files of `folder` as they were."""
    before = snapshot(folder)
    status, lines = cli(*args)
    if status == 0:
        return
    assert status == 2 and len(lines) == 1, f"{label}: {status} {lines}"
    assert lines[0].startswith("asymco: error: ") and "Traceback" not in lines[0], label
    assert snapshot(folder) == before, f"{label} changed a file"


def test_cli_resume_with_a_damaged_checkpoint(run, tmp_path, cli):
    folder = copy_run(run, tmp_path / "run")
    seed = (folder / "checkpoint.pt").read_bytes()
    inputs = [m for m in mutants(seed, 8, 21, _pickle_range(seed)) if "flip" in m[0]][-1:]
    for label, data in [("random bytes", random.Random(21).randbytes(3000)), *inputs]:
        (folder / "checkpoint.pt").write_bytes(data)
        refused_or_ran(cli, folder, f"resume, {label}", "train", "--resume", "--out", folder)


def test_cli_report_and_issues_with_damaged_files(run, tmp_path, cli):
    folder = copy_run(run, tmp_path / "run")
    for name, command in [
        ("metrics.jsonl", ["report", folder, "--out", tmp_path / "report"]),
        ("summary.json", ["report", folder, "--out", tmp_path / "report"]),
        ("label_issues.csv", ["issues", folder]),
    ]:
        seed = (folder / name).read_bytes()
        for label, data in mutants(seed, 6, 22, []):
            (folder / name).write_bytes(data)
            refused_or_ran(cli, folder, f"{name}, {label}", *command)
        (folder / name).write_bytes(seed)


def _huge(npz: bytes, member: str) -> bytes:
    edits = header_edits(npz, 0)
    return next(data for label, data in edits if label == f"npy header edit 0 of {member}")


def test_cli_npz_data_and_a_huge_declared_shape(tmp_path, cli):
    y = np.arange(40) % 4
    seed = npz_bytes(True, x_train=_tiny_images(40), y_train=y)
    path, out = tmp_path / "data.npz", tmp_path / "run"
    inputs = [*mutants(seed, 4, 23, zip_hot(seed)), ("huge x_train", _huge(seed, "x_train.npy"))]
    for label, data in inputs:
        path.write_bytes(data)
        args = ["train", "--data", f"npz:{path}", "--out", out, "--set", "train.epochs=1"]
        refused_or_ran(cli, tmp_path, f"npz, {label}", *args, "--set", "train.progress=false")
        assert not out.exists() or (out / "summary.json").is_file(), label
    path.write_bytes(_huge(seed, "x_train.npy"))
    _, (line,) = cli("train", "--data", f"npz:{path}", "--out", out)
    assert "declare 2861.0 GB, more than the" in line


def test_cli_cifar_data_dir_with_a_huge_declared_shape(tmp_path, cli):
    y = np.arange(50) % 10
    seed = npz_bytes(
        False, x_train=_tiny_images(50), y_train=y, x_test=_tiny_images(10), y_test=y[:10]
    )
    (tmp_path / "cifar10.npz").write_bytes(_huge(seed, "x_train.npy"))
    args = ["train", "--preset", "cifar10n-aggre", "--data-dir", tmp_path, "--out", tmp_path / "r"]
    refused_or_ran(cli, tmp_path, "huge CIFAR", *args)
    status, (line,) = cli(*args)
    assert status == 2 and "cifar10.npz: its arrays declare 2861.0 GB" in line
    assert not (tmp_path / "r").exists()


def test_limits_are_one_sentence(tmp_path):
    from asymco.untrusted import available_memory, check_arrays, read_text

    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * 4096)
    with pytest.raises(UserError, match="more than the 0 MB such a file can be"):
        read_text(path, "run file", limit=1024)
    np.save(tmp_path / "a.npy", np.zeros(1000, dtype=np.uint8))
    with pytest.raises(UserError, match=r"declare 0\.0 GB, more than the 0\.0 GB"):
        check_arrays(tmp_path / "a.npy", "array", limit=999)
    check_arrays(tmp_path / "a.npy", "array", limit=1000)
    assert (available_memory() or 1) > 0
