"""One writer per run directory: an OS file lock held for the run's life.

The lock is `flock(2)` on `<run>/.asymco.lock`, so the kernel releases it the moment its
process dies, however it dies: a stale lock cannot exist, and a resume after SIGKILL is never
blocked. The file names the holder (host and pid) for the refusal message; a run that ends
removes it, a killed run leaves it behind, unlocked, for the next one to take.

Processes forked by the holder (DataLoader workers) close their copy of the lock's file
descriptor at once (`os.register_at_fork`), so they never keep it after the holder ends. A
process that inherited it another way (through exec) may outlive a killed holder for a while;
when the named holder is dead, `acquire` waits for it instead of refusing. File systems without
locks (some NFS setups) get a warning, not a refusal: the run goes on unprotected.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from pathlib import Path

from asymco.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go unprotected there
    fcntl = None

logger = logging.getLogger(__name__)

_HELD: set[int] = set()
"""This process's lock file descriptors, closed in every child it forks."""


def _close_in_child() -> None:
    for fd in _HELD:  # the child's copy only: the parent's lock stays held
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)

LOCK_NAME = ".asymco.lock"
ORPHAN_WAIT_SECONDS = 30.0
"""How long to wait for the processes a dead holder left holding its lock."""


class RunLock:
    """The held lock of one run directory; `release()` (or the process's death) frees it."""

    def __init__(self, fd: int | None, path: Path) -> None:
        self._fd, self.path = fd, path

    @classmethod
    def acquire(cls, folder: Path) -> RunLock:
        """Lock `folder` for this process, or refuse in one sentence if another holds it."""
        path = folder / LOCK_NAME
        if fcntl is None:
            return cls(None, path)
        deadline = time.monotonic() + ORPHAN_WAIT_SECONDS
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _holder(fd)
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES):  # e.g. ENOLCK on NFS
                    logger.warning(
                        "cannot lock %s (%s); make sure no other run writes there",
                        folder,
                        err.strerror,
                    )
                    return cls(None, path)
                if _dead(holder) and time.monotonic() < deadline:
                    time.sleep(0.5)  # its orphaned workers still hold the lock: wait for them
                    continue
                who = f" (pid {holder[1]} on {holder[0]})" if holder else ""
                raise UserError(
                    f"another asymco process{who} is writing to {folder}; wait for it to end "
                    "or choose another --out"
                ) from None
            if _same_file(fd, path):
                break
            os.close(fd)  # the file was removed while we waited for it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        _HELD.add(fd)
        return cls(fd, path)

    def release(self) -> None:
        """Remove the lock file, then free the lock. (A process that opened the file just
        before it was removed finds, once it holds the lock, that the name now points elsewhere
        or nowhere, and tries again: `_same_file`.)"""
        if self._fd is not None:
            if _same_file(self._fd, self.path):
                self.path.unlink(missing_ok=True)
            _HELD.discard(self._fd)
            os.close(self._fd)
            self._fd = None


def _holder(fd: int) -> tuple[str, int] | None:
    """(host, pid) the lock file names, if it names one."""
    try:
        host, pid = os.pread(fd, 300, 0).decode().split()
        return host, int(pid)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _dead(holder: tuple[str, int] | None) -> bool:
    """Whether the named holder is a process of this host that no longer exists."""
    if holder is None or holder[0] != socket.gethostname():
        return False
    try:
        os.kill(holder[1], 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return _zombie(holder[1])


def _zombie(pid: int) -> bool:
    """A killed process not yet reaped by its parent still has a pid (Linux: state Z)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False
