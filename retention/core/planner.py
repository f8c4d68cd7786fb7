"""Decide, per repository, which tags and manifests go and why: ``plan(policy, inventory, now)``.

Pure: the same policy, inventory and ``now`` always give the same plan; nothing here reads a
clock, a file or the network, and nothing logs. Every safety invariant lives here, so the
executor can only carry out what a person could have read in the report:

* a tag matched by no rule, protected, in use, or of unknown age (for age) or rank (for
  rank) is kept; a created time a reproducible build wrote is unknown (``tag_times``);
* a digest is deleted only if every tag on it is deleted, and never while a kept index needs
  it as a child (deleting by digest removes every tag on it);
* children of deleted indexes are deleted too, unless a kept manifest still references them;
* a repository that could not be read completely, or whose plan would delete more than
  ``safety.max_delete_fraction`` of its tags, deletes nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from retention.core import artifacts, platforms, semver, untagged
from retention.core.image_reference import ImageReference
from retention.core.manifest_graph import descendants
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
from retention.core.reclaimable import Reclaimable
from retention.core.tag_times import (
    WORDS,
    TagTimes,
    TimeSource,
    describe_age,
    last_pull,
    pick,
    pull_history_start,
    times_by_tag,
    why_unknown,
)


@dataclass(frozen=True)
class _Context:
    """What every rule of one repository judges against."""

    now: datetime
    pull_history_since: datetime | None
    times: Mapping[str, TagTimes]
    shapes: _Shapes


class _Shapes:
    """Each digest's kind and size for the report, worked out once per repository.

    Every tag's decision is made with them (``_decision``), so ``_described`` rebuilds only
    the rows made elsewhere (artifacts, holds that changed the kind): building a frozen
    ``TagDecision`` a second time per tag was a tenth of the planning.
    """

    def __init__(self, repository: Repository) -> None:
        self._manifests = repository.manifests
        self._children = {c for m in repository.manifests.values() for c in m.children}
        self._known: dict[tuple[str, bool], tuple[str, int | None]] = {}

    def of(self, digest: str, is_artifact: bool) -> tuple[str, int | None]:
        key = (digest, is_artifact)
        shape = self._known.get(key)
        if shape is None:
            manifest = self._manifests.get(digest)
            kind = _kind(digest, is_artifact, manifest, self._children)
            size = _size(manifest, self._manifests) if manifest else None
            shape = self._known[key] = (kind, size)
        return shape


def plan(
    policy: Policy,
    inventory: Inventory,
    now: datetime,
    in_use: Iterable[ImageReference] = (),
    *,
    holds: Iterable[Hold] = (),
) -> Plan:
    """The whole plan for one pass; ``now`` is the reference time for every age.

    ``in_use`` are the references the policy's ``in_use`` sources found: those tags and
    digests are kept whatever the rules say. ``holds`` (restored tags) still in force at
    ``now`` are kept like protected tags.
    """
    since = inventory.pull_history_since
    planning = Planning(policy, inventory.registry, now, in_use, holds=holds, history_since=since)
    for repository in inventory.repositories:
        planning.add(repository)
    return planning.finish()


class Planning:
    """The plan made one repository at a time, as a scan hands them over: ``plan()`` in steps.

    A repository's manifests are needed only while it is planned; what the whole plan needs
    afterwards (reclaimable bytes, counted registry-wide because blobs are shared across
    repositories) is kept as it goes, so a scan that reads one repository at a time never
    holds the whole inventory. ``add`` every repository in order, then ``finish`` once:
    the plan is the one ``plan()`` makes from the same repositories.
    """

    def __init__(
        self,
        policy: Policy,
        registry: str,
        now: datetime,
        in_use: Iterable[ImageReference] = (),
        *,
        holds: Iterable[Hold] = (),
        history_since: datetime | None = None,
    ) -> None:
        self._policy, self._registry, self._now = policy, registry, now
        self._history_since = history_since
        self._used: dict[str, list[ImageReference]] = {}
        for reference in in_use:
            self._used.setdefault(reference.repository, []).append(reference)
        self._holds: dict[str, dict[str, Hold]] = {}
        for hold in holds:
            if hold.until > now:
                self._holds.setdefault(hold.repository, {})[hold.tag] = hold
        self._plans: list[RepositoryPlan] = []
        self._reclaimable = Reclaimable()

    def add(self, repository: Repository) -> RepositoryPlan:
        """Plan one repository; it may be dropped once this returns."""
        made = plan_repository(
            self._policy,
            repository,
            self._now,
            self._history_since,
            tuple(self._used.get(repository.name, ())),
            self._holds.get(repository.name, {}),
        )
        self._reclaimable.add(repository, made)
        self._plans.append(made)
        return made

    def finish(self) -> Plan:
        made = Plan(
            registry=self._registry,
            created_at=self._now,
            repositories=tuple(self._plans),
            reclaimable_bytes=self._reclaimable.total(),
        )
        return replace(made, refused=check_budget(made, self._policy.safety))


def plan_repository(
    policy: Policy,
    repository: Repository,
    now: datetime,
    pull_history_since: datetime | None = None,
    in_use: Sequence[ImageReference] = (),
    holds: Mapping[str, Hold] | None = None,
) -> RepositoryPlan:
    """Rules, grace and the digest holds for images; artifacts follow; then the budget."""
    found = {
        name: attachment
        for name, attachment in artifacts.attachments(repository).items()
        if policy.protecting_pattern(name) is None
    }
    images_only = [t for t in repository.tags if t.name not in found]
    times = times_by_tag(images_only, repository.manifests)
    context = _Context(now, pull_history_since, times, _Shapes(repository))
    images = _by_rules(policy, repository, context, found, in_use, holds or {})
    images = _within_grace(images, repository, policy.safety.grace_period, now)
    images = _hold_needed_digests(images, repository.manifests)
    held = repository.error is None and _over_fraction(images, policy.safety)
    if repository.error is not None or held:
        images = _held_back(images, repository.error, held or None)
    fates = _fates(images, repository)
    attached = artifacts.decide(repository, found, fates, policy.artifacts.delete_orphans)
    decisions = _hold_needed_digests((*images, *attached), repository.manifests)
    grace = policy.safety.grace_period
    loose = untagged.decide(policy.untagged, repository, decisions, now, grace, in_use)
    if repository.error is not None or held:
        loose = _held_back(loose, repository.error, held or None)
        return RepositoryPlan(
            name=repository.name,
            decisions=_rows(decisions, loose, (), repository, context.shapes),
            error=repository.error,
            held=held or None,
        )
    also_kept = untagged.kept_closure(loose, repository.manifests)
    deletions = (
        *_deletions(decisions, repository.manifests, also_kept),
        *untagged.deletions(loose, repository.manifests),
    )
    return RepositoryPlan(
        name=repository.name,
        decisions=_rows(decisions, loose, deletions, repository, context.shapes),
        deletions=deletions,
    )


def _rows(
    decisions: Sequence[TagDecision],
    loose: Sequence[TagDecision],
    deletions: Sequence[ManifestDeletion],
    repository: Repository,
    shapes: _Shapes,
) -> tuple[TagDecision, ...]:
    """Tags in report order, each index's platforms under it, then the untagged manifests."""
    children = platforms.rows(decisions, deletions, repository.manifests)
    ordered: list[TagDecision] = []
    for row in _report_order(_described(decisions, shapes)):
        ordered.append(row)
        ordered.extend(children.pop(row.digest, []))
    sized = [
        replace(r, size=_size(repository.manifests[r.digest], repository.manifests))
        if r.digest in repository.manifests
        else r
        for r in loose
    ]
    return (*ordered, *sorted(sized, key=lambda r: r.digest))


