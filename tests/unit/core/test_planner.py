"""The planner's rules, holds and budgets, on hand-built inventories with a fixed NOW."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from retention.core.model import (
    Action,
    Blob,
    DeletionKind,
    Inventory,
    Manifest,
    Plan,
    Repository,
    Tag,
)
from retention.core.planner import Planning, check_budget, describe_age, plan
from retention.core.policy import Policy, policy_from_mapping

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
IMAGE = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def policy(*rules: dict[str, Any], protect: tuple[str, ...] = (), **extra: Any) -> Policy:
    data: dict[str, Any] = {
        "registry": {"url": "http://127.0.0.1:5000"},
        "rules": list(rules),
        "protect": list(protect),
        "safety": {"max_delete_fraction": 1.0},
    }
    data.update(extra)
    return policy_from_mapping(data)


def image(name: str, age_days: float | None, *layers: tuple[str, int]) -> Manifest:
    """An image manifest whose digest is derived from ``name``, with optional layers."""
    created = None if age_days is None else days_ago(age_days)
    blobs = tuple(Blob(d, s) for d, s in layers)
    return Manifest(
        digest=f"sha256:{name}", media_type=IMAGE, size=100, created=created, blobs=blobs
    )


def index(name: str, *children: Manifest) -> Manifest:
    newest = max((c.created for c in children if c.created), default=None)
    return Manifest(
        digest=f"sha256:{name}",
        media_type=INDEX,
        size=200,
        created=newest,
        children=tuple(c.digest for c in children),
    )


def repo(name: str, tags: dict[str, Manifest], *extra: Manifest) -> Repository:
    manifests = {m.digest: m for m in [*tags.values(), *extra]}
    return Repository(
        name=name,
        tags=tuple(Tag(t, m.digest) for t, m in tags.items()),
        manifests=manifests,
    )


def decisions(result: Plan, repository: int = 0) -> dict[str, tuple[Action, str]]:
    return {d.tag: (d.action, d.reason) for d in result.repositories[repository].decisions if d.tag}


def actions(result: Plan, repository: int = 0) -> dict[str, str]:
    return {tag: action.value for tag, (action, _) in decisions(result, repository).items()}


def run(p: Policy, *repositories: Repository) -> Plan:
    return plan(p, Inventory("http://127.0.0.1:5000", repositories), NOW)


def five_builds() -> Repository:
    return repo(
        "app/web", {f"b{i}": image(f"b{i}", age) for i, age in enumerate([1, 5, 10, 40, 60])}
    )


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        pytest.param(
            {"keep_last": 2},
            {"b0": "keep", "b1": "keep", "b2": "delete", "b3": "delete", "b4": "delete"},
            id="keep_last alone deletes beyond N",
        ),
        pytest.param(
            {"max_age": "30d"},
            {"b0": "keep", "b1": "keep", "b2": "keep", "b3": "delete", "b4": "delete"},
            id="max_age alone deletes older tags",
        ),
        pytest.param(
            {"keep_last": 1, "max_age": "7d"},
            {"b0": "keep", "b1": "keep", "b2": "delete", "b3": "delete", "b4": "delete"},
            id="both: beyond N and older",
        ),
        pytest.param(
            {"keep_last": 4, "max_age": "7d"},
            {"b0": "keep", "b1": "keep", "b2": "keep", "b3": "keep", "b4": "delete"},
            id="both: keep_last protects old tags within N",
        ),
        pytest.param(
            {"keep_last": 0},
            {"b0": "delete", "b1": "delete", "b2": "delete", "b3": "delete", "b4": "delete"},
            id="keep_last zero deletes all",
        ),
        pytest.param(
            {"keep_last": 10},
            {"b0": "keep", "b1": "keep", "b2": "keep", "b3": "keep", "b4": "keep"},
            id="keep_last above count keeps all",
        ),
    ],
)
def test_rule_limits_decide_each_tag(rule: dict[str, Any], expected: dict[str, str]) -> None:
    result = run(policy({"name": "builds", **rule}), five_builds())
    assert actions(result) == expected


def test_reason_names_rank_and_age_for_a_deleted_tag() -> None:
    result = run(policy({"name": "builds", "keep_last": 2, "max_age": "30d"}), five_builds())
    assert decisions(result)["b3"] == (
        Action.DELETE,
        "beyond keep_last=2 (#4 by created time) and older than 30d (40d since created)",
    )
    assert decisions(result)["b2"] == (
        Action.KEEP,
        "beyond keep_last=2 (#3 by created time) but newer than 30d (10d since created)",
    )
    assert decisions(result)["b0"] == (Action.KEEP, "within keep_last=2 (#1 by created time)")


def test_tags_matched_by_no_rule_are_kept() -> None:
    result = run(policy({"name": "rc", "match": "rc-.*", "keep_last": 0}), five_builds())
    assert set(actions(result).values()) == {"keep"}
    assert decisions(result)["b4"][1] == "matched no rule"


def test_first_matching_rule_wins_and_later_rules_do_not_see_its_tags() -> None:
    tags = {"v1": image("v1", 50), "v2": image("v2", 40), "dev-1": image("d1", 51)}
    p = policy(
        {"name": "releases", "match": r"v\d+", "keep_last": 5},
        {"name": "everything", "keep_last": 0},
    )
    result = run(p, repo("app", tags))
    assert actions(result) == {"v1": "keep", "v2": "keep", "dev-1": "delete"}
    by_tag = {d.tag: d.rule for d in result.repositories[0].decisions}
    assert by_tag == {"v1": "releases", "v2": "releases", "dev-1": "everything"}


def test_excluded_tags_fall_through_to_later_rules() -> None:
    tags = {"v1": image("v1", 50), "v1-rc1": image("rc", 51)}
    p = policy(
        {"name": "releases", "match": "v.*", "exclude": r".*-rc\d+", "keep_last": 5},
        {"name": "rcs", "match": ".*-rc.*", "max_age": "7d"},
    )
    result = run(p, repo("app", tags))
    assert actions(result) == {"v1": "keep", "v1-rc1": "delete"}
    assert {d.tag: d.rule for d in result.repositories[0].decisions}["v1-rc1"] == "rcs"


def test_repository_pattern_must_match_fully() -> None:
    p = policy({"name": "app", "repositories": "app", "keep_last": 0})
    result = run(p, repo("app/web", {"a": image("a", 9)}), repo("app", {"a": image("a", 9)}))
    assert actions(result, 0) == {"a": "keep"}
    assert actions(result, 1) == {"a": "delete"}


def test_tag_pattern_must_match_fully_not_as_a_prefix() -> None:
    p = policy({"name": "v", "match": "v1", "keep_last": 0})
    result = run(p, repo("app", {"v1": image("a", 9), "v10": image("b", 8)}))
    assert actions(result) == {"v1": "delete", "v10": "keep"}


def test_protected_tags_are_never_deleted_whatever_the_rules_say() -> None:
    p = policy({"name": "all", "keep_last": 0}, protect=("latest", "stable-.*"))
    tags = {"latest": image("a", 90), "stable-1": image("b", 91), "old": image("c", 92)}
    result = run(p, repo("app", tags))
    assert actions(result) == {"latest": "keep", "stable-1": "keep", "old": "delete"}
    assert decisions(result)["stable-1"][1] == "protected by 'stable-.*'"


@pytest.mark.parametrize(
    "rule",
    [{"max_age": "1d"}, {"keep_last": 0}, {"keep_last": 0, "max_age": "1d"}],
    ids=["max_age", "keep_last", "both"],
)
def test_tags_of_unknown_age_are_never_deleted(rule: dict[str, Any]) -> None:
    tags = {"dated": image("a", 90), "undated": image("b", None)}
    result = run(policy({"name": "r", **rule}), repo("app", tags))
    assert actions(result) == {"dated": "delete", "undated": "keep"}
    assert "created time unknown" in decisions(result)["undated"][1]


def test_unknown_ages_do_not_take_keep_last_slots() -> None:
    tags = {"undated": image("u", None), "new": image("n", 1), "old": image("o", 90)}
    result = run(policy({"name": "r", "keep_last": 1}), repo("app", tags))
    assert actions(result) == {"undated": "keep", "new": "keep", "old": "delete"}


def test_equal_created_times_rank_deterministically_by_tag_name() -> None:
    same = days_ago(10)
    manifests = {t: Manifest(f"sha256:{t}", IMAGE, 1, created=same) for t in "ab"}
    manifests |= {t: image(t, 20 + i) for i, t in enumerate("cde")}  # two of five: not most
    first = run(policy({"name": "r", "keep_last": 1}), repo("app", manifests))
    again = run(
        policy({"name": "r", "keep_last": 1}), repo("app", dict(reversed(manifests.items())))
    )
    expected = {"b": "keep", "a": "delete", "c": "delete", "d": "delete", "e": "delete"}
    assert actions(first) == actions(again) == expected


def test_digest_shared_with_kept_tag_is_not_deleted() -> None:
    shared = image("shared", 90)
    tags = {"build-1": shared, "stable": shared, "build-2": image("other", 91)}
    p = policy({"name": "builds", "match": "build-.*", "keep_last": 0})
    result = run(p, repo("app", tags))
    assert decisions(result)["build-1"] == (Action.KEEP, "shares digest with kept tag 'stable'")
    assert [d.digest for d in result.repositories[0].deletions] == ["sha256:other"]


def test_digest_whose_tags_are_all_deleted_is_deleted_once_with_every_tag() -> None:
    shared = image("shared", 90)
    p = policy({"name": "all", "keep_last": 0})
    result = run(p, repo("app", {"a": shared, "b": shared}))
    (deletion,) = result.repositories[0].deletions
    assert deletion.digest == "sha256:shared"
    assert deletion.tags == ("a", "b")
    assert deletion.kind is DeletionKind.TAGGED


def test_children_of_a_deleted_index_are_deleted_after_it() -> None:
    amd, arm = image("amd", 90, ("sha256:l1", 10)), image("arm", 90, ("sha256:l2", 20))
    p = policy({"name": "all", "keep_last": 0})
    result = run(p, repo("app", {"old": index("idx", amd, arm)}, amd, arm))
    kinds = [(d.digest, d.kind) for d in result.repositories[0].deletions]
    assert kinds == [
        ("sha256:idx", DeletionKind.TAGGED),
        ("sha256:amd", DeletionKind.CHILD),
        ("sha256:arm", DeletionKind.CHILD),
    ]
    assert result.repositories[0].deletions[1].parents == ("sha256:idx",)


def test_child_shared_with_a_kept_index_is_not_deleted() -> None:
    amd, arm, ppc = image("amd", 90), image("arm", 91), image("ppc", 92)
    tags = {"old": index("old-idx", amd, arm), "new": index("new-idx", arm, ppc)}
    p = policy({"name": "r", "match": "old", "keep_last": 0})
    result = run(p, repo("app", tags, amd, arm, ppc))
    deleted = [d.digest for d in result.repositories[0].deletions]
    assert deleted == ["sha256:old-idx", "sha256:amd"]


def test_tag_on_a_platform_of_a_kept_index_is_held() -> None:
    amd, arm = image("amd", 91), image("arm", 90)
    tags = {"multi": index("idx", amd, arm), "amd-only": amd}
    p = policy({"name": "r", "match": "amd-only", "keep_last": 0})
    result = run(p, repo("app", tags, arm))
    assert decisions(result)["amd-only"] == (
        Action.KEEP,
        "is a platform manifest of kept tag 'multi'",
    )
    assert result.repositories[0].deletions == ()


def test_tagged_child_kept_by_its_own_tag_survives_its_index_deletion() -> None:
    amd, arm = image("amd", 1), image("arm", 90)
    tags = {"multi": index("idx", amd, arm), "amd-latest": amd}
    p = policy({"name": "r", "match": "multi", "keep_last": 0})
    result = run(p, repo("app", tags, arm))
    deleted = [d.digest for d in result.repositories[0].deletions]
    assert deleted == ["sha256:idx", "sha256:arm"]


def test_repository_with_a_scan_error_deletes_nothing_and_says_why() -> None:
    broken = Repository(
        "app",
        tags=(Tag("a", "sha256:a"),),
        manifests={"sha256:a": image("a", 90)},
        error="tag 'b' vanished during the scan",
    )
    result = run(policy({"name": "r", "keep_last": 0}), broken)
    only = result.repositories[0]
    assert only.deletions == ()
    assert only.error == "tag 'b' vanished during the scan"
    assert only.held is None
    assert only.decisions[0].action is Action.KEEP
    assert "rule said delete: beyond keep_last=0 (#1 by created time)" in only.decisions[0].reason


def test_repository_over_the_delete_fraction_deletes_nothing() -> None:
    p = policy({"name": "r", "keep_last": 0}, safety={"max_delete_fraction": 0.5})
    result = run(p, five_builds())
    assert result.repositories[0].deletions == ()
    assert result.repositories[0].held == (
        "would delete 5 of 5 tags (100%), more than safety.max_delete_fraction=0.5"
    )
    assert result.repositories[0].error is None


def test_repository_at_the_delete_fraction_is_deleted() -> None:
    p = policy({"name": "r", "keep_last": 1}, safety={"max_delete_fraction": 0.5})
    result = run(p, repo("app", {"a": image("a", 1), "b": image("b", 2)}))
    assert [d.digest for d in result.repositories[0].deletions] == ["sha256:b"]


def test_default_fraction_never_empties_a_repository() -> None:
    p = policy_from_mapping(
        {"registry": {"url": "http://r:5000"}, "rules": [{"name": "r", "keep_last": 0}]}
    )
    result = plan(p, Inventory("r", (five_builds(),)), NOW)
    assert result.repositories[0].deletions == ()
    assert result.repositories[0].skipped is not None


def test_max_deletions_budget_names_the_limit() -> None:
    result = run(policy({"name": "r", "keep_last": 0}), five_builds())
    assert check_budget(result, policy(safety={"max_deletions": 5}).safety) is None
    message = check_budget(result, policy(safety={"max_deletions": 4}).safety)
    assert message is not None and "safety.max_deletions=4" in message


def test_reclaimable_bytes_count_blobs_only_deleted_manifests_use() -> None:
    old = image("old", 90, ("sha256:shared", 1000), ("sha256:only-old", 50))
    new = image("new", 1, ("sha256:shared", 1000), ("sha256:only-new", 70))
    elsewhere = image("x", 1, ("sha256:only-old-too", 5))
    p = policy({"name": "r", "repositories": "app", "keep_last": 1})
    result = run(p, repo("app", {"old": old, "new": new}), repo("other", {"x": elsewhere}))
    assert result.reclaimable_bytes == 100 + 50  # the manifest itself and its own layer


def test_reclaimable_bytes_ignore_blobs_shared_across_repositories() -> None:
    old = image("old", 90, ("sha256:layer", 1000))
    twin = image("twin", 1, ("sha256:layer", 1000))
    p = policy({"name": "r", "repositories": "app", "keep_last": 0})
    result = run(p, repo("app", {"old": old}), repo("other", {"t": twin}))
    assert result.reclaimable_bytes == 100


def test_a_plan_made_one_repository_at_a_time_is_the_plan_of_the_whole_inventory() -> None:
    """A layer a later repository keeps is not reclaimable, though the repository that
    freed it was planned (and dropped) before the later one was read; and the reverse."""
    p = policy({"name": "r", "repositories": "app|web", "keep_last": 0})
    shared = ("sha256:layer", 1000)
    repositories = (
        repo("app", {"old": image("old", 90, shared, ("sha256:own", 7))}),
        repo("other", {"t": image("twin", 1, shared)}),
        repo("web", {"w": image("w", 90, ("sha256:own", 7))}),
    )
    planning = Planning(p, "r", NOW)
    for repository in repositories:
        planning.add(repository)

    made = planning.finish()

    assert made == plan(p, Inventory("r", repositories), NOW)
    assert made.reclaimable_bytes == 100 + 7 + 100  # two manifests and the layer both used


def test_summary_counts_tags_manifests_and_skips() -> None:
    p = policy({"name": "r", "keep_last": 2})
    summary = run(p, five_builds()).summary
    assert (summary.repositories, summary.tags, summary.tags_to_delete) == (1, 5, 3)
    assert summary.manifests_to_delete == 3
    assert summary.repositories_skipped == 0


def test_same_input_gives_the_same_plan() -> None:
    p = policy({"name": "r", "keep_last": 2, "max_age": "3d"})
    assert run(p, five_builds()) == run(p, five_builds())


def test_decisions_are_listed_newest_first_with_unknown_ages_last() -> None:
    tags = {"u": image("u", None), "old": image("o", 9), "new": image("n", 1)}
    result = run(policy({"name": "r", "keep_last": 5}), repo("app", tags))
    assert [d.tag for d in result.repositories[0].decisions] == ["new", "old", "u"]


@pytest.mark.parametrize(
    ("age", "text"),
    [
        (timedelta(days=41, hours=3), "41d"),
        (timedelta(hours=5), "5h"),
        (timedelta(minutes=12), "12m"),
        (timedelta(seconds=3), "3s"),
        (timedelta(seconds=-5), "in the future"),
    ],
)
def test_ages_are_described_as_people_say_them(age: timedelta, text: str) -> None:
    assert describe_age(age) == text


# -- signatures, attestations, grace --------------------------------------------------------


def cosign(subject: Manifest, suffix: str = "sig") -> str:
    return f"sha256-{subject.digest.split(':')[1]}.{suffix}"


def hexdigest(name: str, age_days: float = 90) -> Manifest:
    """An image whose digest is a real-looking sha256, so cosign tag names can point at it."""
    value = name.encode().hex().ljust(64, "0")[:64]
    return Manifest(f"sha256:{value}", IMAGE, 100, created=days_ago(age_days))


def signature(of: str, name: str) -> Manifest:
    return Manifest(f"sha256:{name}", IMAGE, 50, created=None, subject=of)


def test_signature_tags_follow_their_image_not_the_rules() -> None:
    old, new = hexdigest("old"), hexdigest("new", 1)
    tags = {
        "old": old,
        "new": new,
        cosign(old): image("sig-old", 1),
        cosign(new): image("sig-new", 1),
    }
    p = policy({"name": "everything", "keep_last": 1, "max_age": "1s"})
    result = run(p, repo("app", tags))
    assert actions(result) == {
        "new": "keep",
        cosign(new): "keep",
        "old": "delete",
        cosign(old): "delete",
    }
    reasons = decisions(result)
    assert reasons[cosign(old)][1] == f"signature of deleted image {old.digest[7:19]} (old)"
    assert reasons[cosign(new)][1] == f"signature of kept image {new.digest[7:19]} (new)"


def test_artifacts_are_not_counted_by_keep_last() -> None:
    a, b = hexdigest("a"), hexdigest("b")
    tags = {"a": a, "b": b, cosign(a, "att"): image("att-a", 0), cosign(b, "sbom"): image("sb", 0)}
    result = run(policy({"name": "r", "keep_last": 2}), repo("app", tags))
    assert set(actions(result).values()) == {"keep"}


def test_artifact_deletion_waits_for_its_subjects_deletion() -> None:
    old, new = hexdigest("old"), hexdigest("new", 1)
    tags = {"old": old, "new": new, cosign(old): image("sig-old", 1)}
    result = run(policy({"name": "r", "keep_last": 1}), repo("app", tags))
    deletions = result.repositories[0].deletions
    assert [(d.digest, d.kind, d.parents) for d in deletions] == [
        (old.digest, DeletionKind.TAGGED, ()),
        ("sha256:sig-old", DeletionKind.ARTIFACT, (old.digest,)),
    ]


def test_oci_subject_makes_a_tag_an_artifact_of_that_image() -> None:
    old, new = image("old", 90), image("new", 1)
    tags = {"old": old, "new": new, "old-sbom": signature(old.digest, "sbom-old")}
    result = run(policy({"name": "r", "keep_last": 1}), repo("app", tags))
    assert decisions(result)["old-sbom"] == (Action.DELETE, "artifact of deleted image old (old)")


def test_orphan_artifacts_are_kept_unless_asked_to_delete() -> None:
    gone = hexdigest("gone")
    tags = {"v1": image("v1", 1), cosign(gone): image("orphan-sig", 1)}
    kept = run(policy({"name": "r", "keep_last": 5}), repo("app", tags))
    deleted = run(
        policy({"name": "r", "keep_last": 5}, artifacts={"delete_orphans": True}),
        repo("app", tags),
    )
    assert decisions(kept)[cosign(gone)] == (
        Action.KEEP,
        f"signature of missing image {gone.digest[7:19]} (orphan; set "
        "artifacts.delete_orphans to delete)",
    )
    assert decisions(deleted)[cosign(gone)][0] is Action.DELETE
    assert deleted.repositories[0].deletions[0].parents == ()


def test_signature_of_an_untagged_image_stays() -> None:
    untagged = hexdigest("untagged")
    tags = {"v1": image("v1", 1), cosign(untagged): image("sig", 1)}
    p = policy({"name": "r", "keep_last": 0}, artifacts={"delete_orphans": True})
    result = run(p, repo("app", tags, untagged))
    assert decisions(result)[cosign(untagged)][0] is Action.KEEP


def test_signature_of_a_signature_follows_it() -> None:
    old = hexdigest("old")
    sig = Manifest("sha256:" + "5" * 64, IMAGE, 10)
    tags = {"old": old, "new": image("new", 1), cosign(old): sig, cosign(sig): image("sigsig", 1)}
    result = run(policy({"name": "r", "keep_last": 1}), repo("app", tags))
    assert decisions(result)[cosign(sig)] == (
        Action.DELETE,
        f"signature of deleted signature {cosign(old)!r}",
    )


def test_protected_artifact_tags_are_kept_as_protected() -> None:
    old = hexdigest("old")
    tags = {"old": old, "new": image("new", 1), cosign(old): image("s", 1)}
    p = policy({"name": "r", "keep_last": 1}, protect=("sha256-.*",))
    result = run(p, repo("app", tags))
    assert decisions(result)[cosign(old)] == (Action.KEEP, "protected by 'sha256-.*'")


def test_artifacts_are_listed_right_under_their_subject() -> None:
    old, new = hexdigest("old"), hexdigest("new", 1)
    tags = {"old": old, "new": replace_created(new, 1), cosign(old): image("so", 1)}
    result = run(policy({"name": "r", "keep_last": 5}), repo("app", tags))
    assert [d.tag for d in result.repositories[0].decisions] == ["new", "old", cosign(old)]


def replace_created(manifest: Manifest, age_days: float) -> Manifest:
    return Manifest(manifest.digest, manifest.media_type, manifest.size, created=days_ago(age_days))


def test_tags_within_the_grace_period_are_never_deleted() -> None:
    tags = {"fresh": image("fresh", 0.01), "old": image("old", 30)}
    p = policy({"name": "r", "keep_last": 0}, safety={"max_delete_fraction": 1.0})
    result = run(p, repo("app", tags))
    assert decisions(result)["fresh"] == (
        Action.KEEP,
        "created 14m ago, within safety.grace_period=1h",
    )
    assert decisions(result)["old"][0] is Action.DELETE


def test_grace_uses_the_push_time_when_known() -> None:
    built_long_ago = image("old-build", 300)
    repository = Repository(
        "app",
        tags=(Tag("retagged", built_long_ago.digest, pushed=NOW - timedelta(minutes=5)),),
        manifests={built_long_ago.digest: built_long_ago},
    )
    result = run(policy({"name": "r", "max_age": "1d", "age_by": "created"}), repository)
    assert decisions(result)["retagged"] == (
        Action.KEEP,
        "pushed 5m ago, within safety.grace_period=1h",
    )


def test_held_repository_keeps_artifacts_of_images_the_rules_would_delete() -> None:
    old = hexdigest("old")
    tags = {"old": old, cosign(old): image("sig", 1)}
    p = policy({"name": "r", "keep_last": 0}, safety={"max_delete_fraction": 0.5})
    result = run(p, repo("app", tags))
    assert result.repositories[0].held is not None
    assert actions(result) == {"old": "keep", cosign(old): "keep"}


def test_signature_of_a_deleted_platform_waits_for_that_platform() -> None:
    amd = hexdigest("amd")
    multi = index("idx", amd)
    tags = {"old": multi, "new": image("new", 1), cosign(amd): image("sig-amd", 1)}
    result = run(policy({"name": "r", "keep_last": 1}), repo("app", tags, amd))
    by_digest = {d.digest: d for d in result.repositories[0].deletions}
    assert by_digest["sha256:sig-amd"].parents == (amd.digest,)
    assert by_digest[amd.digest].kind is DeletionKind.CHILD


def test_a_restored_tag_is_held_with_its_run_and_date_until_the_hold_ends() -> None:
    from retention.core.model import Hold

    restored = days_ago(1)
    hold = Hold("app/web", "b4", "20261126T120000Z-abc123", restored, restored + timedelta(7))
    p = policy({"name": "all", "keep_last": 2})
    inventory = Inventory("http://127.0.0.1:5000", (five_builds(),))

    held = decisions(plan(p, inventory, NOW, holds=[hold]))
    expired = decisions(plan(p, inventory, NOW + timedelta(days=7), holds=[hold]))

    assert held["b4"] == (
        Action.KEEP,
        "restored from 20261126T120000Z-abc123 on 2026-11-26 (held until 2026-12-03 12:00Z)",
    )
    assert held["b3"][0] is Action.DELETE
    assert expired["b4"][0] is Action.DELETE


def test_a_hold_in_another_repository_keeps_nothing_here() -> None:
    from retention.core.model import Hold

    hold = Hold("app/other", "b4", "run", days_ago(1), days_ago(-6))
    p = policy({"name": "all", "keep_last": 2})

    result = plan(p, Inventory("http://127.0.0.1:5000", (five_builds(),)), NOW, holds=[hold])

    assert actions(result)["b4"] == "delete"


@pytest.mark.parametrize(
    ("age", "limit", "text"),
    [
        (timedelta(days=14, hours=5), timedelta(days=14), "14d 5h"),
        (timedelta(days=14, seconds=30), timedelta(days=14), "14d 0h 0m 30s"),
        (timedelta(days=13, hours=20), timedelta(days=14), "13d"),
        (timedelta(days=41, hours=3), timedelta(days=30), "41d"),
    ],
)
def test_an_age_beside_its_limit_never_reads_like_the_limit(
    age: timedelta, limit: timedelta, text: str
) -> None:
    assert describe_age(age, limit) == text


def test_a_tag_just_over_max_age_says_by_how_much() -> None:
    tags = {"new": image("n", 1), "old": image("o", 14.25)}

    result = run(policy({"name": "r", "max_age": "14d"}), repo("app", tags))

    assert decisions(result)["old"] == (Action.DELETE, "older than 14d (14d 6h since created)")


def test_only_rule_leaves_out_another_rules_index_and_with_it_its_platforms() -> None:
    from retention.core.planner import only_rule

    amd, arm = image("amd", 9), image("arm", 9)
    tags = {
        "multi-old": index("old", amd, arm),
        "multi-new": index("new", image("amd2", 1), image("arm2", 1)),
        "b0": image("b0", 9),
        "b1": image("b1", 1),
    }
    p = policy(
        {"name": "multi", "match": "multi-.*", "keep_last": 1},
        {"name": "builds", "match": r"b\d", "keep_last": 1},
    )
    full = run(p, repo("app", tags, amd, arm, image("amd2", 1), image("arm2", 1)))

    cut = only_rule(full, "builds")

    deleted = {d.digest for d in cut.repositories[0].deletions}
    assert deleted == {"sha256:b0"}
    assert {d.digest for d in full.repositories[0].deletions} >= {"sha256:old", "sha256:amd"}
    assert decisions(cut)["multi-old"][0] is Action.KEEP
    assert decisions(cut)["multi-old"][1].startswith("kept: --rule builds leaves multi")
