"""Signatures, attestations and SBOMs: which tags are artifacts, and what becomes of them.

Pure. Cosign stores them as tags named ``sha256-<hex>.sig`` / ``.att`` / ``.sbom`` beside
the image; OCI 1.1 artifacts name their image in a ``subject``. Either way they belong to
that subject: no rule matches or counts them, they stay while the subject stays and go with
it. Distribution 2.8 has no referrers API, so a retention tool that treats them as ordinary
tags deletes signatures of kept images or leaves orphans of deleted ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from retention.core.model import Action, Repository, TagDecision

_COSIGN_TAG = re.compile(r"(sha256)-([0-9a-f]{64})\.(sig|att|sbom)")
_KINDS = {"sig": "signature", "att": "attestation", "sbom": "SBOM"}


@dataclass(frozen=True)
class Attachment:
    """An artifact tag and the manifest digest it belongs to."""

    subject: str
    kind: str


def attachments(repository: Repository) -> dict[str, Attachment]:
    """tag name -> what it is attached to, for every artifact tag of the repository."""
    found: dict[str, Attachment] = {}
    for tag in repository.tags:
        cosign = _COSIGN_TAG.fullmatch(tag.name)
        manifest = repository.manifests.get(tag.digest)
        if cosign is not None:
            subject = f"{cosign.group(1)}:{cosign.group(2)}"
            found[tag.name] = Attachment(subject, _KINDS[cosign.group(3)])
        elif manifest is not None and manifest.subject is not None:
            found[tag.name] = Attachment(manifest.subject, "artifact")
    return found


@dataclass(frozen=True)
class Fates:
    """What the rules decided for the repository's images, for artifacts to follow."""

    kept: frozenset[str]
    deleted: frozenset[str]
    present: frozenset[str]
    names: Mapping[str, str]


def decide(
    repository: Repository,
    found: Mapping[str, Attachment],
    fates: Fates,
    delete_orphans: bool,
) -> list[TagDecision]:
    """One decision per artifact tag; an artifact of an artifact follows that one's fate."""
    digest_of = {t.name: t.digest for t in repository.tags}
    artifact_by_digest = {digest_of[name]: name for name in found}
    decided: dict[str, TagDecision] = {}

    def judge(name: str, path: frozenset[str]) -> TagDecision:
        if name in decided:
            return decided[name]
        attachment = found[name]
        parent = artifact_by_digest.get(attachment.subject)
        if parent is None or parent in path:
            decision = _follow(name, digest_of[name], attachment, fates, delete_orphans)
        else:
            action = judge(parent, path | {name}).action
            state = "kept" if action is Action.KEEP else "deleted"
            what = f"{state} {found[parent].kind} {parent!r}"
            decision = _decision(name, digest_of[name], attachment, action, what)
        decided[name] = decision
        return decision

    return [judge(name, frozenset({name})) for name in sorted(found)]


def _follow(
    name: str, digest: str, attachment: Attachment, fates: Fates, delete_orphans: bool
) -> TagDecision:
    subject = attachment.subject
    label = _label(subject, fates.names)
    if subject in fates.kept:
        return _decision(name, digest, attachment, Action.KEEP, f"kept {label}")
    if subject in fates.deleted:
        return _decision(name, digest, attachment, Action.DELETE, f"deleted {label}")
    if subject in fates.present:
        return _decision(
            name, digest, attachment, Action.KEEP, f"untagged {label} (untagged manifests stay)"
        )
    if delete_orphans:
        return _decision(name, digest, attachment, Action.DELETE, f"missing {label} (orphan)")
    return _decision(
        name,
        digest,
        attachment,
        Action.KEEP,
        f"missing {label} (orphan; set artifacts.delete_orphans to delete)",
    )


def _decision(
    name: str, digest: str, attachment: Attachment, action: Action, what: str
) -> TagDecision:
    return TagDecision(
        tag=name,
        digest=digest,
        created=None,
        action=action,
        rule=None,
        reason=f"{attachment.kind} of {what}",
        subject=attachment.subject,
    )


def _label(subject: str, names: Mapping[str, str]) -> str:
    short = subject.split(":", 1)[-1][:12]
    tag = names.get(subject)
    return f"image {short} ({tag})" if tag else f"image {short}"


def first_tag_by_digest(decisions: Sequence[TagDecision]) -> dict[str, str]:
    """A tag to name each digest by in reasons: the first in name order, for stable text."""
    names: dict[str, str] = {}
    for decision in sorted(decisions, key=lambda d: d.tag):
        names.setdefault(decision.digest, decision.tag)
    return names
