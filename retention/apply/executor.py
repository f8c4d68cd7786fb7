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
    PhaseProgress,
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
    first_in,
)
from retention.logs import get_logger
from retention.registry import FetchedManifest, RegistryClient, parse_manifest

log = get_logger(__name__)
_GONE = (Outcome.DELETED, Outcome.ALREADY_GONE)


async def apply(
    client: RegistryClient,
    plan: Plan,
    trash: BinWriter | None = None,
    progress: PhaseProgress | None = None,
    audit: AuditWriter | None = None,
) -> tuple[DeletionResult, ...]:
    """Carry out every deletion of ``plan``; raises DeleteDisabled, records everything else.

    With ``trash``, every manifest's bytes are saved there first, in one pass over the plan
    (a manifest that cannot be saved is not deleted), and each DELETE the registry answers
    202 to is confirmed in the bin; the caller commits the bin, whatever happened.
    Repositories run in a TaskGroup: when one raises (405: deletes disabled), the others
    are cancelled and awaited before this returns, so nothing deletes behind the lock.
    With ``audit``, each batch of confirmed deletions is appended to the audit log; if that
    fails, nothing more is deleted.
    """
    work = [r for r in plan.repositories if r.deletions and not r.skipped]
    total = sum(len(r.deletions) for r in work)
    state = _PassState(asyncio.Semaphore(client.concurrency), trash, _Tally(progress, total))
    state.audit = audit
    if trash is not None:
        await _stage_all(client, work, state)
        trash.write_ahead()
    return await _apply_everywhere(client, work, state)


async def _apply_everywhere(
    client: RegistryClient, work: list[RepositoryPlan], state: _PassState
) -> tuple[DeletionResult, ...]:
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_apply_repository(client, r, state)) for r in work]
    except BaseExceptionGroup as failed:  # not except*: see errors.first_in
        disabled = first_in(failed, DeleteDisabled)
        if disabled is None:
            raise
        if state.trash is not None:
            # Deletes are off for the whole registry: the DELETEs cut off cannot have worked.
            state.trash.settle_in_flight(deleted=False)
        raise disabled from None
    return tuple(result for task in tasks for result in task.result())


@dataclass
class _Tally:
    """Progress over the whole pass: (phase, done, total), total known before the first."""

    callback: PhaseProgress | None
    total: int
    staged: int = 0
    settled: int = 0

    def stage_done(self) -> None:
        self.staged += 1
        if self.callback is not None:
            self.callback("trash", self.staged, self.total)

    def deletion_done(self, count: int = 1) -> None:
        self.settled += count
        if self.callback is not None:
            self.callback("delete", self.settled, self.total)


@dataclass
class _PassState:
    """Shared across repositories: once the registry is gone, stop knocking.

    ``deleting`` bounds DELETEs in flight to the client's concurrency, so that a DELETE is
    marked sent in the bin only when it really goes out (an interrupted pass then has at
    most that many unconfirmed).
    """

    deleting: asyncio.Semaphore
    trash: BinWriter | None = None
    tally: _Tally = field(default_factory=lambda: _Tally(None, 0))
    unreachable: str | None = None
    not_staged: dict[tuple[str, str], tuple[Outcome, str]] = field(default_factory=dict)
    audit: AuditWriter | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # digest -> bytes estimate


# -- saving to the trash, before anything is deleted ----------------------------------------


async def _stage_all(client: RegistryClient, work: list[RepositoryPlan], state: _PassState) -> None:
    """Fetch and save every planned manifest; what cannot be saved will not be deleted."""
    async with asyncio.TaskGroup() as group:
        for repository in work:
            for deletion in repository.deletions:
                group.create_task(_stage_one(client, repository.name, deletion, state))


async def _stage_one(
    client: RegistryClient, repository: str, deletion: ManifestDeletion, state: _PassState
) -> None:
    assert state.trash is not None
    key = (repository, deletion.digest)
    try:
        fetched = await client.manifest(repository, deletion.digest)
        state.sizes[deletion.digest] = bytes_estimate(fetched)
        state.trash.stage(_entry(repository, deletion, fetched.media_type), fetched.body)
    except NotFound:
        state.not_staged[key] = (Outcome.ALREADY_GONE, "")
    except (RegistryError, TrashError) as exc:
        log.error("not saved to the trash", repository=repository, digest=deletion.digest)
        state.not_staged[key] = (Outcome.FAILED, f"not saved to the trash, not deleted: {exc}")
    state.tally.stage_done()