def only_rule(plan: Plan, rule: str) -> Plan:
    """The plan cut down to the deletions of one rule (``--rule``): everything else is kept.

    Decided on the whole plan first, so each tag still belongs to the rule that claims it
    (the first match); then a deletion is left out when any tag on its digest belongs to
    another rule, and so is every child or artifact whose parent was left out. Left-out
    tags read ``kept: --rule NAME leaves rule R's deletions for another pass``.
    """
    return replace(plan, repositories=tuple(_only_rule(r, rule) for r in plan.repositories))


def _only_rule(repository: RepositoryPlan, rule: str) -> RepositoryPlan:
    rows, deletions = tuple(repository.decisions), tuple(repository.deletions)  # built once
    rule_of = {d.tag: d.rule for d in rows}
    kept = {
        d.digest
        for d in deletions
        if d.kind is DeletionKind.TAGGED and any(rule_of.get(tag) != rule for tag in d.tags)
    }
    kept |= {d.digest for d in deletions if d.kind is not DeletionKind.TAGGED and not d.parents}
    grew = True
    while grew:
        more = {d.digest for d in deletions if set(d.parents) & kept} - kept
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
        for d in rows
    )
    return repository.with_rows(decisions, (d for d in deletions if d.digest not in kept))


def check_budget(plan: Plan, safety: Safety) -> str | None:
    """Why the whole plan must not be applied (``safety.max_deletions``), or None."""
    count = plan.manifests_to_delete
    if count > safety.max_deletions:
        return (
            f"the plan deletes {count} manifests, more than safety.max_deletions="
            f"{safety.max_deletions}; nothing was deleted (raise the limit or use --force)"
        )
    return None


