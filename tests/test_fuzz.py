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

SETTINGS = ["train.epochs=2", "train.warmup_epochs=1", "train.progress=false"]
_INPUTS = 120  # per reader; the whole file stays near a minute on two cores


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


def seeded(data: bytes, seed: int, n: int = _INPUTS) -> list[tuple[str, bytes]]:
    """The seed file itself, random bytes, and `n` mutations of `data`."""
    noise = random.Random(seed).randbytes(len(data) % 4096 + 1)
    return [("unchanged", data), ("random bytes", noise), *mutants(data, n, seed, zip_hot(data))]


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


def test_checkpoint(run, tmp_path):
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
    try:
        seed = (folder / "checkpoint.pt").read_bytes()
        fuzz("checkpoint", folder / "checkpoint.pt", seeded(seed, 1, 2 * _INPUTS), read)
    finally:
        torch.set_rng_state(rng)


def test_run_config(run, tmp_path):
    folder = copy_run(run, tmp_path / "run")
    seed = (folder / "config.yaml").read_bytes()
    fuzz("config.yaml", folder / "config.yaml", seeded(seed, 2), lambda: api.load_run_config(folder))


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
    fuzz("sweep summary", folder / "summary.json", seeded(seed, 4, 40), lambda: _log_summary(folder))


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
