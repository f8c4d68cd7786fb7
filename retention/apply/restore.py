"""Push deleted manifests back from the trash: ``retention restore <run-id>``.

Works until garbage collection removes the blobs the manifests reference. A bin marked
collected is refused unless forced, because a registry with the ``inmemory`` blob cache
may accept a manifest whose layers are already gone and serve a broken image.
"""

from __future__ import annotations

from dataclasses import dataclass

from retention.apply.audit import AuditWriter
from retention.apply.executor import bytes_estimate
from retention.apply.trash import Trash, TrashBin, TrashEntry, restorable
from retention.errors import AuditError, RegistryError, TrashError
from retention.logs import get_logger
from retention.registry import FetchedManifest, RegistryClient

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