def hold_in_use(plan: Plan, in_use: Iterable[ImageReference]) -> Plan:
    """A saved plan checked against what runs now: deletions of images in use are dropped.

    ``retention apply`` carries out a plan made earlier; an image deployed since must not go.
    A deletion is held when a reference names its digest or one of its tags; holding an
    index holds its platform manifests and artifacts, and a held platform or artifact holds
    the index or image it belongs to (both ways through ``parents``).
    """
    used: dict[str, list[ImageReference]] = {}
    for reference in in_use:
        used.setdefault(reference.repository, []).append(reference)
    repositories = tuple(_hold_saved(r, used.get(r.name, [])) for r in plan.repositories)
    return replace(plan, repositories=repositories)


def _hold_saved(repository: RepositoryPlan, in_use: Sequence[ImageReference]) -> RepositoryPlan:
    if not in_use:
        return repository
    deletions = tuple(repository.deletions)  # built once: the plan keeps them packed
    held: dict[str, str] = {}  # digest -> the first user's origin, for the reason
    for reference in sorted(in_use, key=lambda r: r.origin):
        for deletion in deletions:
            if reference.digest == deletion.digest or reference.tag in deletion.tags:
                held.setdefault(deletion.digest, reference.origin)
    if not held:
        return repository
    _spread_holds(deletions, held)
    return repository.with_rows(
        (_held_decision(d, held) for d in repository.decisions),
        (d for d in deletions if d.digest not in held),
    )


def _spread_holds(deletions: Sequence[ManifestDeletion], held: dict[str, str]) -> None:
    """Hold parents of held manifests and children of held parents, until nothing changes."""
    going = {d.digest for d in deletions}
    changed = True
    while changed:
        changed = False
        for deletion in deletions:
            parents = [p for p in deletion.parents if p in going]
            if deletion.digest in held:
                fresh = [p for p in parents if p not in held]
                held.update((p, held[deletion.digest]) for p in fresh)
            else:
                fresh = [p for p in parents if p in held][:1]
                if fresh:
                    held[deletion.digest] = held[fresh[0]]
            changed = changed or bool(fresh)


def _held_decision(decision: TagDecision, held: Mapping[str, str]) -> TagDecision:
    if decision.action is not Action.DELETE or decision.digest not in held:
        return decision
    reason = f"in use ({held[decision.digest]}) when applied; the plan said: {decision.reason}"
    return replace(decision, action=Action.KEEP, reason=reason)


# -- rules ----------------------------------------------------------------------------------


