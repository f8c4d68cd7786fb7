"""Decide, per repository, which tags and manifests go and why: ``plan(policy, inventory, now)``.

Pure: the same policy, inventory and ``now`` always give the same plan; nothing here reads a
clock, a file or the network, and nothing logs. Every safety invariant lives here, so the
executor can only carry out what a person could have read in the report:

* a tag matched by no rule, protected, or of unknown age (for age) is kept;
* a digest is deleted only if every tag on it is deleted, and never while a kept index needs
  it as a child (deleting by digest removes every tag on it);
* children of deleted indexes are deleted too, unless a kept manifest still references them;
* a repository that could not be read completely, or whose plan would delete more than
  ``safety.max_delete_fraction`` of its tags, deletes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from retention.core import artifacts
from retention.core.model import (
    Action,
    DeletionKind,
    Hold,
    Inventory,
    Manifest,
    ManifestDeletion,
    Plan,
    Repository,
    RepositoryPlan,
    Tag,
    TagDecision,
)
from retention.core.policy import Policy, Rule, Safety, format_duration


def plan(policy: Policy, inventory: Inventory, now: datetime, holds: Iterable[Hold] = ()) -> Plan:
    """The whole plan for one pass; ``now`` is the reference time for every age.

    ``holds`` (restored tags) still in force at ``now`` are kept like protected tags.
    """
    active: dict[str, dict[str, Hold]] = {}
    for hold in holds:
        if hold.until > now:
            active.setdefault(hold.repository, {})[hold.tag] = hold
    repositories = tuple(
        plan_repository(policy, r, now, active.get(r.name, {})) for r in inventory.repositories
    )
    made = Plan(
        registry=inventory.registry,
        created_at=now,
        repositories=repositories,
        reclaimable_bytes=reclaimable_bytes(inventory, repositories),
    )
    return replace(made, refused=check_budget(made, policy.safety))


def plan_repository(
    policy: Policy,
    repository: Repository,
    now: datetime,
    holds: Mapping[str, Hold] | None = None,
) -> RepositoryPlan:
    """Rules, grace and the digest holds for images; artifacts follow; then the budget."""
    found = {
        name: attachment
        for name, attachment in artifacts.attachments(repository).items()
        if policy.protecting_pattern(name) is None
    }
    images = _by_rules(policy, repository, now, skip=found, holds=holds or {})
    images = _within_grace(images, repository, policy.safety.grace_period, now)
    images = _hold_needed_digests(images, repository.manifests)
    held = repository.error is None and _over_fraction(images, policy.safety)
    if repository.error is not None or held:
        images = _held_back(images, repository.error, held or None)
    fates = _fates(images, repository)
    attached = artifacts.decide(repository, found, fates, policy.artifacts.delete_orphans)
    decisions = _hold_needed_digests((*images, *attached), repository.manifests)
    if repository.error is not None or held:
        return RepositoryPlan(
            name=repository.name,
            decisions=_report_order(_described(decisions, repository)),
            error=repository.error,
            held=held or None,
        )
    return RepositoryPlan(
        name=repository.name,
        decisions=_report_order(_described(decisions, repository)),
        deletions=_deletions(decisions, repository.manifests),
    )


def only_rule(plan: Plan, rule: str) -> Plan:
    """The plan cut down to the deletions of one rule (``--rule``): everything else is kept.

    Decided on the whole plan first, so each tag still belongs to the rule that claims it
    (the first match); then a deletion is left out when any tag on its digest belongs to
    another rule, and so is every child or artifact whose parent was left out. Left-out
    tags read ``kept: --rule NAME leaves rule R's deletions for another pass``.
    """
    return replace(plan, repositories=tuple(_only_rule(r, rule) for r in plan.repositories))


def _only_rule(repository: RepositoryPlan, rule: str) -> RepositoryPlan:
    rule_of = {d.tag: d.rule for d in repository.decisions}
    kept = {
        d.digest
        for d in repository.deletions
        if d.kind is DeletionKind.TAGGED and any(rule_of.get(tag) != rule for tag in d.tags)
    }
    kept |= {
        d.digest
        for d in repository.deletions
        if d.kind is not DeletionKind.TAGGED and not d.parents
    }
    grew = True
    while grew:
        more = {d.digest for d in repository.deletions if set(d.parents) & kept} - kept
        kept |= more
        grew = bool(more)
    decisions = tuple(
        replace(
            d,
            action=Action.KEEP,
            reason=f"kept: --rule {rule} leaves {d.rule or 'this'} for another pass ({d.reason})",
        )
        if d.action is Action.DELETE and d.digest in kept
        else d
        for d in repository.decisions
    )
    deletions = tuple(d for d in repository.deletions if d.digest not in kept)
    return replace(repository, decisions=decisions, deletions=deletions)


def check_budget(plan: Plan, safety: Safety) -> str | None:
    """Why the whole plan must not be applied (``safety.max_deletions``), or None."""
    count = plan.manifests_to_delete
    if count > safety.max_deletions:
        return (
            f"the plan deletes {count} manifests, more than safety.max_deletions="
            f"{safety.max_deletions}; nothing was deleted (raise the limit or use --force)"
        )
    return None


# -- rules ----------------------------------------------------------------------------------


def _by_rules(
    policy: Policy,
    repository: Repository,
    now: datetime,
    skip: Mapping[str, object],
    holds: Mapping[str, Hold],
) -> tuple[TagDecision, ...]:
    """Protect first, then restored tags (``holds``), then the first rule that claims each
    tag; the rest are kept.

    Artifact tags (``skip``, never protected ones) are left to ``artifacts.decide``.
    """
    claimed: dict[str, list[Tag]] = {}
    decisions: list[TagDecision] = []
    for tag in repository.tags:
        created = _created(repository.manifests, tag.digest)
        pattern = policy.protecting_pattern(tag.name)
        rule = policy.rule_for(repository.name, tag.name)
        if tag.name in skip:
            continue
        if pattern is not None:
            decisions.append(_keep(tag, created, None, f"protected by {pattern!r}"))
        elif tag.name in holds:
            decisions.append(_keep(tag, created, None, holds[tag.name].reason))
        elif rule is None:
            decisions.append(_keep(tag, created, None, "matched no rule"))
        else:
            claimed.setdefault(rule.name, []).append(tag)
    for rule in policy.rules:
        tags = claimed.get(rule.name, [])
        decisions.extend(_apply_rule(rule, tags, repository.manifests, now))
    return tuple(decisions)


def _apply_rule(
    rule: Rule, tags: Sequence[Tag], manifests: Mapping[str, Manifest], now: datetime
) -> list[TagDecision]:
    """Rank a rule's tags newest first (ties by name) and judge each against its limits."""
    dated = [(t, _created(manifests, t.digest)) for t in tags]
    known = sorted(
        ((t, c) for t, c in dated if c is not None),
        key=lambda item: (item[1], item[0].name),
        reverse=True,
    )
    unknown = [
        _keep(t, None, rule.name, "created time unknown: never deleted by age or rank")
        for t, c in dated
        if c is None
    ]
    ranked = [_judge(rule, tag, created, rank, now) for rank, (tag, created) in enumerate(known, 1)]
    return ranked + unknown


