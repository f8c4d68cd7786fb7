"""What the planner reads and writes: plain, frozen values with no behaviour that does I/O.

The inventory (what the registry holds) comes in; decisions and a plan go out. Keeping these
as dataclasses rather than dicts lets the planner, the reports and the executor agree on one
vocabulary, and lets tests build inventories by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal, TypeVar

from retention.core.packed_rows import (
    Layout,
    PackedRows,
    choices,
    digests,
    integers,
    moments,
    texts,
    tuples_of,
)


# Blob, Manifest and Tag have slots: an inventory holds one of each per tag, and without a
# __dict__ each is about a third of the size (a 100,000-tag scan is tens of MB smaller).
# So do TagDecision, ManifestDeletion and RepositoryPlan; a RepositoryPlan keeps its rows
# packed (see RepositoryPlan), as a plan holds one decision per tag until it is reported.
@dataclass(frozen=True, slots=True)
class Blob:
    """A config or layer blob a manifest references."""

    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """One stored manifest: an image manifest (blobs) or an index (children)."""

    digest: str
    media_type: str
    size: int
    created: datetime | None = None
    blobs: tuple[Blob, ...] = ()
    children: tuple[str, ...] = ()
    subject: str | None = None

    @property
    def is_index(self) -> bool:
        return bool(self.children) or self.media_type.endswith(("list.v2+json", "index.v1+json"))


@dataclass(frozen=True, slots=True)
class Tag:
    """A tag and the digest it points at; when it was last pushed and pulled, if known.

    The registry API has neither time: on the filesystem backend the tag's link file's
    mtime is a push time (see ``scan/push_times.py``), and registry notifications give both.
    The grace period, ``order_by``, ``age_by`` and ``pulled_within`` use them.
    """

    name: str
    digest: str
    pushed: datetime | None = None
    pulled: datetime | None = None


@dataclass(frozen=True, slots=True)
class UntaggedManifest:
    """A stored manifest that no tag reaches (left behind when its tag was pushed again).

    Only the filesystem storage lists them (``scan/untagged.py``). ``linked`` is the mtime
    of its revision link, rewritten by every push of this manifest (the grace period: a
    multi-arch push uploads platforms by digest before the index arrives by tag);
    ``since`` is when a pass first saw it untagged, or the event store's time its last
    tag moved away: never its push time, which is earlier and would age it too soon.
    """

    digest: str
    linked: datetime
    since: datetime


@dataclass(frozen=True)
class Repository:
    """A repository as scanned: its tags and every manifest they reach (children included).

    ``error`` is set when the scan could not read the repository completely; the planner
    then deletes nothing in it (fail closed). ``untagged`` lists manifests no tag reaches,
    when the policy has ``untagged:`` (their bodies are in ``manifests`` too).
    """

    name: str
    tags: tuple[Tag, ...] = ()
    manifests: Mapping[str, Manifest] = field(default_factory=dict)
    error: str | None = None
    untagged: tuple[UntaggedManifest, ...] = ()


@dataclass(frozen=True)
class Hold:
    """A tag ``retention restore`` pushed back: kept by every plan until ``until``.

    Without it the next pass would delete the restored image again, by the same rule.
    """

    repository: str
    tag: str
    run_id: str
    restored_at: datetime
    until: datetime

    @property
    def reason(self) -> str:
        return (
            f"restored from {self.run_id} on {self.restored_at.date().isoformat()} "
            f"(held until {self.until.strftime('%Y-%m-%d %H:%M')}Z)"
        )


@dataclass(frozen=True)
class Inventory:
    """Everything scanned in one pass.

    ``pull_history_since`` is when pull events began to be recorded (None: no pull history
    at all). A tag with no pull since then was not pulled for that long, and no longer is
    known, so ``pulled_within`` treats a shorter history as unknown, never as old.
    """

    registry: str
    repositories: tuple[Repository, ...] = ()
    pull_history_since: datetime | None = None


class Action(StrEnum):
    KEEP = "keep"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class TagDecision:
    """The fate of one tag, with the rule that decided and a reason a person can check.

    ``pushed`` and ``pulled`` are the tag's times as scanned; ``ranked_by`` and ``aged_by``
    name the time (or ``semver``) its rule actually used for this tag, None when the rule
    did not rank or age it (no rule, protected, in use, an artifact, or unknown).
    """

    tag: str
    digest: str
    created: datetime | None
    action: Action
    rule: str | None
    reason: str
    subject: str | None = None
    kind: str = "image"
    """image, index, platform (a child of an index), signature or untagged; for reports."""
    size: int | None = None
    """Bytes of the manifest and every blob it (or its platforms) references."""
    pushed: datetime | None = None
    pulled: datetime | None = None
    ranked_by: str | None = None
    aged_by: str | None = None

    @property
    def is_artifact(self) -> bool:
        """A signature, attestation or SBOM: it follows its subject and no rule."""
        return self.subject is not None

    @property
    def is_untagged(self) -> bool:
        """A row for a manifest no tag points at (``tag`` is empty): an untagged manifest
        (kind ``untagged``) or a platform of a tagged index (kind ``platform``)."""
        return not self.tag


class DeletionKind(StrEnum):
    """Tagged digests go first; children and artifacts only after their parent went.

    An untagged manifest has no tag to re-check and no parent (an untagged index's
    children are CHILD deletions naming it, so the index goes first).
    """

    TAGGED = "tagged"
    CHILD = "child"
    ARTIFACT = "artifact"
    UNTAGGED = "untagged"


@dataclass(frozen=True, slots=True)
class ManifestDeletion:
    """One ``DELETE /v2/<name>/manifests/<digest>`` the plan asks for.

    ``tags`` are the tags this removes (all of them were decided delete); a child of a
    deleted index has none and names its ``parents``; an artifact names its subject as
    parent (none for an orphan) and is deleted only once its subject is gone.
    """

    digest: str
    kind: DeletionKind
    tags: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()


_DECISION_LAYOUT = Layout(
    TagDecision,
    tag=texts,
    digest=digests,
    created=moments,
    action=choices,
    rule=choices,
    reason=choices,
    subject=choices,
    kind=choices,
    size=integers,
    pushed=moments,
    pulled=moments,
    ranked_by=choices,
    aged_by=choices,
)
_DELETION_LAYOUT = Layout(
    ManifestDeletion,
    digest=digests,
    kind=choices,
    tags=tuples_of(texts),
    parents=tuples_of(digests),
)


@dataclass(frozen=True, slots=True, init=False)
class RepositoryPlan:
    """Decisions for one repository.

    ``error`` (the scan failed: a failure of the pass) or ``held`` (a safety budget: not a
    failure) says why nothing is deleted here. Decisions and deletions are given as any
    sequence and kept packed (``packed_rows``): a plan of a million tags holds them all
    until it is reported, and as objects they were most of its memory. They read as
    tuples of ``TagDecision`` and ``ManifestDeletion``, equal to the ones given.
    """

    name: str
    decisions: PackedRows[TagDecision]
    deletions: PackedRows[ManifestDeletion]
    error: str | None
    held: str | None

    def __init__(
        self,
        name: str,
        decisions: Iterable[TagDecision] = (),
        deletions: Iterable[ManifestDeletion] = (),
        error: str | None = None,
        held: str | None = None,
    ) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "decisions", _packed(_DECISION_LAYOUT, decisions))
        object.__setattr__(self, "deletions", _packed(_DELETION_LAYOUT, deletions))
        object.__setattr__(self, "error", error)
        object.__setattr__(self, "held", held)

    def with_rows(
        self, decisions: Iterable[TagDecision], deletions: Iterable[ManifestDeletion]
    ) -> RepositoryPlan:
        """This plan with other rows (``replace`` is typed for the packed fields only)."""
        return RepositoryPlan(self.name, decisions, deletions, self.error, self.held)

    @property
    def skipped(self) -> str | None:
        return self.error or self.held

    @property
    def tags_to_delete(self) -> tuple[TagDecision, ...]:
        """Rows to delete: tags, and manifests no tag points at (``--only delete``)."""
        return tuple(d for d in self.decisions if d.action is Action.DELETE)

    @property
    def tag_decisions(self) -> tuple[TagDecision, ...]:
        return tuple(d for d in self.decisions if not d.is_untagged)

    @property
    def untagged_decisions(self) -> tuple[TagDecision, ...]:
        """Manifests no tag reaches (not the platforms of tagged indexes, also tagless)."""
        return tuple(d for d in self.decisions if d.is_untagged and d.kind == "untagged")

    def counts(self) -> tuple[int, int, int, int]:
        """Tags, tags to delete, untagged manifests, untagged to delete: the summary's
        numbers, read from the packed columns rather than from a million rows built."""
        rows = zip(
            self.decisions.column("tag"),
            self.decisions.column("action"),
            self.decisions.column("kind"),
            strict=True,
        )
        counted = [0, 0, 0, 0]
        for tag, action, kind in rows:
            at = 0 if tag else 2 if kind == "untagged" else None
            if at is not None:
                counted[at] += 1
                counted[at + 1] += action is Action.DELETE
        return counted[0], counted[1], counted[2], counted[3]


Packed = TypeVar("Packed")


def _packed(layout: Layout[Packed], rows: Iterable[Packed]) -> PackedRows[Packed]:
    return rows if isinstance(rows, PackedRows) else PackedRows(layout, rows)


@dataclass(frozen=True)
class Summary:
    repositories: int
    tags: int
    tags_to_delete: int
    manifests_to_delete: int
    reclaimable_bytes: int
    repositories_skipped: int
    untagged: int = 0
    """Rows for manifests no tag points at (not counted in ``tags``)."""
    untagged_to_delete: int = 0


@dataclass(frozen=True)
class Plan:
    """Everything one pass would delete, and why; the input of the executor and the reports."""

    registry: str
    created_at: datetime
    repositories: tuple[RepositoryPlan, ...]
    reclaimable_bytes: int = 0
    refused: str | None = None
    """Why ``run`` would apply none of it (``safety.max_deletions``), said in the plan."""

    @property
    def manifests_to_delete(self) -> int:
        return sum(len(r.deletions) for r in self.repositories)

    @property
    def summary(self) -> Summary:
        counts = [r.counts() for r in self.repositories]
        return Summary(
            repositories=len(self.repositories),
            tags=sum(c[0] for c in counts),
            tags_to_delete=sum(c[1] for c in counts),
            manifests_to_delete=self.manifests_to_delete,
            reclaimable_bytes=self.reclaimable_bytes,
            repositories_skipped=sum(1 for r in self.repositories if r.skipped),
            untagged=sum(c[2] for c in counts),
            untagged_to_delete=sum(c[3] for c in counts),
        )


class Outcome(StrEnum):
    """What happened to one planned deletion."""

    DELETED = "deleted"
    ALREADY_GONE = "already_gone"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class DeletionResult:
    repository: str
    digest: str
    tags: tuple[str, ...]
    outcome: Outcome
    detail: str = ""


@dataclass(frozen=True)
class StorageUsage:
    """``du`` of the registry's storage before deletion and after GC; None when unknown."""

    before_bytes: int | None = None
    after_bytes: int | None = None

    @property
    def freed_bytes(self) -> int | None:
        if self.before_bytes is None or self.after_bytes is None:
            return None
        return self.before_bytes - self.after_bytes


