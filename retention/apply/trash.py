"""The way back: every deleted manifest's bytes and tags, kept in ``state_dir/trash``.

Deleting a manifest removes only a small JSON document and its tag links; the layers stay
on disk until garbage collection. So until GC runs, pushing the saved bytes back under
their tags restores the image exactly (same digest). Each pass that deletes gets one bin,
``trash/<run-id>/``, with an ``index.json`` and the raw manifests. A bin is marked
collected once GC has run after it: from then on its blobs may be gone and it cannot be
restored. Bins older than ``trash.keep`` are pruned.

A bin says only what the registry confirmed. Its index is written twice per pass, not
once per manifest: before the first DELETE, every manifest the pass may delete is listed
as ``unconfirmed`` (write-ahead, so a pass killed outright still leaves the bytes and a
list of what it may have taken); at the end the index is rewritten with the deletions the
registry answered 202 to as ``entries``, and as ``unconfirmed`` only the DELETEs that were
sent but never answered (an interrupted pass). A pass that deleted nothing leaves no bin.
Restore pushes back only confirmed entries: an unconfirmed manifest may still be there,
its tags perhaps moved on since.
"""

from __future__ import annotations

import json
import secrets
import shutil
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from retention.errors import TrashError
from retention.state import atomic

INDEX = "index.json"


@dataclass(frozen=True)
class TrashEntry:
    repository: str
    digest: str
    media_type: str
    tags: tuple[str, ...]
    kind: str
    parents: tuple[str, ...] = ()


@dataclass(frozen=True)
class RestoredEntry:
    """A manifest ``retention restore`` pushed back from this bin, and when (ISO 8601)."""

    repository: str
    digest: str
    references: tuple[str, ...]
    at: str