def _judge(rule: Rule, tag: Tag, created: datetime, rank: int, now: datetime) -> TagDecision:
    """One tag's verdict; the reason names every limit that decided it."""
    if rule.keep_last is not None and rank <= rule.keep_last:
        return _keep(tag, created, rule.name, f"within keep_last={rule.keep_last} (#{rank})")
    reasons = [] if rule.keep_last is None else [f"beyond keep_last={rule.keep_last} (#{rank})"]
    if rule.max_age is None:
        return _delete(tag, created, rule.name, reasons[0])
    age = now - created
    limit = format_duration(rule.max_age)
    if age > rule.max_age:
        reasons.append(f"older than {limit} ({describe_age(age, rule.max_age)})")
        return _delete(tag, created, rule.name, " and ".join(reasons))
    reasons.append(f"newer than {limit} ({describe_age(age, rule.max_age)})")
    return _keep(tag, created, rule.name, " but ".join(reasons))


# -- holds: deletion by digest must never take a kept tag or a kept index's child -----------


def _hold_needed_digests(
    decisions: tuple[TagDecision, ...], manifests: Mapping[str, Manifest]
) -> tuple[TagDecision, ...]:
    """Keep every delete-marked tag whose digest a kept tag or kept index still needs.

    Holding one tag can make its index's children needed too, so repeat until stable.
    """
    current = list(decisions)
    while True:
        needed = _needed_by(current, manifests)
        changed = False
        for i, decision in enumerate(current):
            if decision.action is Action.DELETE and decision.digest in needed:
                current[i] = replace(decision, action=Action.KEEP, reason=needed[decision.digest])
                changed = True
        if not changed:
            return tuple(current)


