"""The audit trail: ``state_dir/audit.jsonl``, one JSON line per deleted or restored manifest.

Owns the file: appending a batch durably (one write, flush and fsync), rotating by size
(``audit.jsonl.1`` is the newest old file, ``.<keep>`` the oldest) and reading every file
back with filters. It decides nothing about what is recorded: the apply layer writes only
what the registry confirmed. Logs go to a stream that is rotated or lost; this file is for
the question "who deleted my image, when and why" weeks later.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from retention.errors import AuditError

FILE_NAME = "audit.jsonl"
AuditAction = Literal["deleted", "restored"]


@dataclass(frozen=True)
class AuditRecord:
    """One manifest that left or came back; ``bytes_estimate`` is an upper bound.

    The estimate is the manifest and every blob it names: blobs shared with kept images are
    not freed, so the sum over records can exceed what GC frees (the report measures that).
    """

    time: datetime
    action: AuditAction
    run_id: str
    registry: str
    repository: str
    digest: str
    tags: tuple[str, ...] = ()
    rule: str | None = None
    reason: str = ""
    bytes_estimate: int | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["time"] = self.time.astimezone(UTC).isoformat().replace("+00:00", "Z")
        data["tags"] = list(self.tags)
        return json.dumps(data, sort_keys=False)

    @classmethod
    def from_json(cls, line: str) -> AuditRecord:
        """Raises ValueError (or KeyError, TypeError) for a line that is not a record."""
        data: dict[str, Any] = json.loads(line)
        moment = datetime.fromisoformat(str(data["time"]).replace("Z", "+00:00"))
        return cls(
            time=moment if moment.tzinfo else moment.replace(tzinfo=UTC),
            action=_action(data["action"]),
            run_id=str(data["run_id"]),
            registry=str(data["registry"]),
            repository=str(data["repository"]),
            digest=str(data["digest"]),
            tags=tuple(str(t) for t in data.get("tags") or ()),
            rule=data.get("rule"),
            reason=str(data.get("reason", "")),
            bytes_estimate=data.get("bytes_estimate"),
        )


def _action(value: object) -> AuditAction:
    if value == "deleted":
        return "deleted"
    if value == "restored":
        return "restored"
    raise ValueError(f"unknown action {value!r}")


@dataclass(frozen=True)
class AuditQuery:
    """Which records ``retention audit`` shows; every given field must match."""

    repository: str | None = None
    tag: str | None = None
    digest: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: AuditRecord) -> bool:
        return (
            self.repository in (None, record.repository)
            and (self.tag is None or self.tag in record.tags)
            and (self.digest is None or record.digest.startswith(self.digest))
            and (self.since is None or record.time >= self.since)
            and (self.until is None or record.time < self.until)
        )


class AuditLog:
    """``audit.jsonl`` and its rotated files in one directory."""

    def __init__(self, directory: Path, max_bytes: int = 10 << 20, keep: int = 5) -> None:
        self.path = directory / FILE_NAME
        self.max_bytes = max_bytes
        self.keep = keep

    def append(self, records: Sequence[AuditRecord]) -> None:
        """Write a batch with one ``write`` and fsync it: on disk before the call returns."""
        if not records:
            return
        data = "".join(r.to_json() + "\n" for r in records).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rotate_for(len(data))
            descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(descriptor, _after_last_line(descriptor) + data)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except OSError as exc:
            raise AuditError(f"cannot append to {self.path}: {exc.strerror or exc}") from exc

    def _rotate_for(self, incoming: int) -> None:
        """Shift ``.N`` to ``.N+1`` (dropping ``.keep``) when the batch would overflow."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0 or size + incoming <= self.max_bytes:
            return
        self._rotated(self.keep).unlink(missing_ok=True)
        for number in range(self.keep - 1, 0, -1):
            older = self._rotated(number)
            if older.exists():
                older.rename(self._rotated(number + 1))
        self.path.rename(self._rotated(1))

    def _rotated(self, number: int) -> Path:
        return self.path.with_name(f"{FILE_NAME}.{number}")

    def files(self) -> list[Path]:
        """Every file that exists, oldest first, so records come out in time order."""
        numbered = sorted(
            (p for p in self.path.parent.glob(f"{FILE_NAME}.*") if p.suffix[1:].isdigit()),
            key=lambda p: -int(p.suffix[1:]),
        )
        return [*numbered, self.path] if self.path.exists() else numbered

    def read(self, query: AuditQuery = AuditQuery()) -> Iterator[AuditRecord]:
        """Matching records, oldest first; a damaged line (a crash mid-write) is skipped."""
        for path in self.files():
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError as exc:
                raise AuditError(f"cannot read {path}: {exc.strerror or exc}") from exc
            for line in lines:
                record = _parsed(line)
                if record is not None and query.matches(record):
                    yield record


def _after_last_line(descriptor: int) -> bytes:
    """A newline when a crash left a cut line at the end, so the next record stays whole."""
    size = os.fstat(descriptor).st_size
    if size == 0:
        return b""
    return b"" if os.pread(descriptor, 1, size - 1) == b"\n" else b"\n"


def _parsed(line: str) -> AuditRecord | None:
    if not line.strip():
        return None
    try:
        return AuditRecord.from_json(line)
    except (ValueError, KeyError, TypeError):
        return None