def _entry(repository: str, deletion: ManifestDeletion, media_type: str) -> TrashEntry:
    return TrashEntry(
        repository=repository,
        digest=deletion.digest,
        media_type=media_type,
        tags=deletion.tags,
        kind=deletion.kind.value,
        parents=deletion.parents,
    )


# -- deleting -------------------------------------------------------------------------------


async def _apply_repository(
    client: RegistryClient, repository: RepositoryPlan, state: _PassState
) -> list[DeletionResult]:
    try:
        current = await _current_state(client, repository)
    except RegistryError as exc:
        if isinstance(exc, RegistryUnreachable):
            state.unreachable = str(exc)
        detail = f"could not re-read the repository before deleting: {exc}"
        state.tally.deletion_done(len(repository.deletions))
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
    state.tally.deletion_done(len(waiting))
    return results + waiting


async def _delete_all(
    client: RegistryClient,
    repository: RepositoryPlan,
    deletions: Sequence[ManifestDeletion],
    current: _Current,
    state: _PassState,
    done: set[str],
) -> list[DeletionResult]:
    async with asyncio.TaskGroup() as group:
        jobs = [
            group.create_task(_delete_one(client, repository, d, current, state, done))
            for d in deletions
        ]
    return [job.result() for job in jobs]


async def _delete_one(
    client: RegistryClient,
    repository: RepositoryPlan,
    deletion: ManifestDeletion,
    current: _Current,
    state: _PassState,
    done: set[str],
) -> DeletionResult:
    result = await _checked_delete(client, repository, deletion, current, state, done)
    state.tally.deletion_done()
    return result


async def _checked_delete(
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
    if (name, deletion.digest) in state.not_staged:
        return _result(name, deletion, *state.not_staged[(name, deletion.digest)])
    try:
        async with state.deleting:
            deleted = await _delete(client, name, deletion.digest, state.trash)
    except DeleteDisabled:
        raise
    except RegistryError as exc:
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
        rule=current.rule_of(deletion),
    )
    return _result(name, deletion, outcome)


async def _delete(
    client: RegistryClient, repository: str, digest: str, trash: BinWriter | None
) -> bool:
    """One DELETE, bracketed in the bin: confirmed on 202, cleared on any other answer.

    A DELETE cut off by cancellation stays in flight: the bin calls it unconfirmed.
    DeleteDisabled propagates (every delete would fail alike) and stops the pass.
    """
    if trash is not None:
        trash.sending(repository, digest)
    try:
        deleted = await client.delete_manifest(repository, digest)
    except RegistryError:
        if trash is not None:
            trash.settle(repository, digest, deleted=False)
        raise
    if trash is not None:
        trash.settle(repository, digest, deleted=deleted)
    return deleted


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
    """Every tag's digest now, and the children of indexes the plan did not know; and the
    rule of each planned tag, read with them (for the log of each deletion: the plan's
    rows are packed, and reading them again per deletion grows with the square)."""

    tags_by_digest: dict[str, set[str]]
    moved: dict[str, str]
    protected_children: set[str]
    rules: dict[str, str] = field(default_factory=dict)

    def rule_of(self, deletion: ManifestDeletion) -> str | None:
        rules = {self.rules[tag] for tag in deletion.tags if tag in self.rules}
        return ", ".join(sorted(rules)) or None

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
    tagged = [d for d in repository.decisions if not d.is_untagged]
    planned = {d.tag: d.digest for d in tagged}
    rules = {d.tag: d.rule for d in tagged if d.rule}
    tags_by_digest: dict[str, set[str]] = {}
    for tag, digest in now.items():
        tags_by_digest.setdefault(digest, set()).add(tag)
    moved = {t: now[t] for t, d in planned.items() if t in now and now[t] != d}
    unknown = set(now.values()) - set(planned.values())
    children = await _children_of(client, repository.name, unknown)
    return _Current(tags_by_digest, moved, children, rules)


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


def _result(
    repository: str, deletion: ManifestDeletion, outcome: Outcome, detail: str = ""
) -> DeletionResult:
    return DeletionResult(repository, deletion.digest, deletion.tags, outcome, detail)
