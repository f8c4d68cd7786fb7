"""Moving a body from one socket to another without it passing through Python: splice(2).

Why it exists: the write gate relays blobs of many megabytes. Read into Python and written
out again, every byte is copied from the kernel into a fresh ``bytes``, sliced out by the
HTTP parser into another, and copied back into the kernel, with the page faults of those
fresh allocations; for a 1 MB blob that cost the gate about 40 % of the registry's own CPU.
Linux's splice moves the data from the upstream socket into a pipe and from the pipe into
the client's socket inside the kernel, so the gate's work per blob no longer grows with its
size (see the README's gate benchmark for the numbers).

Owns: moving exactly ``count`` bytes, at once where the sockets allow it, else waiting for
readiness on the running event loop; its pipe and file descriptors. At most a pipe's
capacity (``PIPE_BYTES``) is in flight, so memory stays flat whatever the size. Must not:
know HTTP, or touch the sockets' owners (the caller hands over sockets nobody else writes
to meanwhile, nor reads from once ``before_wait`` was called: until then the relay runs
without yielding to the event loop).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable
from contextlib import suppress

PIPE_BYTES = 1024 * 1024  # Linux's default pipe-max-size; a smaller pipe only means more calls
_SET_PIPE_SIZE = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def available() -> bool:
    """Whether this system can splice (Linux, Python 3.10 or later)."""
    return hasattr(os, "splice") and hasattr(os, "pipe2")


class Pipes:
    """Spare pipes: one emptied by a relay serves the next, without its three system calls
    (pipe2, the size, close) and the kernel's allocation of its slots. A pipe a relay left
    with bytes in it (it failed) is closed, never kept."""

    def __init__(self, keep: int = 8) -> None:
        self._spare: list[tuple[int, int]] = []
        self._keep = keep

    def take(self) -> tuple[int, int]:
        return self._spare.pop() if self._spare else _new_pipe()

    def give_back(self, pipe: tuple[int, int]) -> None:
        if len(self._spare) < self._keep:
            self._spare.append(pipe)
        else:
            _close(pipe)

    def close(self) -> None:
        while self._spare:
            _close(self._spare.pop())


def _new_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    with suppress(OSError):  # a lower pipe-max-size keeps the default 64 KiB
        fcntl.fcntl(write_end, _SET_PIPE_SIZE, PIPE_BYTES)
    return read_end, write_end


def _close(descriptors: tuple[int, ...]) -> None:
    for descriptor in descriptors:
        os.close(descriptor)


async def relay(
    source: int,
    target: int,
    count: int,
    pipes: Pipes | None = None,
    *,
    before_wait: Callable[[], None] | None = None,
    timeout_s: float | None = None,
) -> None:
    """Move exactly ``count`` bytes from socket ``source`` to socket ``target``.

    Raises ``ConnectionResetError`` if the source ends first, and the ``OSError`` of a
    target that went away. The bytes move at once as far as both sockets allow; only if
    they do not is ``before_wait`` called (the caller stops its own reading of ``source``)
    and readiness awaited, on duplicated descriptors: asyncio refuses to watch a descriptor
    its transports own, and a duplicate shares the socket but not that rule. Most bodies of
    a few MB are already in the source socket and fit the target's, so they need neither
    (system calls, loop wake-ups and the caller's pause saved). The pipe comes from
    ``pipes`` and goes back there when the relay emptied it. A source that sends nothing
    for ``timeout_s`` while the relay waits for it raises ``TimeoutError`` (an ``OSError``).
    """
    pipe = pipes.take() if pipes is not None else _new_pipe()
    emptied = False
    try:
        remaining, piped, _ = _move((source, target), pipe, count, 0)
        if remaining or piped:
            if before_wait is not None:
                before_wait()
            duplicates = (os.dup(source), os.dup(target))
            try:
                await _pump(duplicates, pipe, remaining, piped, timeout_s)
            finally:
                _close(duplicates)
        emptied = True
    finally:
        if emptied and pipes is not None:
            pipes.give_back(pipe)
        else:
            _close(pipe)


async def _pump(
    sockets: tuple[int, int],
    pipe: tuple[int, int],
    remaining: int,
    piped: int,
    timeout_s: float | None,
) -> None:
    """Wait for whichever side ``_move`` is blocked on and move on, until all is moved."""
    loop = asyncio.get_running_loop()
    while remaining or piped:
        remaining, piped, wait_for_target = _move(sockets, pipe, remaining, piped)
        if remaining or piped:
            if wait_for_target:
                await _ready(loop, sockets[1], writable=True)
            else:
                await _ready(loop, sockets[0], writable=False, timeout_s=timeout_s)


def _move(
    sockets: tuple[int, int], pipe: tuple[int, int], remaining: int, piped: int
) -> tuple[int, int, bool]:
    """Fill the pipe from the source and empty it into the target until one side blocks.

    Returns what is left to take from the source, what is left in the pipe, and whether the
    target is what blocked (else the source). The source counts as blocked only while the
    pipe is empty and the target only while it is not, so neither wait can wake up to a
    pipe that has no room or nothing to give.
    """
    source, target = sockets
    read_end, write_end = pipe
    while remaining or piped:
        taken = _splice(source, write_end, remaining) if remaining else None
        if taken == 0:
            raise ConnectionResetError(f"the source ended {remaining} bytes early")
        if taken:
            remaining -= taken
            piped += taken
        if piped:
            given = _splice(read_end, target, piped)
            if given is None:
                return remaining, piped, True
            if given == 0:  # cannot happen with bytes in the pipe; never spin on it
                raise ConnectionResetError("the pipe gave nothing")
            piped -= given
        elif taken is None:
            return remaining, piped, False
    return 0, 0, False


def _splice(source: int, target: int, count: int) -> int | None:
    """Bytes moved, 0 at the source's end, None when either side would block."""
    try:
        return os.splice(source, target, count, flags=_FLAGS)
    except BlockingIOError:
        return None


async def _ready(
    loop: asyncio.AbstractEventLoop,
    descriptor: int,
    *,
    writable: bool,
    timeout_s: float | None = None,
) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    def give_up() -> None:
        if not ready.done():
            ready.set_exception(TimeoutError(f"the source sent nothing for {timeout_s}s"))

    if writable:
        loop.add_writer(descriptor, wake)
    else:
        loop.add_reader(descriptor, wake)
    timer = loop.call_later(timeout_s, give_up) if timeout_s is not None else None
    try:
        await ready
    finally:
        if timer is not None:
            timer.cancel()
        if writable:
            loop.remove_writer(descriptor)
        else:
            loop.remove_reader(descriptor)
