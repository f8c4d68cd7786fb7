"""The daemon's reports on disk: ``state_dir/reports``, one JSON file per pass.

Written atomically and pruned to ``reports.keep``, so the last reports (and ``/report``
and the last-success metric) survive restarts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retention.core.model import OUTCOMES, PassOutcome
from retention.logs import get_logger
from retention.state import atomic

log = get_logger(__name__)

_REPORT_NAME = re.compile(r"(\d{8}T\d{6}\.\d{3}Z)-(success|failure|dry_run)\.json")
_STAMP = "%Y%m%dT%H%M%S.%fZ"


@dataclass(frozen=True)
class StoredReport:
    path: Path
    finished_at: datetime
    outcome: PassOutcome


class ReportStore:
    """``state_dir/reports/<UTC time>-<outcome>.json``: one per pass, the newest ``keep`` kept.

    Written atomically (a temporary file renamed into place) so a reader, or a restart,
    never sees half a report. Names sort by time, so no index file is needed.
    """

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep

    def write(self, report: str | Iterable[str], outcome: PassOutcome, at: datetime) -> Path:
        """``report`` is the JSON text (``render.encode_json``), or its pieces
        (``render.json_pieces``: a large pass's report is never whole in memory)."""
        moment = at.astimezone(UTC)
        stamp = moment.strftime("%Y%m%dT%H%M%S.") + f"{moment.microsecond // 1000:03d}Z"
        path = self.directory / f"{stamp}-{outcome}.json"
        atomic.write_text(path, report)
        return path

    def prune(self) -> None:
        for stored in self.stored()[: -self.keep]:
            stored.path.unlink(missing_ok=True)

    def stored(self) -> list[StoredReport]:
        """Every report, oldest first; other files in the directory are left alone."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.iterdir()):
            match = _REPORT_NAME.fullmatch(path.name)
            if match:
                moment = datetime.strptime(match.group(1), _STAMP).replace(tzinfo=UTC)
                outcome = next(o for o in OUTCOMES if o == match.group(2))
                found.append(StoredReport(path, moment, outcome))
        return found

    def latest(self) -> tuple[StoredReport, dict[str, Any]] | None:
        """The newest report that can be read; a damaged one is logged and skipped."""
        for stored in reversed(self.stored()):
            try:
                document = json.loads(stored.path.read_text())
            except (OSError, ValueError) as exc:
                log.warning("report not readable", path=str(stored.path), error=str(exc))
                continue
            if isinstance(document, dict):
                return stored, document
        return None

    def last_success(self) -> datetime | None:
        """The newest pass that deleted without failure; a dry run deleted nothing."""
        return next(
            (s.finished_at for s in reversed(self.stored()) if s.outcome == "success"), None
        )
