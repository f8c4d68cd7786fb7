"""The one reading of the wall clock: every "now" in retention is UTC and comes from here.

The core never reads it: the planner and the schedule take ``now`` as an argument, so the
same inputs give the same plan. The edges and the shell take a ``Clock`` (defaulting to
``utc_now``) so tests can pin time without patching modules.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)
