"""Report rows for the platform manifests of tagged indexes: what stays and what goes with
its index, and why. Decides nothing: the planner has already chosen the deletions.

Deleting a multi-arch index frees nothing of its platforms until they are deleted too, and
keeping one keeps them all; an operator reading the plan should see both, each with its
digest, size and the index that decides it. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from retention.core.manifest_graph import children
from retention.core.model import (
    Action,
    DeletionKind,
    Manifest,
    ManifestDeletion,
    TagDecision,
)

KIND = "platform"


def rows(
    decisions: Sequence[TagDecision],
    deletions: Sequence[ManifestDeletion],
    manifests: Mapping[str, Manifest],
) -> dict[str, list[TagDecision]]:
    """index digest -> a row per child of it that no tag names, in the index's order.

    A child shared by several indexes is listed once, under the first kept one (it stays
    for that one), else under the first deleted one.
    """
    tagged = {d.digest for d in decisions if d.tag}
    going = {d.digest for d in deletions if d.kind is DeletionKind.CHILD}
    owners = _owners(decisions, manifests)
    found: dict[str, list[TagDecision]] = {}
    for child, (parent, tag, kept) in owners.items():
        if child in tagged:
            continue
        found.setdefault(parent, []).append(_row(child, parent, tag, kept, going, manifests))
    for parent, listed in found.items():
        order = list(children(parent, manifests))
        listed.sort(key=lambda row: order.index(row.digest) if row.digest in order else 0)
    return found


def _owners(
    decisions: Sequence[TagDecision], manifests: Mapping[str, Manifest]
) -> dict[str, tuple[str, str, bool]]:
    """child -> (its index, that index's first tag, kept?), kept indexes first."""
    owners: dict[str, tuple[str, str, bool]] = {}
    ordered = sorted(
        (d for d in decisions if d.tag), key=lambda d: (d.action is not Action.KEEP, d.tag)
    )
    for decision in ordered:
        for child in children(decision.digest, manifests):
            owners.setdefault(
                child, (decision.digest, decision.tag, decision.action is Action.KEEP)
            )
    return owners


def _row(
    child: str,
    parent: str,
    tag: str,
    kept: bool,
    going: set[str],
    manifests: Mapping[str, Manifest],
) -> TagDecision:
    manifest = manifests.get(child)
    action = Action.DELETE if child in going and not kept else Action.KEEP
    state = "kept" if kept else "deleted"
    reason = f"child of {state} index {parent} ({tag!r})"
    if not kept and action is Action.KEEP:
        reason += ", kept: another kept manifest needs it"
    size = None if manifest is None else manifest.size + sum(b.size for b in manifest.blobs)
    return TagDecision(
        tag="",
        digest=child,
        created=manifest.created if manifest is not None else None,
        action=action,
        rule=None,
        reason=reason,
        kind=KIND,
        size=size,
    )
