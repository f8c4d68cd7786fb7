"""When each manifest was first seen untagged: ``state_dir/untagged-since.json``.

The storage keeps no time for "this manifest lost its last tag", and the manifest's push
time is earlier than that, so using it would delete an image that was tagged until
yesterday. Each pass that lists untagged manifests records the ones it sees for the first
time with its own clock, keeps the first time of those still untagged, and forgets the
ones tagged again or gone (a manifest untagged again later starts from zero).

Only the repositories a pass scanned are touched (a ``--repository`` pass leaves the rest).
A file that cannot be read is logged and started afresh: every age restarts at zero, which
delays deletions and never hastens one. Written atomically (``state/atomic.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

from retention.logs import get_logger
from retention.state import atomic

UNTAGGED_SINCE_NAME = "untagged-since.json"
log = get_logger(__name__)

Seen = dict[str, dict[str, datetime]]
"""repository -> digest -> first seen untagged."""


class UntaggedSince:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / UNTAGGED_SINCE_NAME

    def load(self) -> Seen:
        """What earlier passes recorded; empty when there is no file or it is damaged."""
        try:
            raw = json.loads(self.path.read_text())
            return {
                str(repository): {str(d): _parse(t) for d, t in digests.items()}
                for repository, digests in raw.items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.warning("untagged times restart", path=str(self.path), error=str(exc))
            return {}

    def record(self, untagged: Mapping[str, Iterable[str]], now: datetime) -> Seen:
        """Merge this pass's untagged digests per scanned repository; returns the times.

        A digest seen before keeps its first time; a new one gets ``now``; a digest no
        longer untagged in a scanned repository is forgotten.
        """
        known = self.load()
        for repository, digests in untagged.items():
            before = known.get(repository, {})
            current = {d: before.get(d, now) for d in sorted(set(digests))}
            if current:
                known[repository] = current
            else:
                known.pop(repository, None)
        try:
            self._write(known)
        except OSError as exc:  # the next pass starts these ages afresh: later, never sooner
            log.error("untagged times not saved", path=str(self.path), error=str(exc))
        return known

    def _write(self, seen: Seen) -> None:
        data = {
            repository: {d: t.isoformat() for d, t in sorted(digests.items())}
            for repository, digests in sorted(seen.items())
        }
        atomic.write_text(self.path, json.dumps(data, indent=1) + "\n")


def _parse(text: object) -> datetime:
    moment = datetime.fromisoformat(str(text))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment
