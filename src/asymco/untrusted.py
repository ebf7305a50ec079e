"""The one guarded way in for bytes asymco did not write in this process: run files read back,
checkpoints, weights, label files, CSVs, arrays and images a user points at.

Decoders fail on damaged bytes in every way there is (IndexError from an unpickler, KeyError,
UnicodeDecodeError, zlib.error, struct.error, PIL's SyntaxError, MemoryError from a declared
size...), so a reader does not list exceptions: it decodes inside `decoding(path, what)`, which
turns any of them into one `UserError` sentence naming the file. Arrays are checked by their
declared shape and dtype (`check_arrays`) before numpy allocates anything.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from asymco.errors import UserError

MB = 2**20
TEXT_LIMIT = 256 * MB  # config.yaml, metrics.jsonl, summary.json: kilobytes when sound
TABLE_LIMIT = 8 * 2**30  # CSV tables: a row per image, so millions of rows are fine


def _oneline(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())  # messages and paths from inside a file may hold newlines
    return line if len(line) <= limit else line[: limit - 3] + "..."


def reason(err: BaseException) -> str:
    """A short, one-line account of why decoding failed."""
    text = str(err).strip()
    if isinstance(err, MemoryError):
        return "it declares more data than fits in memory"
    if "Weights only load failed" in text:  # torch's refusal is paragraphs of advice
        found = re.search(r"WeightsUnpickler error:\s*(.*)", text)
        return _oneline(f"unreadable pickle: {found.group(1) if found else 'refused by torch'}")
    first = text.splitlines()[0] if text else ""
    return _oneline(f"{type(err).__name__}: {first}" if first else type(err).__name__)


@contextlib.contextmanager
def decoding(path: Path | str, what: str, fix: str = "") -> Iterator[None]:
    """Turn any exception raised while decoding `path` into one `UserError` sentence:
    "cannot read WHAT PATH: it is corrupt or truncated (REASON); FIX". A `UserError` raised
    inside (a reader's own, more precise sentence) passes through unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # damaged bytes can fail in any way, MemoryError included
        hint = f"; {fix}" if fix else ""
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        account = (
            f"it needs {found.group(1)} to unpickle, which could run code, so it was refused"
            if found and "Weights only load failed" in str(err)
            else f"it is corrupt or truncated ({reason(err)})"
        )
        raise UserError(f"cannot read {what} {_oneline(str(path), 300)}: {account}{hint}") from None


def read_bytes(path: Path, what: str, limit: int) -> bytes:
    """The bytes of `path`, refused in one sentence when missing, unreadable or over `limit`."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise UserError(
                f"cannot read {what} {path}: it is {size / MB:.0f} MB, more than the "
                f"{limit / MB:.0f} MB such a file can be; is it the right file?"
            )
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {what} {path} ({err.strerror or err})") from None


def read_text(path: Path, what: str, limit: int, *, encoding: str = "utf-8", fix: str = "") -> str:
    """`read_bytes` decoded as UTF-8 text (`encoding`="utf-8-sig" also drops a BOM)."""
    data = read_bytes(path, what, limit)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise UserError(
            f"cannot read {what} {path}: it is not UTF-8 text ({err.reason} at byte "
            f"{err.start}){'; ' + fix if fix else ''}"
        ) from None


def read_json_mapping(path: Path, what: str, fix: str = "") -> dict:
    """A JSON file that must hold a mapping (summary.json), as one `UserError` sentence if it
    is too large, not UTF-8, not JSON (nesting too deep included) or not a mapping."""
    import json

    with decoding(path, what, fix):
        value = json.loads(read_text(path, what, TEXT_LIMIT))
        if not isinstance(value, dict):
            raise ValueError("it holds no mapping of figures")
    return value


def available_memory() -> int | None:
    """Bytes of memory this process can still get (the container's limit counts), or None."""
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    if not found:  # not Linux: the free pages (less than available, as caches count as used)
        with contextlib.suppress(ValueError, OSError, AttributeError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    with contextlib.suppress(OSError, ValueError):  # cgroup v2: a container's own limit
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((cgroup / "memory.current").read_text()))
    return max(min(found), 0) if found else None


def _declared(stream, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an .npy header declares, read without reading the data."""
    fmt = np.lib.format
    version = fmt.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(stream)
    else:  # 3.0 (utf-8 field names) has no public reader; numpy checks the version itself
        shape, _, dtype = fmt._read_array_header(stream, version)
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"the header of {name} declares the shape {shape}")
    return shape, dtype


def check_arrays(path: Path, what: str, fix: str = "", limit: int | None = None) -> None:
    """Refuse an .npy or .npz whose arrays' declared sizes exceed `limit` bytes or the free
    memory, before numpy allocates them; a damaged header is one sentence too."""
    budget = min(x for x in (limit, available_memory(), 2**62) if x is not None)
    total = 0
    with decoding(path, what, fix):
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.filename.endswith(".npy"):
                        with archive.open(info) as member:
                            total += _nbytes(*_declared(member, info.filename))
        else:
            with open(path, "rb") as f:
                total += _nbytes(*_declared(f, path.name))
    if total > budget:
        raise UserError(
            f"cannot read {what} {path}: its arrays declare {total / 2**30:.1f} GB, more than "
            f"the {budget / 2**30:.1f} GB of memory available; is the file damaged?"
        )


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * max(dtype.itemsize, 1)
