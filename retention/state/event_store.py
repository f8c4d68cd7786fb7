"""Push and pull times from the registry's notification events, kept in ``state_dir``.

The registry API has no push or pull time, and the filesystem link mtime exists only on
that backend. Distribution's webhook events (received by ``retention serve``) carry both
for every backend; this module keeps what the planner needs from them and nothing more:

- per repository and tag: the last push, and the digest it pushed (a push time is only
  believed for the digest the tag still names when a pass scans);
- per repository and digest: the last push and the last pull, GET and HEAD apart. A pull
  by tag carries the digest it served, so a digest's row holds every pull of that image,
  by any tag or by digest. ``pull_events`` is applied when reading, so changing it applies
  to the history already recorded; a pull time per tag is not kept, since it would either
  repeat its digest's or describe an image the tag no longer names;
- when the first event was stored: pull history is complete only since then;
- the ids of recently stored events, to ignore one sent again.

Why it stays bounded: a row per tag and per digest that exists (a ``delete`` event removes
its rows), at most ``max_rows`` of each (the least recently active go first: digests
removed without an event, by ``garbage-collect --delete-untagged``, say), and the last
``max_ids`` event ids. That id window is enough because Distribution re-sends an event
only while delivering it failed, from the head of a per-endpoint FIFO queue, so a
duplicate arrives within a few envelopes of the original. And it need not be exact:
every update keeps the maximum time, and a delete removes only rows with nothing newer
than itself, so an event applied twice changes nothing.

Out of order: events from several replicas, or retried, arrive in any order. Times only
move forward (the maximum wins), a tag's digest changes only with a newer push, and a late
delete cannot remove a newer push or pull. A push or pull arriving after the delete that
ended it recreates a row the scan never asks for (it only asks for what exists).

Why SQLite in WAL mode with ``synchronous=NORMAL``: the receiver answers 200 only once
events are committed, or Distribution would not retry them; WAL lets a pass read while the
daemon writes, and the CLI's ``retention plan`` reads the same file (only the daemon
writes). A commit then survives the daemon crashing but not the machine losing power
before the next checkpoint. ``FULL`` would close that gap at an fsync per envelope:
measured 13.5 ms instead of 2.1 ms per envelope (p50, loaded 2-core machine), and
Distribution delivers one envelope at a time per endpoint, so that is ~75 events/s instead
of ~470 before the registry's in-memory queue starts to grow. A lost push time falls back
to the link mtime; a lost pull is one of many.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from retention.errors import EventStoreError

SCHEMA_VERSION = 1
# A registry of 100,000 tags has at most that many digests; ten times that stays under
# ~150 MB on disk and is pruned by least recent activity.
MAX_ROWS = 1_000_000
# Ids of the last 100,000 stored events (about 6 MB): duplicates arrive within a few.
MAX_IDS = 100_000
# How often (in stored envelopes) the row caps are enforced: counting rows is a scan.
PRUNE_EVERY = 1000
LOCK_WAIT_SECONDS = 5.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Action = Literal["push", "pull", "delete"]


@dataclass(frozen=True)
class RegistryEvent:
    """One manifest event as the receiver understood it; blob events never get here.

    ``method`` is the HTTP method of the request that caused it: a HEAD on a manifest is a
    ``pull`` in Distribution. A ``delete`` names a digest, a tag, or (v3) neither: the
    whole repository.
    """

    id: str
    at: datetime
    action: Action
    repository: str
    tag: str | None = None
    digest: str | None = None
    method: str = "GET"


@dataclass(frozen=True)
class DigestTimes:
    """The last push and the last pull (by GET, by HEAD) of one digest in one repository."""

    pushed: datetime | None = None
    pulled_by_get: datetime | None = None
    pulled_by_head: datetime | None = None

    def pulled(self, *, count_head: bool) -> datetime | None:
        """The last pull, counting HEADs only when the policy says they are pulls."""
        heads = self.pulled_by_head if count_head else None
        return _latest(self.pulled_by_get, heads)


@dataclass(frozen=True)
class TagPush:
    """A tag's last recorded push and the digest it pushed."""

    digest: str
    pushed: datetime


@dataclass(frozen=True)
class RepositoryTimes:
    """Everything stored for one repository."""

    tags: Mapping[str, TagPush]
    digests: Mapping[str, DigestTimes]


