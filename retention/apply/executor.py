"""Apply a plan: ``DELETE /v2/<name>/manifests/<digest>`` for what it lists, and nothing else.

Deletes only. Before touching a repository it looks again at every tag there, because a
deletion by digest removes every tag on that digest: a tag pushed, moved or added since the
plan was made must never be taken along. Anything that no longer matches the plan is
skipped and said so; a deletion the registry refuses is recorded as failed and the others go
on. A registry with deletes disabled stops the whole pass (every delete would fail alike).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from retention.apply.audit import AuditWriter
from retention.apply.trash import BinWriter, TrashEntry
from retention.core.model import (
    DeletionKind,
    DeletionResult,
    ManifestDeletion,
    Outcome,
    Plan,
    RepositoryPlan,
)
from retention.errors import (
    AuditError,
    DeleteDisabled,
    NotFound,
    RegistryError,
    RegistryUnreachable,
    TrashError,
)
from retention.logs import get_logger
from retention.registry import FetchedManifest, RegistryClient, parse_manifest

log = get_logger(__name__)
_GONE = (Outcome.DELETED, Outcome.ALREADY_GONE)


async def apply(
    client: RegistryClient,
    plan: Plan,
    trash: BinWriter | None = None,
    audit: AuditWriter | None = None,
) -> tuple[DeletionResult, ...]:
    """Carry out every deletion of ``plan``; raises DeleteDisabled, records everything else.

    With ``trash``, each manifest's bytes are saved there before it is deleted; a manifest
    that cannot be saved is not deleted. With ``audit``, each batch of confirmed deletions
    is appended to the audit log; if that fails, nothing more is deleted.
    """
    state = _PassState(trash=trash, audit=audit)
    work = [r for r in plan.repositories if r.deletions and not r.skipped]
    results = await asyncio.gather(*(_apply_repository(client, r, state) for r in work))
    return tuple(result for batch in results for result in batch)


@dataclass
class _PassState:
    """Shared across repositories: once the registry is gone, stop knocking."""

    trash: BinWriter | None = None
    unreachable: str | None = None
    audit: AuditWriter | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # digest -> bytes estimate


async def _apply_repository(
    client: RegistryClient, repository: RepositoryPlan, state: _PassState
) -> list[DeletionResult]:
    try:
        current = await _current_state(client, repository)
    except RegistryError as exc:
        if isinstance(exc, RegistryUnreachable):
            state.unreachable = str(exc)
        detail = f"could not re-read the repository before deleting: {exc}"
        return [_result(repository.name, d, Outcome.SKIPPED, detail) for d in repository.deletions]
    return await _in_dependency_order(client, repository, current, state)


async def _in_dependency_order(
    client: RegistryClient, repository: RepositoryPlan, current: _Current, state: _PassState
) -> list[DeletionResult]:
    """Delete in rounds: a child or artifact only after everything it names was tried.

    Whatever waits on a parent that was never tried (it is not in the plan) is skipped.
    """
    pending = list(repository.deletions)
    results: list[DeletionResult] = []
    removed: set[str] = set()
    while pending:
        tried = {r.digest for r in results}
        ready = [d for d in pending if all(p in tried for p in d.parents)]
        if not ready:
            break
        done = await _delete_all(client, repository, ready, current, state, done=removed)
        _audit(state, repository, done)
        removed |= {r.digest for r in done if r.outcome in _GONE}
        results += done
        pending = [d for d in pending if d not in ready]
    waiting = [
        _result(repository.name, d, Outcome.SKIPPED, _parents_missing(d, removed) or "")
        for d in pending
    ]
    return results + waiting


async def _delete_all(
    client: RegistryClient,
    repository: RepositoryPlan,
    deletions: Sequence[ManifestDeletion],
    current: _Current,
    state: _PassState,
    done: set[str],
) -> list[DeletionResult]:
    jobs = (_delete_one(client, repository, d, current, state, done) for d in deletions)
    return list(await asyncio.gather(*jobs))


async def _delete_one(
    client: RegistryClient,
    repository: RepositoryPlan,
    deletion: ManifestDeletion,
    current: _Current,
    state: _PassState,
    done: set[str],
) -> DeletionResult:
    """Check the digest still means what the plan said, then delete it."""
    name = repository.name
    why_not = current.objection(deletion) or _parents_missing(deletion, done)
    if why_not is not None:
        log.warning("deletion skipped", repository=name, digest=deletion.digest, reason=why_not)
        return _result(name, deletion, Outcome.SKIPPED, why_not)
    if state.unreachable is not None:
        return _result(name, deletion, Outcome.FAILED, f"not attempted: {state.unreachable}")
    try:
        if state.trash is not None and not await _save(
            client, name, deletion, state.trash, state.sizes
        ):
            return _result(name, deletion, Outcome.ALREADY_GONE)
        deleted = await client.delete_manifest(name, deletion.digest)
    except DeleteDisabled:
        raise
    except (RegistryError, TrashError) as exc:
        if isinstance(exc, RegistryUnreachable):
            state.unreachable = str(exc)
        log.error("deletion failed", repository=name, digest=deletion.digest, error=str(exc))
        return _result(name, deletion, Outcome.FAILED, str(exc))
    outcome = Outcome.DELETED if deleted else Outcome.ALREADY_GONE
    log.info(
        "manifest deleted" if deleted else "manifest already gone",
        repository=name,
        digest=deletion.digest,
        tags=list(deletion.tags),
        kind=deletion.kind.value,
        rule=_rule_of(repository, deletion),
    )
    return _result(name, deletion, outcome)


async def _save(
    client: RegistryClient,
    repository: str,
    deletion: ManifestDeletion,
    trash: BinWriter,
    sizes: dict[str, int],
) -> bool:
    """Keep the manifest's exact bytes for ``retention restore``; False if it is gone."""
    try:
        fetched = await client.manifest(repository, deletion.digest)
    except NotFound:
        return False
    sizes[deletion.digest] = bytes_estimate(fetched)
    entry = TrashEntry(
        repository=repository,
        digest=deletion.digest,
        media_type=fetched.media_type,
        tags=deletion.tags,
        kind=deletion.kind.value,
        parents=deletion.parents,
    )
    trash.save(entry, fetched.body)
    return True