@dataclass(frozen=True)
class GcResult:
    """What garbage collection did; ``skipped`` says why it did not run, if so.

    ``restarted``: the registry process is new after GC (its blob cache flushed).
    ``probe``: ``passed``, ``failed: <why>``, or None when no probe ran.
    """

    mode: str
    ran: bool = False
    blobs_deleted: int | None = None
    duration_s: float = 0.0
    error: str | None = None
    skipped: str | None = None
    restarted: bool = False
    probe: str | None = None

    @property
    def probe_failed(self) -> bool:
        return self.probe is not None and self.probe != "passed"


@dataclass(frozen=True)
class RunResult:
    """One pass: the plan, what was applied, GC and storage; ``errors`` make the exit non-zero."""

    plan: Plan
    dry_run: bool
    applied: tuple[DeletionResult, ...] = ()
    storage: StorageUsage = StorageUsage()
    gc: GcResult | None = None
    errors: tuple[str, ...] = ()
    duration_s: float = 0.0
    run_id: str | None = None
    verification: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """False for any failure, and for a run that a safety limit held back anywhere.

        A held repository deleted nothing the rules asked for: someone must look at the
        rules (or raise the limit), so the pass says so with its exit code. A dry run only
        reports the holds.
        """
        failed = any(r.outcome is Outcome.FAILED for r in self.applied)
        unread = any(r.error for r in self.plan.repositories)
        held = not self.dry_run and any(r.held for r in self.plan.repositories)
        return not (self.errors or failed or unread or self.verification or held)


# How a whole pass ended, as the daemon counts and files it.
PassOutcome = Literal["success", "failure", "dry_run"]
OUTCOMES: tuple[PassOutcome, ...] = ("success", "failure", "dry_run")


PhaseProgress = Callable[[str, int, int], None]
"""Told (phase, done, total) as a pass works: scan, trash, delete, gc, verify.

The total is known before the first call of a phase and does not grow; the CLI draws it
at a terminal, everything else may ignore it.
"""
