"""A persistent map from manifest digest to the parsed, dated manifest, so a pass over an
unchanged registry needs only the tag listings and one HEAD per tag.

Why this is safe: a digest names its bytes, and everything kept here (media type, size,
blobs, children, subject, and ``created``, which comes from the config blob the bytes name,
or from the children the bytes name) is a function of those bytes. An entry can become
unused, never wrong. What the cache does not know is whether a digest still exists in a
given repository; the inventory confirms that on every pass (the HEAD of each tag, and a
HEAD of each child of an index served from here).

Why keyed by digest alone, not by repository too: the content is the same in every
repository, so a repository column would only store copies, and a digest moved or mounted
into another repository would be fetched again for nothing.

Why SQLite (the stdlib ``sqlite3``) rather than a JSON-lines file: lookups by key without
loading the whole file into memory, a transaction per pass so a crash never leaves half a
write, and file locking so the daemon and a manual ``retention plan`` can share one
``state_dir``. Pruning and "seen today" updates are one statement each instead of a rewrite.

It must never fail a pass: an unreadable, corrupt or locked cache is logged once and
ignored (a corrupt file is deleted and rebuilt); the pass then fetches from the registry as
if there were no cache. This module is an edge: the core never imports it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from retention.clock import Clock, utc_now
from retention.core.model import Blob, Manifest
from retention.logs import get_logger

# Bump when the entry format changes: a file of another version is dropped and rebuilt.
SCHEMA_VERSION = 1
# Pruning runs after this pass's hits are marked seen, so only digests no pass has used for
# this long go, however rarely passes run. An entry is 0.5-1 KB (a few layers), so the
# cap, ten times the tags of a large registry, bounds the file to 100-200 MB.
MAX_AGE = timedelta(days=30)
MAX_ENTRIES = 200_000
# Another pass (the daemon beside a manual plan) may be writing; wait this long, then skip.
LOCK_WAIT_SECONDS = 5.0
# Equal blobs are interned among this many: enough for the base layers of a batch of images
# to be one object each, while a pass that plans and drops repositories as it goes does not
# keep every config it ever decoded (one per image).
SHARED_BLOBS = 10_000
_EPOCH = date(1970, 1, 1)

log = get_logger(__name__)


class ManifestCache:
    """``state_dir/cache/manifests.sqlite3``: read during a pass, written once by ``save()``.

    Entries not seen for ``max_age`` are pruned, and the least recently seen beyond
    ``max_entries``, so the file stays proportional to what the registry holds.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        max_age: timedelta = MAX_AGE,
        max_entries: int = MAX_ENTRIES,
        clock: Clock = utc_now,
    ) -> None:
        self.path = state_dir / "cache" / "manifests.sqlite3"
        self._max_age_days = max(1, max_age.days)
        self._max_entries = max_entries
        self._clock = clock
        self._connection: sqlite3.Connection | None = None
        self._disabled = False
        self._complained = False
        self._rebuilt = False
        self._new: dict[str, Manifest] = {}
        self._hits: set[str] = set()
        # Equal blobs and media types decoded in one pass as one object each: a base layer
        # of 100,000 cached images is otherwise 100,000 Blobs and digest strings in memory.
        self._shared: dict[Blob, Blob] = {}

    def get(self, digest: str) -> Manifest | None:
        """The manifest stored under ``digest``, or None when unknown or unreadable."""
        row = self._query(digest)
        if len(self._shared) > SHARED_BLOBS:
            self._shared.clear()
        manifest = None if row is None else _decode(digest, row, self._shared)
        if manifest is not None:
            self._hits.add(digest)
        elif row is not None:
            self._complain("entry unreadable, fetching it again", digest=digest)
        return manifest

    def empty(self) -> bool:
        """True when no entry is stored (or the cache cannot be used): a cold scan.

        The scan then asks for whole manifests by tag instead of resolving tags first.
        """
        connection = self._open()
        if connection is None:
            return True
        try:
            row = connection.execute("SELECT 1 FROM manifests LIMIT 1").fetchone()
        except sqlite3.Error as exc:
            self._failed(exc)
            return True
        return row is None

    def put(self, manifest: Manifest) -> None:
        """Remember a manifest the registry served; written by the next ``save()``."""
        self._new[manifest.digest] = manifest

    def save(self) -> None:
        """Write new entries, mark hits as seen today, prune, and close; never raises.

        Also ends the pass: a cache that failed is tried again, and may warn again, next time.
        """
        new, hits = self._new, self._hits
        self._new, self._hits, self._shared = {}, set(), {}
        connection = self._open()
        try:
            if connection is not None:
                with connection:
                    self._write(connection, new, hits)
        except sqlite3.Error as exc:
            self._failed(exc)
        finally:
            self.close()
            self._disabled = self._complained = self._rebuilt = False

    def close(self) -> None:
        """Release the file; the next ``get`` opens it again."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # -- reading ---------------------------------------------------------------------------

    def _query(self, digest: str) -> str | None:
        connection = self._open()
        if connection is None:
            return None
        try:
            row = connection.execute(
                "SELECT entry FROM manifests WHERE digest = ?", (digest,)
            ).fetchone()
        except sqlite3.Error as exc:
            self._failed(exc)
            return None
        return None if row is None else str(row[0])

    def _open(self) -> sqlite3.Connection | None:
        """The connection, opened (and the schema made) on first use; None when disabled.

        Ends after two attempts at most: a failure either disables the cache or, the first
        time a file is corrupt, removes it so the second attempt starts an empty one.
        """
        while self._connection is None and not self._disabled:
            try:
                self._connection = _connect(self.path)
            except (OSError, sqlite3.Error) as exc:
                self._failed(exc)
        return self._connection

    # -- writing ---------------------------------------------------------------------------

    def _write(
        self, connection: sqlite3.Connection, new: dict[str, Manifest], hits: set[str]
    ) -> None:
        today = self._today()
        connection.executemany(
            "INSERT OR REPLACE INTO manifests (digest, entry, seen) VALUES (?, ?, ?)",
            ((digest, _encode(m), today) for digest, m in new.items()),
        )
        connection.executemany(
            "UPDATE manifests SET seen = ? WHERE digest = ? AND seen < ?",
            ((today, digest, today) for digest in hits),
        )
        self._prune(connection, today)

    def _prune(self, connection: sqlite3.Connection, today: int) -> None:
        """Drop entries unseen for ``max_age``, then the stalest beyond ``max_entries``."""
        connection.execute("DELETE FROM manifests WHERE seen < ?", (today - self._max_age_days,))
        connection.execute(
            "DELETE FROM manifests WHERE digest IN (SELECT digest FROM manifests "
            "ORDER BY seen, digest LIMIT max(0, (SELECT count(*) FROM manifests) - ?))",
            (self._max_entries,),
        )

    def _today(self) -> int:
        """Days since 1970: "seen" needs no finer grain, and coarse means fewer writes."""
        return (self._clock().astimezone(UTC).date() - _EPOCH).days

    # -- failures --------------------------------------------------------------------------

    def _failed(self, exc: Exception) -> None:
        """Stop using a cache we cannot use; replace one that is corrupt, once per pass.

        ``OperationalError`` (locked, read-only, no such directory) and ``OSError`` say the
        file may be fine but is not ours to use now: it is left alone for this pass. Any
        other ``DatabaseError`` ("file is not a database", "malformed") means its bytes are
        bad: the file is removed, and the next use starts an empty one that this pass fills.
        """
        self.close()
        corrupt = isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, sqlite3.OperationalError
        )
        rebuild = corrupt and not self._rebuilt
        if rebuild:
            _remove(self.path)
            self._rebuilt = True
        else:
            self._disabled = True
        action = "rebuilt" if rebuild else "not used this pass"
        self._complain(f"manifest cache {action}", error=f"{type(exc).__name__}: {exc}")

    def _complain(self, event: str, **fields: Any) -> None:
        """Warn once per pass: a cache problem costs speed, never correctness."""
        if not self._complained:
            self._complained = True
            log.warning(event, path=str(self.path), **fields)


def _connect(path: Path) -> sqlite3.Connection:
    """Open the file, (re)creating the table when it is missing or of another version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=LOCK_WAIT_SECONDS)
    try:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version != SCHEMA_VERSION:
            _create_schema(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _create_schema(connection: sqlite3.Connection) -> None:
    connection.executescript(
        f"""
        BEGIN;
        DROP TABLE IF EXISTS manifests;
        CREATE TABLE manifests (
            digest TEXT PRIMARY KEY,
            entry TEXT NOT NULL,
            seen INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX manifests_seen ON manifests (seen);
        PRAGMA user_version = {SCHEMA_VERSION};
        COMMIT;
        """
    )


def _remove(path: Path) -> None:
    """Delete the database and any journal SQLite left beside it; ignore what is missing."""
    for candidate in (path, path.with_name(path.name + "-journal")):
        with contextlib.suppress(OSError):  # then the next attempt fails and disables it
            candidate.unlink(missing_ok=True)


def _encode(manifest: Manifest) -> str:
    """Compact JSON of everything but the digest, which is the key."""
    return json.dumps(
        {
            "media_type": manifest.media_type,
            "size": manifest.size,
            "created": None if manifest.created is None else manifest.created.isoformat(),
            "blobs": [[blob.digest, blob.size] for blob in manifest.blobs],
            "children": list(manifest.children),
            "subject": manifest.subject,
        },
        separators=(",", ":"),
    )


def _decode(digest: str, entry: str, shared: dict[Blob, Blob]) -> Manifest | None:
    """The manifest back from its entry; None for anything not exactly as ``_encode`` wrote."""
    try:
        fields = json.loads(entry)
        created = fields["created"]
        blobs = (Blob(digest=d, size=s) for d, s in fields["blobs"])
        media_type = fields["media_type"]
        manifest = Manifest(
            digest=digest,
            media_type=sys.intern(media_type) if isinstance(media_type, str) else media_type,
            size=fields["size"],
            created=None if created is None else datetime.fromisoformat(created),
            blobs=tuple(shared.setdefault(blob, blob) for blob in blobs),
            children=tuple(fields["children"]),
            subject=fields["subject"],
        )
    except (ValueError, TypeError, KeyError):
        return None
    return manifest if _well_typed(manifest) else None


def _well_typed(manifest: Manifest) -> bool:
    """JSON can hold anything; the planner must only ever see what the parser would give."""
    return (
        isinstance(manifest.media_type, str)
        and type(manifest.size) is int
        and (manifest.created is None or manifest.created.tzinfo is not None)
        and all(isinstance(b.digest, str) and type(b.size) is int for b in manifest.blobs)
        and all(isinstance(child, str) for child in manifest.children)
        and (manifest.subject is None or isinstance(manifest.subject, str))
    )