@dataclass(frozen=True)
class TrashBin:
    run_id: str
    registry: str
    deleted_at: datetime
    collected: bool = False
    entries: tuple[TrashEntry, ...] = field(default_factory=tuple)
    unconfirmed: tuple[TrashEntry, ...] = field(default_factory=tuple)
    """Sent but never answered (or, in a write-ahead index, not yet sent): may be deleted."""
    restored: tuple[RestoredEntry, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class DamagedBin:
    """A directory in the trash whose index cannot be read: reported, never skipped."""

    run_id: str
    problem: str


def new_run_id(now: datetime) -> str:
    """Sortable and unique: the UTC time of the pass and a little randomness."""
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


class Trash:
    """All bins under ``state_dir/trash``; one instance per pass or command."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "trash"

    def open_bin(self, run_id: str, registry: str, now: datetime) -> BinWriter:
        return BinWriter(self.root / run_id, TrashBin(run_id, registry, now))

    def bins(self) -> list[TrashBin]:
        """Every readable bin, oldest first (``damaged()`` lists the others)."""
        return [b for b in self._read_all() if isinstance(b, TrashBin)]

    def damaged(self) -> list[DamagedBin]:
        """Bins whose index is missing or unreadable, each with the reason."""
        return [b for b in self._read_all() if isinstance(b, DamagedBin)]

    def _read_all(self) -> list[TrashBin | DamagedBin]:
        if not self.root.is_dir():
            return []
        found: list[TrashBin | DamagedBin] = []
        for path in sorted(p for p in self.root.iterdir() if _safe_name(p.name)):
            try:
                found.append(_load(path))
            except TrashError as exc:
                found.append(DamagedBin(path.name, str(exc)))
        return found

    def get(self, run_id: str) -> TrashBin:
        if not _safe_name(run_id) or not (self.root / run_id).is_dir():
            raise TrashError(f"no trash for run {run_id!r} in {self.root}")
        return _load(self.root / run_id)

    def manifest_bytes(self, run_id: str, digest: str) -> bytes:
        try:
            return (self.root / run_id / "manifests" / _file_name(digest)).read_bytes()
        except OSError as exc:
            raise TrashError(f"trash of run {run_id} lacks {digest}: {exc.strerror}") from exc

    def uncollected(self) -> list[TrashBin]:
        return [b for b in self.bins() if not b.collected and (b.entries or b.unconfirmed)]

    def mark_collected(self, run_ids: list[str]) -> list[str]:
        """Mark each bin collected; returns one line per bin that could not be marked.

        Called after a GC that already happened: a bin that cannot be marked must not cost
        the pass its report, so the failures are returned, not raised.
        """
        problems = []
        for run_id in run_ids:
            try:
                _write_index(self.root / run_id, replace(self.get(run_id), collected=True))
            except TrashError as exc:
                problems.append(f"trash bin {run_id} not marked collected: {exc}")
        return problems

    def mark_restored(self, run_id: str, restored: list[RestoredEntry]) -> None:
        """Record what was pushed back, so ``trash list`` can show it."""
        if restored:
            contents = self.get(run_id)
            everything = (*contents.restored, *restored)
            _write_index(self.root / run_id, replace(contents, restored=everything))

    def prune(self, keep: timedelta, now: datetime) -> list[str]:
        """Remove bins older than ``keep``; returns their run ids."""
        pruned = [b.run_id for b in self.bins() if now - b.deleted_at > keep]
        for run_id in pruned:
            shutil.rmtree(self.root / run_id, ignore_errors=True)
        return pruned


class BinWriter:
    """One pass's bin: manifests staged before deleting, deletions confirmed one by one.

    ``stage`` writes a manifest's bytes (one plain file write each, no index);
    ``write_ahead`` writes the index once before the first DELETE; ``sending`` and
    ``settle`` bracket each DELETE; ``commit`` writes the confirmed state once at the end
    (or removes the bin when nothing was deleted or left in doubt).
    """

    def __init__(self, path: Path, contents: TrashBin) -> None:
        self.path = path
        self.contents = contents
        self._staged: dict[tuple[str, str], TrashEntry] = {}
        self._in_flight: set[tuple[str, str]] = set()
        self._confirmed: list[TrashEntry] = []

    @property
    def confirmed(self) -> tuple[TrashEntry, ...]:
        return tuple(self._confirmed)

    def stage(self, entry: TrashEntry, body: bytes) -> None:
        try:
            (self.path / "manifests").mkdir(parents=True, exist_ok=True)
            (self.path / "manifests" / _file_name(entry.digest)).write_bytes(body)
        except OSError as exc:
            raise TrashError(f"cannot save {entry.digest} to {self.path}: {exc.strerror}") from exc
        self._staged[(entry.repository, entry.digest)] = entry

    def is_staged(self, repository: str, digest: str) -> bool:
        return (repository, digest) in self._staged

    def write_ahead(self) -> None:
        """Everything staged, as unconfirmed: what a pass killed from now on may have taken."""
        if self._staged:
            staged = tuple(self._staged.values())
            _write_index(self.path, replace(self.contents, unconfirmed=staged))

    def sending(self, repository: str, digest: str) -> None:
        self._in_flight.add((repository, digest))

    def settle(self, repository: str, digest: str, *, deleted: bool) -> None:
        """The registry answered: 202 (``deleted``) or anything that deleted nothing."""
        key = (repository, digest)
        self._in_flight.discard(key)
        if deleted and key in self._staged:
            self._confirmed.append(self._staged[key])

    def settle_in_flight(self, *, deleted: bool) -> None:
        """Settle every DELETE still in flight at once, when their outcome is known anyway."""
        for repository, digest in sorted(self._in_flight):
            self.settle(repository, digest, deleted=deleted)

    def commit(self) -> None:
        """The confirmed state, written once; no bin at all when it would be empty."""
        doubtful = tuple(self._staged[k] for k in sorted(self._in_flight) if k in self._staged)
        self.contents = replace(self.contents, entries=self.confirmed, unconfirmed=doubtful)
        if self.contents.entries or self.contents.unconfirmed:
            _write_index(self.path, self.contents)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def _write_index(path: Path, contents: TrashBin) -> None:
    data = asdict(contents)
    data["deleted_at"] = contents.deleted_at.isoformat()
    try:
        atomic.write_text(path / INDEX, json.dumps(data, indent=2))
    except OSError as exc:
        raise TrashError(f"cannot write {path / INDEX}: {exc.strerror}") from exc


def _load(path: Path) -> TrashBin:
    """Read a bin's index; a missing or malformed one is a TrashError saying which."""
    try:
        data: dict[str, Any] = json.loads((path / INDEX).read_text())
        return TrashBin(
            run_id=data["run_id"],
            registry=data["registry"],
            deleted_at=datetime.fromisoformat(data["deleted_at"]),
            collected=bool(data["collected"]),
            entries=_entries(data["entries"]),
            unconfirmed=_entries(data.get("unconfirmed", ())),
            restored=tuple(
                RestoredEntry(r["repository"], r["digest"], tuple(r["references"]), r["at"])
                for r in data.get("restored", ())
            ),
        )
    except FileNotFoundError:
        raise TrashError(f"{path / INDEX} is missing") from None
    except OSError as exc:
        raise TrashError(f"cannot read {path / INDEX}: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise TrashError(f"{path / INDEX} is damaged: {type(exc).__name__}: {exc}") from exc


def _entries(raw: Any) -> tuple[TrashEntry, ...]:
    return tuple(
        TrashEntry(
            repository=e["repository"],
            digest=e["digest"],
            media_type=e["media_type"],
            tags=tuple(e["tags"]),
            kind=e["kind"],
            parents=tuple(e.get("parents", ())),
        )
        for e in raw
    )


def _file_name(digest: str) -> str:
    return digest.replace(":", "-")


def _safe_name(run_id: str) -> bool:
    return bool(run_id) and "/" not in run_id and not run_id.startswith(".")


def restorable(
    contents: TrashBin, repository: str | None = None, tag: str | None = None
) -> list[TrashEntry]:
    """What to push back, in an order the registry accepts: children before their index.

    With a tag, that tag's manifest plus what hangs off it (index children, and artifacts
    whose subject it is); with a repository, only that repository.
    """
    entries = [e for e in contents.entries if repository in (None, e.repository)]
    if tag is not None:
        entries = _with_dependents([e for e in entries if tag in e.tags], entries)
    order = {"child": 0, "tagged": 1, "artifact": 2}
    return sorted(entries, key=lambda e: order.get(e.kind, 1))


def _with_dependents(chosen: list[TrashEntry], pool: list[TrashEntry]) -> list[TrashEntry]:
    wanted = {(e.repository, e.digest) for e in chosen}
    grew = True
    while grew:
        grew = False
        for entry in pool:
            key = (entry.repository, entry.digest)
            linked = any((entry.repository, p) in wanted for p in entry.parents)
            if key not in wanted and linked:
                wanted.add(key)
                grew = True
    return [e for e in pool if (e.repository, e.digest) in wanted]