def _needed_by(
    decisions: Sequence[TagDecision], manifests: Mapping[str, Manifest]
) -> dict[str, str]:
    """digest -> why it must stay: held by a kept tag, or a child of a kept manifest."""
    needed: dict[str, str] = {}
    for decision in sorted(decisions, key=lambda d: d.tag):
        if decision.action is Action.KEEP:
            needed.setdefault(decision.digest, f"shares digest with kept tag {decision.tag!r}")
    for decision in sorted(decisions, key=lambda d: d.tag):
        if decision.action is Action.KEEP:
            for child in _descendants(decision.digest, manifests):
                needed.setdefault(child, f"is a platform manifest of kept tag {decision.tag!r}")
    return needed


def _descendants(digest: str, manifests: Mapping[str, Manifest]) -> list[str]:
    """Every manifest below ``digest`` (children of indexes, recursively), without cycles."""
    found: list[str] = []
    stack = list(_children(digest, manifests))
    while stack:
        child = stack.pop()
        if child not in found and child != digest:
            found.append(child)
            stack.extend(_children(child, manifests))
    return found


def _children(digest: str, manifests: Mapping[str, Manifest]) -> tuple[str, ...]:
    manifest = manifests.get(digest)
    return manifest.children if manifest is not None else ()


# -- what to delete -------------------------------------------------------------------------


def _deletions(
    decisions: Sequence[TagDecision], manifests: Mapping[str, Manifest]
) -> tuple[ManifestDeletion, ...]:
    """Images, artifacts, then orphaned index children; each names what must go first."""
    tags_by_digest: dict[str, list[str]] = {}
    for decision in decisions:
        if decision.action is Action.DELETE:
            tags_by_digest.setdefault(decision.digest, []).append(decision.tag)
    kept = _kept_closure(decisions, manifests)
    parents: dict[str, list[str]] = {}
    for digest in sorted(tags_by_digest):
        for child in _descendants(digest, manifests):
            if child not in kept and child not in tags_by_digest:
                parents.setdefault(child, []).append(digest)
    children = [
        ManifestDeletion(child, DeletionKind.CHILD, parents=tuple(sorted(set(owners))))
        for child, owners in sorted(parents.items())
    ]
    subjects = {d.digest: d.subject for d in decisions if d.subject is not None}
    going = set(tags_by_digest) | set(parents)
    tagged = [
        _tagged_deletion(digest, tags, subjects.get(digest), going)
        for digest, tags in sorted(tags_by_digest.items())
    ]
    images = [t for t in tagged if t.kind is DeletionKind.TAGGED]
    return tuple(images + [t for t in tagged if t.kind is DeletionKind.ARTIFACT] + children)


