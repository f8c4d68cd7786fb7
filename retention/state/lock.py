"""One retention pass at a time per state directory: an exclusive ``flock`` on a lock file.

``flock`` is released by the kernel when the process dies, so a crashed pass never leaves a
stale lock behind; the file holds the holder's pid only to make the error message useful.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retention.errors import LockError

LOCK_NAME = "retention.lock"


@contextmanager
def exclusive(state_dir: Path) -> Iterator[Path]:
    """Hold the pass lock for the ``with`` block; raise LockError at once if it is taken."""
    path = state_dir / LOCK_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LockError(
            f"cannot use state_dir {state_dir}: {exc.strerror} (set state_dir in the policy)"
        ) from exc
    try:
        _acquire(fd, path)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        raise LockError(
            f"another retention pass is running (lock {path} held by pid {holder})"
        ) from None
