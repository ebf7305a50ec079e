"""Atomic file writes: a crash mid-write never leaves a half-written file in place.

Every file asymco writes (run directories, checkpoints, reports) goes through `write_atomic`.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from pathlib import Path

FILE_MODE = 0o644
"""`mkstemp` creates files readable by their owner only; results are meant to be shared."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path`.

    A reader (or a crash) sees either the old file or the new one, never part of one.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as err:  # name the file the run was writing, not the temporary one
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (a power cut could otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def torch_bytes(obj: object) -> bytes:
    """`torch.save(obj)` into memory, so the bytes can be written atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def describe_os_error(err: OSError) -> str:
    """An operating-system failure (a full disk, a lost mount, ...) in one sentence naming the
    file. Every file is written atomically, so what was written before it is intact."""
    where = f" ({err.filename})" if err.filename else ""
    reason = err.strerror or type(err).__name__
    hint = (
        "; free some space and run the same command with --resume to continue from the last "
        "checkpoint"
        if err.errno in (errno.ENOSPC, errno.EDQUOT)
        else "; files written before it are intact"
    )
    return f"{reason}{where}{hint}"