def _tagged_deletion(
    digest: str, tags: list[str], subject: str | None, deleted: set[str]
) -> ManifestDeletion:
    """An artifact waits for its subject when the subject goes in this pass too."""
    if subject is None:
        return ManifestDeletion(digest, DeletionKind.TAGGED, tags=tuple(sorted(tags)))
    parents = (subject,) if subject in deleted else ()
    return ManifestDeletion(
        digest, DeletionKind.ARTIFACT, tags=tuple(sorted(tags)), parents=parents
    )


def _kept_closure(decisions: Iterable[TagDecision], manifests: Mapping[str, Manifest]) -> set[str]:
    kept: set[str] = set()
    for decision in decisions:
        if decision.action is Action.KEEP:
            kept.add(decision.digest)
            kept.update(_descendants(decision.digest, manifests))
    return kept


# -- budget and fail-closed -----------------------------------------------------------------


def _over_fraction(decisions: Sequence[TagDecision], safety: Safety) -> str | None:
    deleting = sum(1 for d in decisions if d.action is Action.DELETE)
    if not decisions or deleting / len(decisions) <= safety.max_delete_fraction:
        return None
    share = round(100 * deleting / len(decisions))
    return (
        f"would delete {deleting} of {len(decisions)} tags ({share}%), more than "
        f"safety.max_delete_fraction={safety.max_delete_fraction:g}"
    )


def _held_back(
    decisions: Sequence[TagDecision], error: str | None, held: str | None
) -> tuple[TagDecision, ...]:
    """Nothing is deleted here; each tag still says what the rules wanted."""
    why = f"not fully read: {error}" if error else str(held)
    return tuple(
        replace(d, action=Action.KEEP, reason=f"held: {why} (rule said delete: {d.reason})")
        if d.action is Action.DELETE
        else d
        for d in decisions
    )


def _within_grace(
    decisions: Sequence[TagDecision],
    repository: Repository,
    grace: timedelta,
    now: datetime,
) -> tuple[TagDecision, ...]:
    """Keep what was pushed (or, when the push time is unknown, built) within the grace."""
    pushed = {t.name: t.pushed for t in repository.tags}
    kept: list[TagDecision] = []
    for decision in decisions:
        moment, verb = pushed.get(decision.tag), "pushed"
        if moment is None:
            moment, verb = decision.created, "created"
        if decision.action is Action.DELETE and moment is not None and now - moment < grace:
            reason = (
                f"{verb} {describe_age(now - moment)} ago, within "
                f"safety.grace_period={format_duration(grace)}"
            )
            decision = replace(decision, action=Action.KEEP, reason=reason)
        kept.append(decision)
    return tuple(kept)


def _fates(images: Sequence[TagDecision], repository: Repository) -> artifacts.Fates:
    """Which image digests stay and which go, for their signatures to follow."""
    kept = _kept_closure(images, repository.manifests)
    deleted = {d.digest for d in images if d.action is Action.DELETE}
    for digest in list(deleted):
        deleted.update(_descendants(digest, repository.manifests))
    return artifacts.Fates(
        kept=frozenset(kept),
        deleted=frozenset(deleted - kept),
        present=frozenset(repository.manifests),
        names=artifacts.first_tag_by_digest(images),
    )


# -- reclaimable bytes ----------------------------------------------------------------------


def reclaimable_bytes(inventory: Inventory, plans: Sequence[RepositoryPlan]) -> int:
    """Bytes of manifests and blobs that only deleted manifests reference, registry-wide.

    Blobs are shared across repositories in the storage, so a layer counts only if no kept
    manifest anywhere (or any manifest of a repository we could not read) references it.
    """
    kept: set[str] = set()
    freed: dict[str, int] = {}
    for repository, repository_plan in zip(inventory.repositories, plans, strict=True):
        deleted = {d.digest for d in repository_plan.deletions}
        for digest, manifest in repository.manifests.items():
            target = freed if digest in deleted else None
            for blob_digest, size in _stored_blobs(manifest):
                if target is None:
                    kept.add(blob_digest)
                else:
                    target[blob_digest] = size
    return sum(size for digest, size in freed.items() if digest not in kept)


