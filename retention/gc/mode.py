"""A policy's GC mode, set up for one pass: how to collect, and how to measure storage.

The runner asks for these two things and never sees what is behind them. In docker mode
one Docker Engine client is opened per pass, before anything is deleted (an unreachable
engine stops the pass there), shared by the collector and ``du`` inside the container,
and closed at the end; command and none modes need nothing open.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from retention.core.policy import Policy
from retention.gc import Collector, ReadyCheck
from retention.gc.command import CommandCollector
from retention.gc.disk_usage import LocalStorage, StorageProbe


@dataclass(frozen=True)
class PassGc:
    """``collector(ready)`` builds the runner for this pass; ``storage`` is None when
    ``storage.path`` is not set (nothing to measure)."""

    collector: Callable[[ReadyCheck], Collector]
    storage: StorageProbe | None


@contextmanager
def for_pass(policy: Policy) -> Iterator[PassGc]:
    """The GC means of ``policy`` for the ``with`` block (a pass)."""
    gc, path = policy.gc, policy.storage.path
    if gc.mode != "docker":
        storage = LocalStorage(path) if path is not None else None
        yield PassGc(lambda ready: CommandCollector(gc, ready), storage)
        return
    from retention.gc.docker import ContainerStorage, DockerCollector, docker_client

    engine = docker_client(gc)
    try:
        in_container = ContainerStorage(engine, gc.container, str(path)) if path else None
        yield PassGc(lambda ready: DockerCollector(gc, ready, engine), in_container)
    finally:
        engine.close()
