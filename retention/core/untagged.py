"""The fate of manifests no tag points at (``untagged:`` in the policy), and why.

Pure, like the planner that calls it once the tags are decided. Such a manifest is deleted
by digest only when all of these hold:

* ``untagged.repositories`` covers its repository, and it has been untagged for longer
  than ``untagged.max_age`` (counted from ``UntaggedManifest.since``, never from its push);
* its revision link is older than ``safety.grace_period``: a multi-arch push uploads its
  platform manifests by digest before the index arrives by tag, so a fresh untagged
  manifest may be about to be referenced;
* no kept manifest needs it: not a child of a kept index (tagged, or untagged and kept),
  not the subject of a kept signature or attestation;
* it is not a referrer of a kept manifest: an OCI 1.1 signature, attestation or SBOM is
  pushed untagged with a ``subject`` (notation, cosign's OCI mode), so "untagged" is its
  normal state and it stays as long as what it signs stays.

An untagged index that goes takes its untagged children with it as CHILD deletions naming
it, so the executor deletes the index first. Rows have an empty ``tag`` and kind
``untagged``, so the reports list them beside the tags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from retention.core.image_reference import ImageReference
from retention.core.manifest_graph import children, descendants
from retention.core.model import (
    Action,
    DeletionKind,
    Manifest,
    ManifestDeletion,
    Repository,
    TagDecision,
    UntaggedManifest,
)
from retention.core.policy import UntaggedManifests, format_duration
from retention.core.tag_times import describe_age

KIND = "untagged"


def decide(
    settings: UntaggedManifests | None,
    repository: Repository,
    decisions: Sequence[TagDecision],
    now: datetime,
    grace: timedelta,
    in_use: Sequence[ImageReference] = (),
) -> tuple[TagDecision, ...]:
    """One row per untagged manifest of ``repository``, given the tags' final ``decisions``.

    ``in_use``: a workload pinned by digest to an image whose tag moved on still runs it.
    """
    if not repository.untagged:
        return ()
    needed = _needed_by_tags(decisions, repository.manifests) | _in_use(repository, in_use)
    rows = {
        u.digest: _row(u, repository.manifests, _verdict(settings, repository.name, u, now, grace))
        for u in repository.untagged
    }
    for digest, why in needed.items():
        if digest in rows:
            rows[digest] = replace(rows[digest], action=Action.KEEP, reason=why)
    # What the tags keep: their own digests and everything ``needed`` already walked to.
    kept_tags = {d.digest for d in decisions if d.action is Action.KEEP} | needed.keys()
    return tuple(_keep_what_kept_rows_need(rows, repository.manifests, kept_tags).values())


def kept_closure(rows: Sequence[TagDecision], manifests: Mapping[str, Manifest]) -> set[str]:
    """Digests kept untagged manifests need (themselves and what lies below them)."""
    kept: set[str] = set()
    for row in rows:
        if row.action is Action.KEEP:
            kept.add(row.digest)
            kept.update(descendants(row.digest, manifests))
    return kept


def deletions(
    rows: Sequence[TagDecision], manifests: Mapping[str, Manifest]
) -> tuple[ManifestDeletion, ...]:
    """UNTAGGED deletions, then the children of untagged indexes that go (after them)."""
    going = {r.digest for r in rows if r.action is Action.DELETE}
    parents: dict[str, list[str]] = {}
    for digest in sorted(going):
        for child in children(digest, manifests):
            if child in going:
                parents.setdefault(child, []).append(digest)
    alone = [ManifestDeletion(d, DeletionKind.UNTAGGED) for d in sorted(going - set(parents))]
    below = [
        ManifestDeletion(child, DeletionKind.CHILD, parents=tuple(sorted(owners)))
        for child, owners in sorted(parents.items())
    ]
    return (*alone, *below)


def _verdict(
    settings: UntaggedManifests | None,
    repository: str,
    untagged: UntaggedManifest,
    now: datetime,
    grace: timedelta,
) -> tuple[Action, str]:
    """Its own fate: the rule, its age as untagged, and the grace on its link."""
    if settings is None or not settings.covers(repository):
        return Action.KEEP, "untagged; no untagged: setting covers this repository"
    linked = now - untagged.linked
    if linked < grace:
        return Action.KEEP, (
            f"pushed {describe_age(linked)} ago, within safety.grace_period="
            f"{format_duration(grace)} (an index may be about to reference it)"
        )
    age, limit = now - untagged.since, format_duration(settings.max_age)
    untagged_for = f"untagged for {describe_age(age, settings.max_age)}"
    if age > settings.max_age:
        return Action.DELETE, f"{untagged_for}, older than {limit}"
    return Action.KEEP, f"{untagged_for}, newer than {limit}"


def _in_use(repository: Repository, in_use: Sequence[ImageReference]) -> dict[str, str]:
    """digest -> ``in use (origin)``: named by digest, or an index of a platform in use."""
    used = {r.digest: r.origin for r in sorted(in_use, key=lambda r: r.origin) if r.digest}
    found: dict[str, str] = {}
    for untagged in repository.untagged:
        below = [untagged.digest, *descendants(untagged.digest, repository.manifests)]
        origins = sorted({used[d] for d in below if d in used})
        if origins:
            more = f" and {len(origins) - 1} more" if len(origins) > 1 else ""
            found[untagged.digest] = f"in use ({origins[0]}{more})"
    return found


def _needed_by_tags(
    decisions: Sequence[TagDecision], manifests: Mapping[str, Manifest]
) -> dict[str, str]:
    """digest -> why it must stay: below a kept tag's index, or a kept artifact's subject."""
    needed: dict[str, str] = {}
    for decision in sorted(decisions, key=lambda d: d.tag):
        if decision.action is not Action.KEEP:
            continue
        for child in descendants(decision.digest, manifests):
            needed.setdefault(child, f"child of kept index {decision.digest} ({decision.tag!r})")
        if decision.subject is not None:
            needed.setdefault(decision.subject, f"subject of kept signature {decision.tag!r}")
    return needed


def _keep_what_kept_rows_need(
    rows: dict[str, TagDecision], manifests: Mapping[str, Manifest], kept_tags: set[str]
) -> dict[str, TagDecision]:
    """Spread KEEP until nothing changes: down to the children of a kept untagged index,
    to a referrer whose subject stays, and up to the subject of a kept untagged referrer."""
    changed = True
    while changed:
        needs = _needs_of_kept_rows(rows, manifests)
        changed = False
        for digest in sorted(rows):
            if rows[digest].action is Action.KEEP:
                continue
            why = needs.get(digest) or _referrer_of_kept(digest, rows, manifests, kept_tags)
            if why is not None:
                rows[digest] = replace(rows[digest], action=Action.KEEP, reason=why)
                changed = True
    return rows


def _needs_of_kept_rows(
    rows: Mapping[str, TagDecision], manifests: Mapping[str, Manifest]
) -> dict[str, str]:
    """digest -> why: a child of a kept untagged index, or the subject of a kept referrer."""
    needs: dict[str, str] = {}
    for digest in sorted(rows):
        row = rows[digest]
        if row.action is not Action.KEEP:
            continue
        for child in children(digest, manifests):
            needs.setdefault(child, f"child of kept index {digest} (untagged: {row.reason})")
        manifest = manifests.get(digest)
        if manifest is not None and manifest.subject is not None:
            needs.setdefault(manifest.subject, f"subject of kept referrer {digest}")
    return needs


def _referrer_of_kept(
    digest: str, rows: Mapping[str, TagDecision], manifests: Mapping[str, Manifest], kept: set[str]
) -> str | None:
    """A signature, attestation or SBOM pushed untagged stays while its subject stays."""
    manifest = manifests.get(digest)
    subject = manifest.subject if manifest is not None else None
    if subject is None:
        return None
    if subject in kept or (subject in rows and rows[subject].action is Action.KEEP):
        return f"referrer (signature, attestation or SBOM) of kept {subject}"
    return None


def _row(
    untagged: UntaggedManifest, manifests: Mapping[str, Manifest], verdict: tuple[Action, str]
) -> TagDecision:
    manifest = manifests.get(untagged.digest)
    return TagDecision(
        tag="",
        digest=untagged.digest,
        created=manifest.created if manifest is not None else None,
        action=verdict[0],
        rule=None,
        reason=verdict[1],
        kind=KIND,
        pushed=untagged.linked,
        aged_by=KIND,
    )