def _by_rules(
    policy: Policy,
    repository: Repository,
    context: _Context,
    skip: Mapping[str, object],
    in_use: Sequence[ImageReference],
    holds: Mapping[str, Hold],
) -> tuple[TagDecision, ...]:
    """Protect first, then what is in use, then restored tags (``holds``), then the first
    rule that claims each tag.

    Tags no rule claims are kept. Artifact tags (``skip``, never protected ones) are left
    to ``artifacts.decide``.
    """
    claimed: dict[str, list[Tag]] = {}
    decisions: list[TagDecision] = []
    for tag in repository.tags:
        created = _created(repository.manifests, tag.digest)
        pattern = policy.protecting_pattern(tag.name)
        rule = policy.rule_for(repository.name, tag.name)
        if tag.name in skip:
            continue
        using = _in_use_by(tag, repository.manifests, in_use)
        if pattern is not None:
            decisions.append(_keep(tag, created, None, f"protected by {pattern!r}", context))
        elif using is not None:
            decisions.append(_keep(tag, created, rule.name if rule else None, using, context))
        elif tag.name in holds:
            decisions.append(_keep(tag, created, None, holds[tag.name].reason, context))
        elif rule is None:
            decisions.append(_keep(tag, created, None, "matched no rule", context))
        else:
            claimed.setdefault(rule.name, []).append(tag)
    for rule in policy.rules:
        tags = claimed.get(rule.name, [])
        decisions.extend(_apply_rule(rule, tags, repository.manifests, context))
    return tuple(decisions)


def _in_use_by(
    tag: Tag, manifests: Mapping[str, Manifest], in_use: Sequence[ImageReference]
) -> str | None:
    """``in use (origin)`` when a reference names this tag, its digest or one of its platforms.

    A digest in use keeps every tag on it; an index is kept when a platform manifest of it
    is in use (a runtime pulls the child by digest through the index).
    """
    if not in_use:
        return None
    below = set(descendants(tag.digest, manifests))
    direct = sorted(r.origin for r in in_use if r.tag == tag.name or r.digest == tag.digest)
    if direct:
        return _in_use_reason(direct)
    platform = sorted(r.origin for r in in_use if r.digest in below)
    return _in_use_reason(platform, " of a platform manifest") if platform else None


def _in_use_reason(origins: Sequence[str], what: str = "") -> str:
    unique = sorted(set(origins))
    more = f" and {len(unique) - 1} more" if len(unique) > 1 else ""
    return f"in use{what} ({unique[0]}{more})"


@dataclass(frozen=True)
class _Rank:
    """A tag's place in its rule's order, and the words for it (``#3 by push time``)."""

    position: int
    source: str
    text: str


def _apply_rule(
    rule: Rule, tags: Sequence[Tag], manifests: Mapping[str, Manifest], context: _Context
) -> list[TagDecision]:
    """Rank a rule's tags (``order_by``) and judge each against its limits."""
    ranks = _ranks(rule, tags, context.times)
    return [
        _judge(rule, tag, _created(manifests, tag.digest), ranks.get(tag.name), context)
        for tag in tags
    ]


def _ranks(rule: Rule, tags: Sequence[Tag], times: Mapping[str, TagTimes]) -> dict[str, _Rank]:
    """Newest (or highest version) first; a tag with nothing to rank it by gets no place.

    ``semver``: tags that are SemVer 2.0 first, by precedence; then the others by push time,
    else created time, newest first. Ties go by name, last name first.
    """
    if rule.order_by != "semver":
        return _ranked_by_time(tags, times, rule.order_by, start=1, prefix="")
    versions = {t.name: semver.parse(t.name) for t in tags}
    releases = sorted(
        (t for t in tags if versions[t.name] is not None),
        key=lambda t: (versions[t.name], t.name),
        reverse=True,
    )
    ranks = {t.name: _Rank(i, "semver", f"#{i} by semver") for i, t in enumerate(releases, 1)}
    others = [t for t in tags if versions[t.name] is None]
    after = "not semver, after the semver tags by "  # the stated fallback order
    ranks.update(_ranked_by_time(others, times, None, start=len(releases) + 1, prefix=after))
    return ranks


def _ranked_by_time(
    tags: Sequence[Tag],
    times: Mapping[str, TagTimes],
    by: str | None,
    *,
    start: int,
    prefix: str,
) -> dict[str, _Rank]:
    moments = {t.name: pick(times[t.name], _source(by)) for t in tags}
    known = sorted(
        ((m, t.name) for t in tags if (m := moments[t.name]) is not None),
        key=lambda item: (item[0].at, item[1]),
        reverse=True,
    )
    ranks = {}
    for position, (moment, name) in enumerate(known, start):
        words = f", {prefix}" if prefix else " by "
        ranks[name] = _Rank(position, moment.source, f"#{position}{words}{WORDS[moment.source]}")
    return ranks


