"""Garbage collection runners: reclaim the blobs that deleted manifests left behind.

Three modes (``gc.mode``): ``none``; ``command`` runs garbage-collect on this host, with
optional read-only, stop/start and restart hooks around it; ``docker`` runs it for a
registry container through the Docker Engine API, by ``exec`` in the running container
(then restarts it) or ``offline`` in a one-off container while the registry is stopped.
Every runner that stops the registry, or makes it read-only, brings it back whatever
happened, and waits until it answers; a registry that ran GC is a fresh process afterwards
when the policy says its blob cache needs that. The probe after GC is not here: it speaks
HTTP (``apply/probe.py``).

Runners are blocking (subprocesses, the Docker SDK); the runner calls them in a thread.
They never speak HTTP themselves: readiness is checked by the ``ReadyCheck`` passed in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from retention.core.model import GcResult

ReadyCheck = Callable[[float], None]
"""Block until the registry answers ``/v2/``, at most the given seconds; raise if it never does."""


class Collector(Protocol):
    """One way of running garbage-collect; ``collect`` raises GarbageCollectionError."""

    mode: str

    def collect(self) -> GcResult: ...


class WriteWindow(Protocol):
    """Keeps writes away from the registry while GC runs (the gate of ``retention serve``).

    ``close`` first drains (no write in flight, no upload session unfinished) and returns
    False if that took longer than ``timeout_s``: then nothing is closed and GC must not
    run. After a True, writes are refused until ``open``. Async because the pass awaits it
    on its own event loop while the gate serves on another.
    """

    async def close(self, timeout_s: float) -> bool: ...

    async def open(self) -> None: ...


_ELIGIBLE = re.compile(r"(\d+) blobs and (\d+) manifests eligible for deletion")
_ELIGIBLE_BLOB = re.compile(r"^blob eligible for deletion: ", re.MULTILINE)


def count_deleted_blobs(output: str) -> int | None:
    """How many blobs garbage-collect removed, from its own output; None if it did not say.

    Distribution 2.8 prints ``N blobs marked, M blobs and K manifests eligible for
    deletion`` on stdout, then one ``blob eligible for deletion: sha256:...`` line per blob
    it sweeps (measured on 2.8.2; its ``Deleting blob`` lines only appear at log level info).
    """
    summary = _ELIGIBLE.search(output)
    if summary:
        return int(summary.group(1))
    listed = len(_ELIGIBLE_BLOB.findall(output))
    return listed or None
