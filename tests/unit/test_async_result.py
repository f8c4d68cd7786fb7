"""The CLI's one way of running async work (``cli._run``)."""

from __future__ import annotations

import signal
import threading

from retention import cli


class _Big:
    """A result whose repr is counted: a pass's plan, whose repr is megabytes."""

    def __init__(self) -> None:
        self.reprs = 0

    def __repr__(self) -> str:
        self.reprs += 1
        return "big"


async def _returns(value: _Big) -> _Big:
    return value


def test_running_a_pass_never_builds_the_repr_of_its_result() -> None:
    """asyncio.run on 3.11 reprs its main task (and so its result) when it restores SIGINT,
    but only in the main thread with Python's default handler in place: ensured here."""
    assert threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    result = _Big()
    try:
        returned = cli._run(_returns(result))
    finally:
        signal.signal(signal.SIGINT, previous)

    assert returned is result
    assert result.reprs == 0