@dataclass(frozen=True)
class _Age:
    """How old a tag counts as, by ``age_by``, and the words for it (``41d since pushed``)."""

    value: timedelta
    source: str
    text: str


def _age(rule: Rule, times: TagTimes, context: _Context) -> _Age | str:
    """The tag's age by ``age_by``, or why it is unknown."""
    now = context.now
    if rule.age_by == "pulled":
        pulled = last_pull(times)
        if pulled is not None:
            age = now - pulled
            return _Age(age, "pulled", f"last pulled {describe_age(age)} ago")
        start = pull_history_start(times, context.pull_history_since)
        if start is None:
            return "no pull history"
        age = now - start
        return _Age(age, "pulled", f"not pulled in {describe_age(age)} of pull history")
    moment = pick(times, _source(rule.age_by))
    if moment is None:
        return why_unknown(times, _source(rule.age_by))
    age = now - moment.at
    return _Age(age, moment.source, f"{describe_age(age, rule.max_age)} since {moment.source}")


def _recent_pull(rule: Rule, times: TagTimes, context: _Context) -> tuple[bool, str] | None:
    """``pulled_within``: (keep?, words); a pull history shorter than the window is unknown."""
    if rule.pulled_within is None:
        return None
    window = format_duration(rule.pulled_within)
    last = last_pull(times)
    if last is not None:
        age = context.now - last
        pulled = f"pulled {describe_age(age)} ago"
        if age <= rule.pulled_within:
            return True, f"{pulled}, within pulled_within={window}"
        return False, f"not pulled within {window} (last {pulled})"
    start = pull_history_start(times, context.pull_history_since)
    if start is None:
        return True, f"no pull history: unknown whether pulled within {window}"
    watched = context.now - start
    if watched < rule.pulled_within:
        return True, (
            f"not pulled in {describe_age(watched)} of pull history, shorter than "
            f"pulled_within={window}: unknown"
        )
    return False, f"not pulled within {window} ({describe_age(watched)} of pull history)"


def _judge(
    rule: Rule, tag: Tag, created: datetime | None, rank: _Rank | None, context: _Context
) -> TagDecision:
    """One tag's verdict; the reason names every limit that decided it and by what time."""
    times = context.times[tag.name]
    age = _age(rule, times, context) if rule.max_age is not None else None
    ranked_by = rank.source if rank is not None else None
    aged_by = age.source if isinstance(age, _Age) else None

    shape = context.shapes.of(tag.digest, False)

    def keep(reason: str) -> TagDecision:
        return _decision(tag, created, Action.KEEP, rule.name, reason, shape, ranked_by, aged_by)

    def delete(reason: str) -> TagDecision:
        return _decision(tag, created, Action.DELETE, rule.name, reason, shape, ranked_by, aged_by)

    pull = _recent_pull(rule, times, context)
    if pull is not None and pull[0]:
        return keep(pull[1])
    reasons = [] if pull is None else [pull[1]]
    if rule.keep_last is not None:
        if rank is None:
            why = _why_unranked(rule, times)
            both = isinstance(age, str) and age == why
            return keep(f"{why}: never deleted by {'age or rank' if both else 'rank'}")
        if rank.position <= rule.keep_last:
            return keep(f"within keep_last={rule.keep_last} ({rank.text})")
        reasons.insert(0, f"beyond keep_last={rule.keep_last} ({rank.text})")
    if rule.max_age is None or age is None:
        return delete(" and ".join(reasons))
    if isinstance(age, str):
        return keep(f"{age}: never deleted by age")
    limit = format_duration(rule.max_age)
    if age.value > rule.max_age:
        return delete(" and ".join([*reasons, f"older than {limit} ({age.text})"]))
    return keep(" but ".join([*reasons, f"newer than {limit} ({age.text})"]))


def _why_unranked(rule: Rule, times: TagTimes) -> str:
    """Why a tag has no place in its rule's order (only time-ranked tags can lack one)."""
    if rule.order_by == "semver":
        return f"not semver, and {why_unknown(times, None)}"
    return why_unknown(times, _source(rule.order_by))


