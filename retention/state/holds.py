"""Restored tags the planner must keep: ``state_dir/holds.json``.

``retention restore`` adds a hold per tag it pushed back, lasting ``trash.hold_restored``;
``retention trash release`` removes them; expired ones are dropped on the next write. The
planner receives them as data (``planner.plan(..., holds=)``) and stays pure.

A file that cannot be read stops the pass (a HoldsError): without it a restored image
could be deleted again, which is exactly what a hold exists to prevent.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from retention.core.model import Hold
from retention.errors import HoldsError
from retention.state import atomic

HOLDS_NAME = "holds.json"


class HoldStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / HOLDS_NAME

    def load(self) -> list[Hold]:
        """Every hold on file, expired or not (the planner checks ``until``)."""
        try:
            raw: list[dict[str, Any]] = json.loads(self.path.read_text())
            return [_hold(item) for item in raw]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HoldsError(f"cannot read {self.path}: {exc.strerror}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise HoldsError(f"{self.path} is damaged ({exc}); fix or remove it") from exc

    def active(self, now: datetime) -> list[Hold]:
        return [h for h in self.load() if h.until > now]

    def add(self, holds: list[Hold], now: datetime) -> None:
        """Add (or renew) holds; one per repository and tag."""
        kept = {(h.repository, h.tag): h for h in self.active(now)}
        kept.update({(h.repository, h.tag): h for h in holds})
        self._write(list(kept.values()))

    def release(
        self,
        now: datetime,
        *,
        run_id: str | None = None,
        repository: str | None = None,
        tag: str | None = None,
    ) -> list[Hold]:
        """Remove the active holds matching every filter given; returns them."""
        active = self.active(now)

        def matches(hold: Hold) -> bool:
            wanted = ((run_id, hold.run_id), (repository, hold.repository), (tag, hold.tag))
            return all(want is None or want == have for want, have in wanted)

        released = [h for h in active if matches(h)]
        self._write([h for h in active if not matches(h)])
        return released

    def _write(self, holds: list[Hold]) -> None:
        data = [
            {**asdict(h), "restored_at": h.restored_at.isoformat(), "until": h.until.isoformat()}
            for h in sorted(holds, key=lambda h: (h.repository, h.tag))
        ]
        try:
            atomic.write_text(self.path, json.dumps(data, indent=2))
        except OSError as exc:
            raise HoldsError(f"cannot write {self.path}: {exc.strerror}") from exc


def _hold(item: dict[str, Any]) -> Hold:
    return Hold(
        repository=item["repository"],
        tag=item["tag"],
        run_id=item["run_id"],
        restored_at=datetime.fromisoformat(item["restored_at"]),
        until=datetime.fromisoformat(item["until"]),
    )
