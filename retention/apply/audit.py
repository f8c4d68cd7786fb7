"""What the apply layer writes to the audit trail: confirmed deletions and restores.

Turns a repository's plan and the executor's results into ``AuditRecord`` lines. Only
results the registry confirmed (``DELETED``) become records, never what was planned, so
a refused or skipped deletion leaves no false trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime

from retention.core.model import (
    DeletionResult,
    ManifestDeletion,
    Outcome,
    RepositoryPlan,
    TagDecision,
)
from retention.core.policy import Policy
from retention.state.audit import AuditLog, AuditRecord


class AuditWriter:
    """Binds one pass's run id, registry and clock to the log."""

    def __init__(
        self, log: AuditLog, run_id: str, registry: str, clock: Callable[[], datetime]
    ) -> None:
        self.log = log
        self.run_id = run_id
        self.registry = registry
        self.clock = clock

    @classmethod
    def for_policy(
        cls, policy: Policy, run_id: str, registry: str, clock: Callable[[], datetime]
    ) -> AuditWriter:
        log = AuditLog(policy.state_dir, policy.audit.max_bytes, policy.audit.keep)
        return cls(log, run_id, registry, clock)

    def deleted(
        self,
        repository: RepositoryPlan,
        results: Iterable[DeletionResult],
        sizes: Mapping[str, int],
    ) -> None:
        """Append one batch of confirmed deletions (raises AuditError)."""
        planned = {d.digest: d for d in repository.deletions}
        rows = tuple(repository.decisions)  # built once: the plan keeps them packed
        now = self.clock()
        records = [
            self._record(now, repository.name, rows, planned[r.digest], sizes.get(r.digest))
            for r in results
            if r.outcome is Outcome.DELETED and r.digest in planned
        ]
        self.log.append(records)

    def restored(
        self, repository: str, digest: str, tags: tuple[str, ...], bytes_estimate: int | None
    ) -> None:
        reason = f"restored from the trash of run {self.run_id}"
        record = AuditRecord(
            self.clock(), "restored", self.run_id, self.registry, repository, digest, tags,
            reason=reason, bytes_estimate=bytes_estimate,
        )  # fmt: skip
        self.log.append([record])

    def _record(
        self,
        now: datetime,
        repository: str,
        rows: Sequence[TagDecision],
        deletion: ManifestDeletion,
        size: int | None,
    ) -> AuditRecord:
        rule, reason = why(rows, deletion)
        return AuditRecord(
            now, "deleted", self.run_id, self.registry, repository, deletion.digest,
            deletion.tags, rule, reason, size,
        )  # fmt: skip


def why(rows: Sequence[TagDecision], deletion: ManifestDeletion) -> tuple[str | None, str]:
    """The rules and the planner's reasons for a deletion; untagged ones say what they were.

    ``rows`` are the repository plan's decisions. A deletion without tags takes the
    reason of its row by digest (an untagged manifest's age, or the index a platform goes
    with), where the plan has one.
    """
    if not deletion.tags:
        loose = [d for d in rows if d.is_untagged and d.digest == deletion.digest]
        if loose:
            return None, loose[0].reason
    decisions = [d for d in rows if d.tag in deletion.tags]
    rules = sorted({d.rule for d in decisions if d.rule})
    reasons = list(dict.fromkeys(d.reason for d in decisions))
    if reasons:
        return ", ".join(rules) or None, "; ".join(reasons)
    owner = f" of {deletion.parents[0]}" if deletion.parents else ""
    return None, f"untagged {deletion.kind.value}{owner}, deleted with it"