class EventStore:
    """``state_dir/events/events.sqlite3``; safe to share between threads of one process.

    One connection guarded by a lock: writes are a few rows each and must not interleave.
    Every method raises ``EventStoreError`` (never ``sqlite3.Error``), so the receiver can
    answer 503 (Distribution retries) and a pass can go on without event times.
    """

    def __init__(
        self, state_dir: Path, *, max_rows: int = MAX_ROWS, max_ids: int = MAX_IDS
    ) -> None:
        self.path = state_dir / "events" / "events.sqlite3"
        self._max_rows = max_rows
        self._max_ids = max_ids
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._since_prune = 0

    @classmethod
    def existing(cls, state_dir: Path) -> EventStore | None:
        """The store, if the daemon ever wrote one here; readers must not create it."""
        store = cls(state_dir)
        return store if store.path.exists() else None

    def record(self, events: Sequence[RegistryEvent]) -> int:
        """Store one envelope's events in one transaction; how many were not seen before."""
        with self._lock, self._errors("write"):
            connection = self._open()
            with connection:
                fresh = [e for e in events if self._first_time(connection, e.id)]
                for event in fresh:
                    _apply(connection, event)
                if fresh:
                    _start_history(connection, min(e.at for e in fresh))
                self._prune(connection, force=False)
            return len(fresh)

    def prune(self) -> None:
        """Enforce the caps now (they are otherwise checked every ``PRUNE_EVERY`` writes)."""
        with self._lock, self._errors("write"):
            connection = self._open()
            with connection:
                self._prune(connection, force=True)

    def history_since(self) -> datetime | None:
        """When the first stored event happened: pulls before it are unknown, not absent."""
        with self._lock, self._errors("read"):
            row = (
                self._open()
                .execute("SELECT value FROM meta WHERE key = 'history_since'")
                .fetchone()
            )
        return None if row is None else _time(row[0])

    def times(self, repository: str) -> RepositoryTimes:
        with self._lock, self._errors("read"):
            connection = self._open()
            tags = connection.execute(
                "SELECT tag, digest, pushed FROM tags WHERE repository = ?", (repository,)
            ).fetchall()
            digests = connection.execute(
                "SELECT digest, pushed, pulled_get, pulled_head FROM digests WHERE repository = ?",
                (repository,),
            ).fetchall()
        return RepositoryTimes(
            tags={tag: TagPush(digest, _time(pushed)) for tag, digest, pushed in tags},
            digests={
                digest: DigestTimes(_optional(pushed), _optional(get), _optional(head))
                for digest, pushed, get, head in digests
            },
        )

    def counts(self) -> tuple[int, int, int]:
        """Rows of tags, digests and remembered ids: for tests and the bounds they check."""
        with self._lock, self._errors("read"):
            connection = self._open()
            tags, digests, ids = (
                int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table in ("tags", "digests", "seen")
            )
        return tags, digests, ids

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- internals -------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = _connect(self.path)
        return self._connection

    def _first_time(self, connection: sqlite3.Connection, event_id: str) -> bool:
        cursor = connection.execute("INSERT OR IGNORE INTO seen (id) VALUES (?)", (event_id,))
        return cursor.rowcount == 1

    def _prune(self, connection: sqlite3.Connection, *, force: bool) -> None:
        """Drop the oldest ids beyond ``max_ids`` (cheap: by rowid), and, now and then, the
        least recently active rows beyond ``max_rows``."""
        connection.execute(
            "DELETE FROM seen WHERE rowid <= (SELECT max(rowid) FROM seen) - ?", (self._max_ids,)
        )
        self._since_prune += 1
        if not force and self._since_prune < PRUNE_EVERY:
            return
        self._since_prune = 0
        connection.execute(
            "DELETE FROM tags WHERE rowid IN (SELECT rowid FROM tags ORDER BY pushed "
            "LIMIT max(0, (SELECT count(*) FROM tags) - ?))",
            (self._max_rows,),
        )
        connection.execute(
            f"DELETE FROM digests WHERE rowid IN (SELECT rowid FROM digests ORDER BY {_ACTIVE} "
            "LIMIT max(0, (SELECT count(*) FROM digests) - ?))",
            (self._max_rows,),
        )

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """sqlite's errors as ``EventStoreError``; the connection is dropped after one."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            raise EventStoreError(f"cannot {doing} the event store {self.path}: {exc}") from exc


# The latest time a digest row knows of; multi-argument max() is NULL if any is NULL.
_ACTIVE = "max(coalesce(pushed, 0), coalesce(pulled_get, 0), coalesce(pulled_head, 0))"


def _apply(connection: sqlite3.Connection, event: RegistryEvent) -> None:
    at = _micros(event.at)
    if event.action == "delete":
        _delete(connection, event, at)
    elif event.action == "push":
        _push(connection, event, at)
    elif event.digest is not None:
        column = "pulled_head" if event.method.upper() == "HEAD" else "pulled_get"
        connection.execute(
            f"INSERT INTO digests (repository, digest, {column}) VALUES (?, ?, ?) "
            f"ON CONFLICT DO UPDATE SET {column} = max(coalesce({column}, 0), excluded.{column})",
            (event.repository, event.digest, at),
        )


def _push(connection: sqlite3.Connection, event: RegistryEvent, at: int) -> None:
    if event.digest is None:
        return
    connection.execute(
        "INSERT INTO digests (repository, digest, pushed) VALUES (?, ?, ?) "
        "ON CONFLICT DO UPDATE SET pushed = max(coalesce(pushed, 0), excluded.pushed)",
        (event.repository, event.digest, at),
    )
    if event.tag is not None:
        # The digest moves with the time: only a newer push says what the tag names now.
        connection.execute(
            "INSERT INTO tags (repository, tag, digest, pushed) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO UPDATE SET digest = excluded.digest, pushed = excluded.pushed "
            "WHERE excluded.pushed > pushed",
            (event.repository, event.tag, event.digest, at),
        )


def _delete(connection: sqlite3.Connection, event: RegistryEvent, at: int) -> None:
    """Remove what the delete removed, unless a newer event says it is back."""
    if event.digest is not None:
        # Deleting a manifest removes every tag on it (Distribution also sends a delete
        # per tag, but those may be lost with a registry restart).
        connection.execute(
            f"DELETE FROM digests WHERE repository = ? AND digest = ? AND {_ACTIVE} <= ?",
            (event.repository, event.digest, at),
        )
        connection.execute(
            "DELETE FROM tags WHERE repository = ? AND digest = ? AND pushed <= ?",
            (event.repository, event.digest, at),
        )
    elif event.tag is not None:
        connection.execute(
            "DELETE FROM tags WHERE repository = ? AND tag = ? AND pushed <= ?",
            (event.repository, event.tag, at),
        )
    else:
        connection.execute(
            f"DELETE FROM digests WHERE repository = ? AND {_ACTIVE} <= ?", (event.repository, at)
        )
        connection.execute(
            "DELETE FROM tags WHERE repository = ? AND pushed <= ?", (event.repository, at)
        )


def _start_history(connection: sqlite3.Connection, at: datetime) -> None:
    """Set once, by the first envelope stored: later, older events do not move it back,
    since the history before the receiver started is incomplete whatever trickles in."""
    connection.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('history_since', ?)", (_micros(at),)
    )


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=LOCK_WAIT_SECONDS, check_same_thread=False)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version == 0:
            _create_schema(connection)
        elif version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
    except BaseException:
        connection.close()
        raise
    return connection


def _create_schema(connection: sqlite3.Connection) -> None:
    """Created once; never dropped, because unlike a cache it cannot be fetched again."""
    connection.executescript(
        f"""
        BEGIN;
        CREATE TABLE IF NOT EXISTS tags (
            repository TEXT NOT NULL, tag TEXT NOT NULL,
            digest TEXT NOT NULL, pushed INTEGER NOT NULL,
            PRIMARY KEY (repository, tag)
        );
        CREATE TABLE IF NOT EXISTS digests (
            repository TEXT NOT NULL, digest TEXT NOT NULL,
            pushed INTEGER, pulled_get INTEGER, pulled_head INTEGER,
            PRIMARY KEY (repository, digest)
        );
        CREATE INDEX IF NOT EXISTS tags_digest ON tags (repository, digest);
        CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY);
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        PRAGMA user_version = {SCHEMA_VERSION};
        COMMIT;
        """
    )


def _micros(moment: datetime) -> int:
    """Microseconds since 1970 UTC: exact, ordered, and compared by SQLite as integers."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _time(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _optional(micros: int | None) -> datetime | None:
    return None if micros is None else _time(micros)


def _latest(*moments: datetime | None) -> datetime | None:
    return max((m for m in moments if m is not None), default=None)
