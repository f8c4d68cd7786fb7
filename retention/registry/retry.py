"""When to try a request again, and how long to wait: backoff with jitter, or Retry-After."""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime

from retention.clock import utc_now

BACKOFF_BASE_SECONDS = 0.1


BACKOFF_CAP_SECONDS = 5.0


RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def backoff_seconds(attempt: int, retry_after: str | None = None) -> float:
    """Exponential backoff with jitter, or the server's Retry-After; never above the cap.

    Jitter spreads the retries of many concurrent requests so they do not return as one
    burst to a registry that just told us it is overloaded.
    """
    requested = _retry_after_seconds(retry_after)
    if requested is not None:
        return min(BACKOFF_CAP_SECONDS, requested)
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)
    return random.uniform(ceiling / 2, ceiling)


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds, from either its delta-seconds or its HTTP-date form."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - utc_now()).total_seconds())