def bytes_estimate(fetched: FetchedManifest) -> int:
    """The manifest and every blob it names: what GC frees at most for this manifest."""
    try:
        manifest, _ = parse_manifest(fetched)
    except RegistryError:
        return len(fetched.body)
    return len(fetched.body) + sum(blob.size for blob in manifest.blobs)


def _audit(state: _PassState, repository: RepositoryPlan, done: list[DeletionResult]) -> None:
    """Append a batch's confirmed deletions; a log that cannot be written stops the pass."""
    if state.audit is None:
        return
    try:
        state.audit.deleted(repository, done, state.sizes)
    except AuditError as exc:
        log.error("audit log not written", repository=repository.name, error=str(exc))
        state.audit = None  # said once; what follows is not attempted
        state.unreachable = state.unreachable or f"the audit log cannot be written: {exc}"


# -- what the repository looks like right now -----------------------------------------------


@dataclass
class _Current:
    """Every tag's digest now, and the children of indexes the plan did not know."""

    tags_by_digest: dict[str, set[str]]
    moved: dict[str, str]
    protected_children: set[str]

    def objection(self, deletion: ManifestDeletion) -> str | None:
        """Why deleting this digest now would do more than the plan said, if it would."""
        planned = set(deletion.tags)
        for tag in deletion.tags:
            if tag in self.moved:
                return f"tag {tag!r} moved to {self.moved[tag]} since the plan"
        extra = sorted(self.tags_by_digest.get(deletion.digest, set()) - planned)
        if extra:
            return f"tag {extra[0]!r} now points at this digest"
        if deletion.digest in self.protected_children:
            return "an index pushed since the plan references this manifest"
        return None


async def _current_state(client: RegistryClient, repository: RepositoryPlan) -> _Current:
    """Resolve every tag of the repository again (a moved or new tag must block deletion)."""
    names = await client.tags(repository.name)
    resolved = await asyncio.gather(*(_resolve(client, repository.name, t) for t in names))
    now = {tag: digest for tag, digest in zip(names, resolved, strict=True) if digest}
    planned = {d.tag: d.digest for d in repository.decisions}
    tags_by_digest: dict[str, set[str]] = {}
    for tag, digest in now.items():
        tags_by_digest.setdefault(digest, set()).add(tag)
    moved = {t: now[t] for t, d in planned.items() if t in now and now[t] != d}
    unknown = set(now.values()) - set(planned.values())
    children = await _children_of(client, repository.name, unknown)
    return _Current(tags_by_digest, moved, children)


async def _resolve(client: RegistryClient, repository: str, tag: str) -> str | None:
    try:
        digest, _ = await client.resolve(repository, tag)
    except NotFound:
        return None
    return digest


async def _children_of(client: RegistryClient, repository: str, digests: Iterable[str]) -> set[str]:
    """Children of manifests pushed since the plan, so a new index keeps its platforms."""
    fetched = await asyncio.gather(*(client.manifest(repository, d) for d in sorted(digests)))
    found: set[str] = set()
    for manifest in fetched:
        found.update(parse_manifest(manifest)[0].children)
    return found


# -- small helpers --------------------------------------------------------------------------


def _parents_missing(deletion: ManifestDeletion, done: set[str]) -> str | None:
    """A child or artifact goes only once what it belongs to went (or was already gone)."""
    missing = [p for p in deletion.parents if p not in done]
    if not missing:
        return None
    owner = "index" if deletion.kind is DeletionKind.CHILD else "subject"
    return f"its {owner} {missing[0]} was not deleted"


def _rule_of(repository: RepositoryPlan, deletion: ManifestDeletion) -> str | None:
    rules = {d.rule for d in repository.decisions if d.tag in deletion.tags and d.rule}
    return ", ".join(sorted(rules)) or None


def _result(
    repository: str, deletion: ManifestDeletion, outcome: Outcome, detail: str = ""
) -> DeletionResult:
    return DeletionResult(repository, deletion.digest, deletion.tags, outcome, detail)
