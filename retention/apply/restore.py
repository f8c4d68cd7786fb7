"""Push deleted manifests back from the trash: ``retention restore <run-id>``.

Works until garbage collection removes the blobs the manifests reference. A bin marked
collected is refused unless forced, because a registry with the ``inmemory`` blob cache
may accept a manifest whose layers are already gone and serve a broken image.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from retention.apply.audit import AuditWriter
from retention.apply.executor import bytes_estimate
from retention.apply.trash import RestoredEntry, Trash, TrashBin, TrashEntry, restorable
from retention.core.model import Hold
from retention.errors import AuditError, RegistryError, TrashError
from retention.logs import get_logger
from retention.registry import FetchedManifest, RegistryClient
from retention.state.holds import HoldStore

log = get_logger(__name__)


@dataclass(frozen=True)
class Restored:
    repository: str
    digest: str
    references: tuple[str, ...]
    error: str | None = None


def select(
    trash: Trash,
    run_id: str,
    *,
    repository: str | None = None,
    tag: str | None = None,
    force: bool = False,
) -> tuple[TrashBin, list[TrashEntry]]:
    """The bin and the entries to push, or a TrashError saying why not."""
    contents = trash.get(run_id)
    if contents.collected and not force:
        raise TrashError(
            f"run {run_id} was garbage-collected after its deletions: its blobs may be gone "
            "(use --force to try anyway)"
        )
    entries = restorable(contents, repository, tag)
    if not entries:
        raise TrashError(f"nothing in run {run_id} matches the repository/tag given")
    return contents, entries


async def restore(
    client: RegistryClient,
    trash: Trash,
    run_id: str,
    entries: list[TrashEntry],
    audit: AuditWriter | None = None,
) -> list[Restored]:
    """Push each manifest under each of its tags (by digest when it had none), in order.

    With ``audit``, each manifest the registry took back is appended to the audit log.
    """
    results = []
    for entry in entries:
        restored = await _push(client, trash, run_id, entry)
        if audit is not None and restored.error is None:
            _audit(audit, trash, run_id, entry)
        results.append(restored)
    return results


def _audit(audit: AuditWriter, trash: Trash, run_id: str, entry: TrashEntry) -> None:
    """A restore that cannot be audited is logged, not undone: the image is back."""
    body = trash.manifest_bytes(run_id, entry.digest)
    size = bytes_estimate(FetchedManifest(entry.digest, entry.media_type, body))
    try:
        audit.restored(entry.repository, entry.digest, entry.tags, size)
    except AuditError as exc:
        log.error("audit log not written", repository=entry.repository, error=str(exc))


async def _push(client: RegistryClient, trash: Trash, run_id: str, entry: TrashEntry) -> Restored:
    references = entry.tags or (entry.digest,)
    try:
        body = trash.manifest_bytes(run_id, entry.digest)
        for reference in references:
            stored = await client.put_manifest(entry.repository, reference, body, entry.media_type)
            if stored != entry.digest:
                raise TrashError(f"the registry stored {stored}, not {entry.digest}")
    except (RegistryError, TrashError) as exc:
        log.error(
            "restore failed", repository=entry.repository, digest=entry.digest, error=str(exc)
        )
        return Restored(entry.repository, entry.digest, references, error=str(exc))
    log.info(
        "manifest restored", repository=entry.repository, digest=entry.digest, tags=list(references)
    )
    return Restored(entry.repository, entry.digest, references)


def record(
    trash: Trash,
    holds: HoldStore,
    run_id: str,
    results: list[Restored],
    now: datetime,
    hold_for: timedelta,
) -> list[Hold]:
    """Note the restore in the bin, and hold every restored tag so the next pass keeps it.

    Returns the holds added (none when ``hold_for`` is zero).
    """
    done = [r for r in results if r.error is None]
    stamp = now.isoformat()
    trash.mark_restored(
        run_id, [RestoredEntry(r.repository, r.digest, r.references, stamp) for r in done]
    )
    if not hold_for:
        return []
    added = [
        Hold(r.repository, reference, run_id, now, now + hold_for)
        for r in done
        for reference in r.references
        if not reference.startswith("sha256:")
    ]
    holds.add(added, now)
    return added