def _stored_blobs(manifest: Manifest) -> list[tuple[str, int]]:
    """The manifest's own bytes and its config and layers, as the storage holds them."""
    return [(manifest.digest, manifest.size)] + [(b.digest, b.size) for b in manifest.blobs]


# -- small helpers --------------------------------------------------------------------------


def describe_age(age: timedelta, limit: timedelta | None = None) -> str:
    """An age as people say it: ``41d``, ``5h``, ``12m``; negative ages are clock skew.

    Beside a ``limit`` it never reads like the limit itself: an age of 14d 5h against
    ``max_age: 14d`` is ``14d 5h``, not ``older than 14d (14d)``.
    """
    seconds = int(age.total_seconds())
    if seconds < 0:
        return "in the future"
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    first = next(i for i, (_, size) in enumerate(units) if seconds >= size or size == 1)
    parts, shown = [], 0
    for unit, size in units[first:]:
        amount = (seconds - shown) // size
        parts.append(f"{amount}{unit}")
        shown += amount * size
        if limit is None or shown != int(limit.total_seconds()) or shown == seconds:
            break
    return " ".join(parts)


def _created(manifests: Mapping[str, Manifest], digest: str) -> datetime | None:
    manifest = manifests.get(digest)
    return manifest.created if manifest is not None else None


def _keep(tag: Tag, created: datetime | None, rule: str | None, reason: str) -> TagDecision:
    return TagDecision(tag.name, tag.digest, created, Action.KEEP, rule, reason)


def _delete(tag: Tag, created: datetime | None, rule: str | None, reason: str) -> TagDecision:
    return TagDecision(tag.name, tag.digest, created, Action.DELETE, rule, reason)


def _described(decisions: Iterable[TagDecision], repository: Repository) -> list[TagDecision]:
    """Kind, size and push time of each tag, for the wide report; decides nothing."""
    pushed = {t.name: t.pushed for t in repository.tags}
    children = {c for m in repository.manifests.values() for c in m.children}
    described = []
    for decision in decisions:
        manifest = repository.manifests.get(decision.digest)
        kind = _kind(decision, manifest, children)
        size = _size(manifest, repository.manifests) if manifest else None
        described.append(replace(decision, kind=kind, size=size, pushed=pushed.get(decision.tag)))
    return described


def _kind(decision: TagDecision, manifest: Manifest | None, children: set[str]) -> str:
    if decision.is_artifact:
        return "signature"
    if manifest is not None and manifest.is_index:
        return "index"
    return "platform" if decision.digest in children else "image"


def _size(manifest: Manifest, manifests: Mapping[str, Manifest]) -> int:
    parts = [manifest, *(manifests[c] for c in manifest.children if c in manifests)]
    return sum(m.size + sum(b.size for b in m.blobs) for m in parts)


def _report_order(decisions: Iterable[TagDecision]) -> tuple[TagDecision, ...]:
    """Newest first, unknown ages last, ties by name; artifacts right under their subject."""
    images = sorted(
        (d for d in decisions if not d.is_artifact),
        key=lambda d: (d.created is None, -(d.created.timestamp() if d.created else 0), d.tag),
    )
    attached: dict[str, list[TagDecision]] = {}
    for decision in sorted((d for d in decisions if d.is_artifact), key=lambda d: d.tag):
        attached.setdefault(str(decision.subject), []).append(decision)
    ordered: list[TagDecision] = []
    for image in images:
        ordered.append(image)
        ordered.extend(attached.pop(image.digest, []))
    ordered.extend(_artifacts_of_artifacts(ordered, attached))
    return tuple(ordered)


def _artifacts_of_artifacts(
    placed: list[TagDecision], attached: dict[str, list[TagDecision]]
) -> list[TagDecision]:
    """Place artifacts whose subject is another artifact, then orphans, at the end."""
    rest: list[TagDecision] = []
    for decision in list(placed):
        rest.extend(attached.pop(decision.digest, []))
    for group in attached.values():
        rest.extend(group)
    return rest
