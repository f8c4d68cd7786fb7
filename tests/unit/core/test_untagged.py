"""Manifests no tag points at (``untagged:``): age, grace, what keeps them, deletion order."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from retention.core.image_reference import ImageReference
from retention.core.model import (
    Action,
    DeletionKind,
    Inventory,
    Manifest,
    Plan,
    Repository,
    RunResult,
    Tag,
    UntaggedManifest,
)
from retention.core.plan_file import plan_from_dict
from retention.core.planner import plan
from retention.core.policy import Policy, policy_from_mapping
from retention.core.render import render, to_dict

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
IMAGE = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def policy(untagged: dict[str, Any] | None = None, **extra: Any) -> Policy:
    data: dict[str, Any] = {
        "registry": {"url": "http://127.0.0.1:5000"},
        "rules": [{"name": "all", "keep_last": 1}],
        "safety": {"max_delete_fraction": 1.0},
        "storage": {"path": "/srv/registry"},
        "untagged": {"max_age": "7d"} if untagged is None else untagged,
    }
    data.update(extra)
    return policy_from_mapping(data)


def image(name: str) -> Manifest:
    return Manifest(digest=f"sha256:{name}", media_type=IMAGE, size=100)


def index(name: str, *children: Manifest) -> Manifest:
    return Manifest(
        digest=f"sha256:{name}",
        media_type=INDEX,
        size=200,
        children=tuple(c.digest for c in children),
    )


def loose(manifest: Manifest, since_days: float, linked_days: float = 30) -> UntaggedManifest:
    return UntaggedManifest(
        manifest.digest, linked=days_ago(linked_days), since=days_ago(since_days)
    )


def repository(
    tags: dict[str, Manifest],
    untagged: list[tuple[Manifest, UntaggedManifest]],
    *extra: Manifest,
    name: str = "app",
) -> Repository:
    manifests = {m.digest: m for m in [*tags.values(), *extra, *(m for m, _ in untagged)]}
    return Repository(
        name=name,
        tags=tuple(Tag(t, m.digest, pushed=days_ago(1)) for t, m in tags.items()),
        manifests=manifests,
        untagged=tuple(u for _, u in untagged),
    )


def run(p: Policy, *repositories: Repository) -> Plan:
    return plan(p, Inventory("http://127.0.0.1:5000", repositories), NOW)


def rows(result: Plan) -> dict[str, tuple[Action, str]]:
    return {
        d.digest: (d.action, d.reason) for d in result.repositories[0].decisions if d.is_untagged
    }


def test_a_manifest_untagged_longer_than_max_age_is_deleted_by_digest() -> None:
    old = image("old")
    result = run(policy(), repository({"latest": image("new")}, [(old, loose(old, 9))]))
    assert rows(result)[old.digest] == (Action.DELETE, "untagged for 9d, older than 7d")
    deletion = result.repositories[0].deletions[0]
    assert (deletion.digest, deletion.kind, deletion.tags) == (
        old.digest,
        DeletionKind.UNTAGGED,
        (),
    )


def test_a_manifest_untagged_for_less_than_max_age_is_kept() -> None:
    old = image("old")
    result = run(policy(), repository({"latest": image("new")}, [(old, loose(old, 2))]))
    assert rows(result)[old.digest] == (Action.KEEP, "untagged for 2d, newer than 7d")
    assert result.repositories[0].deletions == ()


def test_age_counts_from_when_it_was_untagged_not_from_its_push() -> None:
    """Pushed 300 days ago but untagged since yesterday: a day old as untagged."""
    old = image("old")
    seen = UntaggedManifest(old.digest, linked=days_ago(300), since=days_ago(1))
    result = run(policy(), repository({"latest": image("new")}, [(old, seen)]))
    assert rows(result)[old.digest][0] is Action.KEEP


def test_a_manifest_pushed_within_the_grace_period_is_kept_however_long_untagged() -> None:
    """A multi-arch push uploads platforms by digest before the index arrives by tag."""
    fresh = image("fresh")
    seen = UntaggedManifest(fresh.digest, linked=NOW - timedelta(minutes=10), since=days_ago(9))
    result = run(policy(), repository({"latest": image("new")}, [(fresh, seen)]))
    action, reason = rows(result)[fresh.digest]
    assert action is Action.KEEP
    assert reason.startswith("pushed 10m ago, within safety.grace_period=1h")


def test_a_repository_the_setting_does_not_cover_keeps_its_untagged_manifests() -> None:
    old = image("old")
    p = policy({"repositories": "team/.*", "max_age": "1d"})
    result = run(p, repository({"latest": image("new")}, [(old, loose(old, 9))]))
    assert rows(result)[old.digest][0] is Action.KEEP
    assert result.repositories[0].deletions == ()


def test_without_the_setting_nothing_untagged_is_deleted() -> None:
    old = image("old")
    data = {"registry": {"url": "http://127.0.0.1:5000"}, "rules": []}
    result = run(policy_from_mapping(data), repository({}, [(old, loose(old, 90))]))
    assert rows(result)[old.digest][0] is Action.KEEP


def test_an_untagged_child_of_a_kept_untagged_index_is_kept() -> None:
    child = image("amd64")
    parent = index("list", child)
    result = run(
        policy(),
        repository(
            {"latest": image("new")},
            [(parent, loose(parent, 2)), (child, loose(child, 30))],
        ),
    )
    action, reason = rows(result)[child.digest]
    assert action is Action.KEEP
    assert reason.startswith(f"child of kept index {parent.digest}")
    assert result.repositories[0].deletions == ()


def test_a_child_of_a_kept_tagged_index_that_the_planner_sees_untagged_is_kept() -> None:
    """The scan leaves those out; should one come through, the planner still keeps it."""
    child = image("amd64")
    kept = index("list", child)
    result = run(policy(), repository({"latest": kept}, [(child, loose(child, 30))]))
    action, reason = rows(result)[child.digest]
    assert (action, reason) == (Action.KEEP, f"child of kept index {kept.digest} ('latest')")


def test_a_child_shared_with_a_deleted_tagged_index_stays_for_a_kept_untagged_index() -> None:
    shared = image("amd64")
    going = index("old-list", shared)
    staying = index("untagged-list", shared)
    result = run(
        policy(),
        repository(
            {"v1": going, "v2": image("new")},
            [(staying, loose(staying, 1))],
            shared,
        ),
    )
    planned = {d.digest for d in result.repositories[0].deletions}
    assert going.digest in planned
    assert shared.digest not in planned


def test_the_subject_of_a_kept_signature_is_kept_untagged() -> None:
    hexdigest = "ab" * 32
    subject = image(hexdigest)
    signature = image("sig")
    tags = {"latest": image("new"), f"sha256-{hexdigest}.sig": signature}
    result = run(policy(), repository(tags, [(subject, loose(subject, 30))]))
    action, reason = rows(result)[subject.digest]
    assert action is Action.KEEP
    assert reason == f"subject of kept signature 'sha256-{hexdigest}.sig'"


def test_an_untagged_index_goes_before_its_children() -> None:
    amd, arm = image("amd64"), image("arm64")
    parent = index("list", amd, arm)
    untagged = [(parent, loose(parent, 9)), (amd, loose(amd, 9)), (arm, loose(arm, 9))]
    result = run(policy(), repository({"latest": image("new")}, untagged))
    deletions = result.repositories[0].deletions
    assert [(d.digest, d.kind, d.parents) for d in deletions] == [
        (parent.digest, DeletionKind.UNTAGGED, ()),
        (amd.digest, DeletionKind.CHILD, (parent.digest,)),
        (arm.digest, DeletionKind.CHILD, (parent.digest,)),
    ]


def test_a_repository_not_fully_read_deletes_nothing_untagged() -> None:
    old = image("old")
    broken = replace(
        repository({"latest": image("new")}, [(old, loose(old, 9))]), error="link missing"
    )
    result = run(policy(), broken)
    action, reason = rows(result)[old.digest]
    assert action is Action.KEEP
    assert reason.startswith("held: not fully read: link missing")
    assert result.repositories[0].deletions == ()


def test_untagged_rows_are_counted_apart_from_tags_and_listed_in_every_format() -> None:
    old = image("old")
    result = run(policy(), repository({"latest": image("new")}, [(old, loose(old, 9))]))
    summary = result.summary
    assert (summary.tags, summary.untagged, summary.untagged_to_delete) == (1, 1, 1)
    assert summary.manifests_to_delete == 1
    report = RunResult(result, dry_run=True)
    only = render(report, "table", only_delete=True)
    assert "<untagged>  DELETE" in only and "untagged for 9d, older than 7d" in only
    assert "1 untagged (1 to delete)" in only
    assert "| <untagged> | DELETE |" in render(report, "markdown")
    assert "untagged  " in render(report, "wide")  # the KIND column


def test_a_saved_plan_with_untagged_rows_reads_back_the_same() -> None:
    amd = image("amd64")
    parent = index("list", amd)
    untagged = [(parent, loose(parent, 9)), (amd, loose(amd, 9))]
    result = run(policy(), repository({"latest": image("new")}, untagged))
    again = plan_from_dict(to_dict(RunResult(result, dry_run=True)))
    assert again.repositories[0].deletions == result.repositories[0].deletions
    assert set(again.repositories[0].decisions) == set(result.repositories[0].decisions)


def test_an_untagged_manifest_in_use_by_digest_is_kept_and_so_is_an_index_of_one() -> None:
    """A workload pinned to app@sha256:... keeps running it after the tag moved on."""
    pinned, amd = image("pinned"), image("amd64")
    parent = index("list", amd)
    untagged = [(pinned, loose(pinned, 30)), (parent, loose(parent, 30)), (amd, loose(amd, 30))]
    used = [
        ImageReference("app", None, pinned.digest, "kubernetes: prod/api"),
        ImageReference("app", None, amd.digest, "file: /etc/in-use.txt"),
    ]
    inventory = Inventory("http://127.0.0.1:5000", (repository({}, untagged),))
    result = plan(policy(), inventory, NOW, used)
    assert rows(result) == {
        pinned.digest: (Action.KEEP, "in use (kubernetes: prod/api)"),
        parent.digest: (Action.KEEP, "in use (file: /etc/in-use.txt)"),
        amd.digest: (Action.KEEP, "in use (file: /etc/in-use.txt)"),
    }
    assert result.repositories[0].deletions == ()


def referrer(name: str, subject: Manifest) -> Manifest:
    """An OCI 1.1 signature or SBOM: pushed by digest, untagged, naming its subject."""
    return replace(image(name), subject=subject.digest)


def test_an_untagged_referrer_of_a_kept_tag_is_kept_however_old() -> None:
    kept = image("new")
    signature = referrer("notation", kept)
    result = run(policy(), repository({"latest": kept}, [(signature, loose(signature, 90))]))
    assert rows(result)[signature.digest] == (
        Action.KEEP,
        f"referrer (signature, attestation or SBOM) of kept {kept.digest}",
    )
    assert result.repositories[0].deletions == ()


def test_an_untagged_referrer_of_a_deleted_tag_goes_once_old_enough() -> None:
    old, new = image("old"), image("new")
    sbom = referrer("sbom", old)
    tags = {"1.0": old, "2.0": new}
    result = run(policy(), repository(tags, [(sbom, loose(sbom, 9))]))
    assert rows(result)[sbom.digest] == (Action.DELETE, "untagged for 9d, older than 7d")


def test_a_young_untagged_referrer_keeps_its_old_untagged_subject() -> None:
    subject = image("old")
    signature = referrer("sig", subject)
    untagged = [(subject, loose(subject, 30)), (signature, loose(signature, 1))]
    result = run(policy(), repository({"latest": image("new")}, untagged))
    assert rows(result)[subject.digest] == (
        Action.KEEP,
        f"subject of kept referrer {signature.digest}",
    )
    assert rows(result)[signature.digest][0] is Action.KEEP


def test_a_referrer_of_an_untagged_image_kept_for_its_age_is_kept_too() -> None:
    subject = image("recent")
    signature = referrer("sig", subject)
    untagged = [(subject, loose(subject, 2)), (signature, loose(signature, 30))]
    result = run(policy(), repository({"latest": image("new")}, untagged))
    assert rows(result)[signature.digest] == (
        Action.KEEP,
        f"referrer (signature, attestation or SBOM) of kept {subject.digest}",
    )
