"""Measure the registry's storage with ``du``, before deletion and after GC.

``du`` rather than a Python walk: it is what operators run by hand to check the result, so
our numbers match theirs, and it is fast on large trees. The root is always passed in.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Protocol

from retention.errors import StorageError

DU_TIMEOUT_S = 600.0


class StorageProbe(Protocol):
    """Something that can tell how many bytes the registry's storage holds."""

    def measure(self) -> int: ...


class LocalStorage:
    """The storage root on this host (mode none or command: the sidecar shares the volume)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def measure(self) -> int:
        if not self.path.is_dir():
            raise StorageError(f"storage path {self.path} is not a directory on this host")
        return parse_du(run_du(["du", "-sb", str(self.path)]), str(self.path))


def run_du(argv: list[str]) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=DU_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StorageError(f"{' '.join(argv)} failed: {exc}") from exc
    if done.returncode != 0:
        raise StorageError(f"{' '.join(argv)} failed: {done.stderr.strip()[:200]}")
    return done.stdout


def parse_du(output: str, path: str) -> int:
    """The byte count of ``du -sb PATH`` output (``12345\\tPATH``)."""
    first = output.strip().split(maxsplit=1)[:1]
    if not first or not first[0].isdigit():
        raise StorageError(f"du gave no size for {path}: {output.strip()[:200]!r}")
    return int(first[0])