def _source(by: str | None) -> TimeSource | None:
    """``order_by``/``age_by`` values that name a time (not semver or pulled)."""
    if by == "pushed":
        return "pushed"
    if by == "created":
        return "created"
    return None


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
            for child in descendants(decision.digest, manifests):
                needed.setdefault(child, f"is a platform manifest of kept tag {decision.tag!r}")
    return needed


# -- what to delete -------------------------------------------------------------------------


def _deletions(
    decisions: Sequence[TagDecision],
    manifests: Mapping[str, Manifest],
    also_kept: set[str] | None = None,
) -> tuple[ManifestDeletion, ...]:
    """Images, artifacts, then orphaned index children; each names what must go first.

    ``also_kept``: what kept untagged manifests need (an untagged index kept may share a
    child with a tagged index that goes).
    """
    tags_by_digest: dict[str, list[str]] = {}
    for decision in decisions:
        if decision.action is Action.DELETE:
            tags_by_digest.setdefault(decision.digest, []).append(decision.tag)
    kept = _kept_closure(decisions, manifests) | (also_kept or set())
    parents: dict[str, list[str]] = {}
    for digest in sorted(tags_by_digest):
        for child in descendants(digest, manifests):
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
            kept.update(descendants(decision.digest, manifests))
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
        deleted.update(descendants(digest, repository.manifests))
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
    counted = Reclaimable()
    for repository, repository_plan in zip(inventory.repositories, plans, strict=True):
        counted.add(repository, repository_plan)
    return counted.total()


# -- small helpers --------------------------------------------------------------------------


def _created(manifests: Mapping[str, Manifest], digest: str) -> datetime | None:
    manifest = manifests.get(digest)
    return manifest.created if manifest is not None else None


def _keep(
    tag: Tag, created: datetime | None, rule: str | None, reason: str, context: _Context
) -> TagDecision:
    shape = context.shapes.of(tag.digest, False)
    return _decision(tag, created, Action.KEEP, rule, reason, shape)


def _decision(
    tag: Tag,
    created: datetime | None,
    action: Action,
    rule: str | None,
    reason: str,
    shape: tuple[str, int | None],
    ranked_by: str | None = None,
    aged_by: str | None = None,
) -> TagDecision:
    """A tag's fate, carrying the times it was scanned with and its kind and size (the
    report shows them). Positional: keywords cost a third more, a hundred thousand times."""
    return TagDecision(
        tag.name,
        tag.digest,
        created,
        action,
        rule,
        sys.intern(reason),
        None,
        shape[0],
        shape[1],
        tag.pushed,
        tag.pulled,
        ranked_by,
        aged_by,
    )


def _described(decisions: Iterable[TagDecision], shapes: _Shapes) -> list[TagDecision]:
    """Kind and size of each tag, for the wide report; decides nothing.

    Reasons are interned: a plan holds one per tag, and most repeat across repositories
    (``within keep_last=10 (#3 by created time)``), so equal ones are one string, not one
    per tag (a tenth of a large plan's memory). A decision the rules made already has both
    (``_decision``) and is kept as it is.
    """
    described = []
    for decision in decisions:
        kind, size = shapes.of(decision.digest, decision.is_artifact)
        reason = sys.intern(decision.reason)
        if decision.kind == kind and decision.size == size and decision.reason is reason:
            described.append(decision)
        else:
            described.append(_with_kind(decision, kind, size))
    return described


def _with_kind(decision: TagDecision, kind: str, size: int | None) -> TagDecision:
    """``replace(decision, kind=, size=)`` for the hot path: a third of its cost per tag."""
    return TagDecision(
        tag=decision.tag,
        digest=decision.digest,
        created=decision.created,
        action=decision.action,
        rule=decision.rule,
        reason=sys.intern(decision.reason),
        subject=decision.subject,
        kind=kind,
        size=size,
        pushed=decision.pushed,
        pulled=decision.pulled,
        ranked_by=decision.ranked_by,
        aged_by=decision.aged_by,
    )


def _kind(digest: str, is_artifact: bool, manifest: Manifest | None, children: set[str]) -> str:
    if is_artifact:
        return "signature"
    if manifest is not None and manifest.is_index:
        return "index"
    return "platform" if digest in children else "image"


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
