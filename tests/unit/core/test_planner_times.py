"""Which time ranks and ages a tag: push, created (doubted for reproducible builds), semver,
pulls; and images in use. Hand-built inventories, a fixed NOW, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from retention.core.image_reference import ImageReference
from retention.core.model import Action, Inventory, Manifest, Plan, Repository, Tag, TagDecision
from retention.core.planner import hold_in_use, plan
from retention.core.policy import Policy, policy_from_mapping

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIXED = datetime(2024, 1, 1, tzinfo=UTC)  # one build date written into every image
IMAGE = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def policy(rule: dict[str, Any]) -> Policy:
    return policy_from_mapping(
        {
            "registry": {"url": "http://127.0.0.1:5000"},
            "rules": [{"name": "r", **rule}],
            "safety": {"max_delete_fraction": 1.0, "grace_period": "0s"},
        }
    )


def repository(
    *tags: tuple[str, datetime | None, datetime | None, datetime | None],
    name: str = "app",
) -> Repository:
    """Tags as (name, created, pushed, pulled); each its own image."""
    manifests = {
        f"sha256:{tag}": Manifest(f"sha256:{tag}", IMAGE, 10, created=created)
        for tag, created, _, _ in tags
    }
    return Repository(
        name=name,
        tags=tuple(Tag(t, f"sha256:{t}", pushed, pulled) for t, _, pushed, pulled in tags),
        manifests=manifests,
    )


def run(
    p: Policy,
    repo: Repository,
    since: datetime | None = None,
    in_use: tuple[ImageReference, ...] = (),
) -> Plan:
    inventory = Inventory("http://127.0.0.1:5000", (repo,), pull_history_since=since)
    return plan(p, inventory, NOW, in_use)


def by_tag(result: Plan) -> dict[str, TagDecision]:
    return {d.tag: d for d in result.repositories[0].decisions if d.tag}


def verdicts(result: Plan) -> dict[str, tuple[str, str]]:
    return {tag: (d.action.value, d.reason) for tag, d in by_tag(result).items()}


# -- reproducible builds ----------------------------------------------------------------------

REPRODUCIBLE = repository(
    ("v1", EPOCH, ago(3), None),
    ("v2", EPOCH, ago(1), None),
    ("v3", EPOCH, None, None),  # no push time, created 1970: nothing to go by
    ("build-a", ago(40), None, None),
    ("build-b", ago(2), None, None),
)


def test_created_1970_is_unknown_and_push_times_rank_the_rest() -> None:
    result = run(policy({"keep_last": 1, "max_age": "7d"}), REPRODUCIBLE)
    assert verdicts(result) == {
        "v2": ("keep", "within keep_last=1 (#1 by push time)"),
        "build-b": (
            "keep",
            "beyond keep_last=1 (#2 by created time) but newer than 7d (2d since created)",
        ),
        "v1": ("keep", "beyond keep_last=1 (#3 by push time) but newer than 7d (3d since pushed)"),
        "build-a": (
            "delete",
            "beyond keep_last=1 (#4 by created time) and older than 7d (40d since created)",
        ),
        "v3": (
            "keep",
            "created time 1970-01-01 looks like a reproducible build: unknown age "
            "(no push time): never deleted by age or rank",
        ),
    }


@pytest.mark.parametrize(
    "rule",
    [
        {"max_age": "1d"},
        {"max_age": "1d", "age_by": "created"},
        {"keep_last": 0, "order_by": "created"},
        {"keep_last": 0, "max_age": "1d", "order_by": "created", "age_by": "created"},
    ],
    ids=["default", "age_by created", "order_by created", "both by created"],
)
def test_no_tag_is_deleted_by_a_created_age_it_does_not_have(rule: dict[str, Any]) -> None:
    repo = repository(
        ("jib", EPOCH, None, None),
        ("ko-1", datetime(1980, 1, 1, tzinfo=UTC), None, None),
        ("fixed-1", FIXED, None, None),
        ("fixed-2", FIXED, None, None),
        ("fixed-3", FIXED, None, None),
        ("normal", ago(90), None, None),
    )
    result = run(policy(rule), repo)
    actions = {tag: d.action.value for tag, d in by_tag(result).items()}
    assert actions == {
        "jib": "keep",
        "ko-1": "keep",
        "fixed-1": "keep",
        "fixed-2": "keep",
        "fixed-3": "keep",
        "normal": "delete",
    }
    assert by_tag(result)["ko-1"].reason.startswith(
        "created time 1980-01-01 looks like a reproducible build: unknown age"
    )
    assert by_tag(result)["fixed-2"].reason.startswith(
        "created time 2024-01-01T00:00:00Z is shared by 3 of 4 images here (a fixed build date)"
    )


def test_a_created_time_shared_by_a_minority_of_images_is_believed() -> None:
    repo = repository(
        ("a", FIXED, None, None),
        ("b", FIXED, None, None),
        ("c", ago(3), None, None),
        ("d", ago(4), None, None),
        ("e", ago(5), None, None),
    )
    result = run(policy({"max_age": "30d"}), repo)
    assert by_tag(result)["a"].action is Action.DELETE
    assert by_tag(result)["a"].reason.startswith("older than 30d")


def test_tags_on_one_digest_count_as_one_image_for_the_shared_created_test() -> None:
    old = Manifest("sha256:old", IMAGE, 10, created=ago(90))
    new = Manifest("sha256:new", IMAGE, 10, created=ago(1))
    repo = Repository(
        "app",
        tags=(Tag("v1", old.digest), Tag("v1.0", old.digest), Tag("v2", new.digest)),
        manifests={old.digest: old, new.digest: new},
    )
    result = run(policy({"max_age": "30d"}), repo)
    assert {t: d.action.value for t, d in by_tag(result).items()} == {
        "v1": "delete",
        "v1.0": "delete",
        "v2": "keep",
    }


def test_ranking_by_push_time_keeps_the_newest_pushes_whatever_their_build_date() -> None:
    repo = repository(
        ("retagged-today", ago(700), ago(0.5), None),
        ("r1", EPOCH, ago(9), None),
        ("r2", EPOCH, ago(2), None),
        ("r3", EPOCH, ago(30), None),
        ("built-yesterday", ago(1), ago(20), None),
    )
    result = run(policy({"keep_last": 2, "order_by": "pushed"}), repo)
    decided = by_tag(result)
    assert {t for t, d in decided.items() if d.action is Action.KEEP} == {"retagged-today", "r2"}
    assert decided["r3"].reason == "beyond keep_last=2 (#5 by push time)"
    assert {d.ranked_by for d in decided.values()} == {"pushed"}


def test_order_by_pushed_does_not_fall_back_to_created() -> None:
    repo = repository(("pushed", ago(50), ago(50), None), ("unpushed", ago(90), None, None))
    result = run(policy({"keep_last": 0, "order_by": "pushed"}), repo)
    assert verdicts(result) == {
        "pushed": ("delete", "beyond keep_last=0 (#1 by push time)"),
        "unpushed": ("keep", "push time unknown: never deleted by rank"),
    }


def test_age_by_created_ignores_a_recent_push() -> None:
    repo = repository(("retagged", ago(400), ago(0.1), None), ("other", ago(3), None, None))
    result = run(policy({"max_age": "30d", "age_by": "created"}), repo)
    decided = by_tag(result)["retagged"]
    assert (decided.action, decided.aged_by) == (Action.DELETE, "created")
    assert decided.reason == "older than 30d (400d since created)"


# -- semver -----------------------------------------------------------------------------------


def test_semver_ranks_by_precedence_then_other_tags_by_time() -> None:
    repo = repository(
        ("1.9.0", ago(1), None, None),
        ("1.10.0", ago(10), None, None),
        ("v2.0.0-rc.1", ago(20), None, None),
        ("2.0.0", ago(15), None, None),
        ("main", ago(0.5), None, None),
        ("dev", ago(3), None, None),
        ("nightly", EPOCH, None, None),
    )
    result = run(policy({"keep_last": 3, "order_by": "semver"}), repo)
    assert verdicts(result) == {
        "2.0.0": ("keep", "within keep_last=3 (#1 by semver)"),
        "v2.0.0-rc.1": ("keep", "within keep_last=3 (#2 by semver)"),
        "1.10.0": ("keep", "within keep_last=3 (#3 by semver)"),
        "1.9.0": ("delete", "beyond keep_last=3 (#4 by semver)"),
        "main": (
            "delete",
            "beyond keep_last=3 (#5, not semver, after the semver tags by created time)",
        ),
        "dev": (
            "delete",
            "beyond keep_last=3 (#6, not semver, after the semver tags by created time)",
        ),
        "nightly": (
            "keep",
            "not semver, and created time 1970-01-01 looks like a reproducible build: "
            "unknown age (no push time): never deleted by rank",
        ),
    }
    assert by_tag(result)["1.9.0"].ranked_by == "semver"
    assert by_tag(result)["main"].ranked_by == "created"


def test_semver_ranks_releases_whose_created_time_is_unknown() -> None:
    repo = repository(("v1.0.0", EPOCH, None, None), ("v1.1.0", EPOCH, None, None))
    result = run(policy({"keep_last": 1, "order_by": "semver"}), repo)
    assert {t: d.action.value for t, d in by_tag(result).items()} == {
        "v1.1.0": "keep",
        "v1.0.0": "delete",
    }


# -- pulls ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "tag", "expected"),
    [
        (
            ago(60),
            ("hot", ago(100), None, ago(2)),
            ("keep", "pulled 2d ago, within pulled_within=30d"),
        ),
        (
            ago(60),
            ("cold", ago(100), None, ago(40)),
            (
                "delete",
                "beyond keep_last=0 (#1 by created time) and not pulled within 30d "
                "(last pulled 40d ago)",
            ),
        ),
        (
            ago(60),
            ("never", ago(100), None, None),
            (
                "delete",
                "beyond keep_last=0 (#1 by created time) and not pulled within 30d "
                "(60d of pull history)",
            ),
        ),
        (
            ago(10),
            ("never", ago(100), None, None),
            ("keep", "not pulled in 10d of pull history, shorter than pulled_within=30d: unknown"),
        ),
        (
            ago(60),
            ("fresh", ago(100), ago(5), None),
            ("keep", "not pulled in 5d of pull history, shorter than pulled_within=30d: unknown"),
        ),
        (
            None,
            ("never", ago(100), None, None),
            ("keep", "no pull history: unknown whether pulled within 30d"),
        ),
        (
            ago(60),
            ("repushed", ago(100), ago(2), ago(40)),
            ("keep", "not pulled in 2d of pull history, shorter than pulled_within=30d: unknown"),
        ),
    ],
    ids=[
        "pulled recently",
        "pulled long ago",
        "never pulled, long history",
        "short history",
        "pushed after history began",
        "no history",
        "pushed again after the last pull",
    ],
)
def test_pulled_within_keeps_recent_pulls_and_treats_short_history_as_unknown(
    since: datetime | None,
    tag: tuple[str, datetime | None, datetime | None, datetime | None],
    expected: tuple[str, str],
) -> None:
    result = run(policy({"keep_last": 0, "pulled_within": "30d"}), repository(tag), since)
    assert verdicts(result) == {tag[0]: expected}


@pytest.mark.parametrize(
    ("since", "tag", "expected"),
    [
        (ago(60), ("a", ago(1), None, ago(40)), ("delete", "older than 30d (last pulled 40d ago)")),
        (ago(60), ("a", ago(100), None, ago(5)), ("keep", "newer than 30d (last pulled 5d ago)")),
        (
            ago(60),
            ("a", ago(1), None, None),
            ("delete", "older than 30d (not pulled in 60d of pull history)"),
        ),
        (
            ago(60),
            ("a", ago(100), ago(3), None),
            ("keep", "newer than 30d (not pulled in 3d of pull history)"),
        ),
        (None, ("a", ago(100), None, None), ("keep", "no pull history: never deleted by age")),
        (
            None,
            ("a", ago(100), ago(2), ago(40)),
            ("keep", "newer than 30d (not pulled in 2d of pull history)"),
        ),
    ],
    ids=[
        "last pull old",
        "last pull recent",
        "never, long history",
        "never, pushed lately",
        "no history",
        "pushed again after the last pull",
    ],
)
def test_age_by_pulled_measures_time_since_the_last_pull(
    since: datetime | None,
    tag: tuple[str, datetime | None, datetime | None, datetime | None],
    expected: tuple[str, str],
) -> None:
    result = run(policy({"max_age": "30d", "age_by": "pulled"}), repository(tag), since)
    assert verdicts(result) == {"a": expected}


# -- in use -----------------------------------------------------------------------------------


def test_tags_and_digests_in_use_are_kept_and_say_who_uses_them() -> None:
    amd = Manifest("sha256:amd", IMAGE, 10, created=ago(90))
    multi = Manifest("sha256:multi", INDEX, 10, created=ago(90), children=(amd.digest,))
    old = {
        f"sha256:{t}": Manifest(f"sha256:{t}", IMAGE, 10, created=ago(91 + i))
        for i, t in enumerate("abcd")
    }
    repo = Repository(
        "app",
        tags=(
            Tag("by-tag", "sha256:a"),
            Tag("by-digest", "sha256:b"),
            Tag("same-digest", "sha256:b"),
            Tag("multi", multi.digest),
            Tag("unused", "sha256:c"),
        ),
        manifests={**old, multi.digest: multi, amd.digest: amd},
    )
    in_use = (
        ImageReference("app", "by-tag", None, "kubernetes: shop/web-7d9f"),
        ImageReference("app", None, "sha256:b", "file: /etc/in-use.txt"),
        ImageReference("app", None, "sha256:amd", "kubernetes: shop/worker-1"),
        ImageReference("other", "unused", None, "command: deployed"),
    )
    result = run(policy({"keep_last": 0}), repo, in_use=in_use)
    assert verdicts(result) == {
        "by-tag": ("keep", "in use (kubernetes: shop/web-7d9f)"),
        "by-digest": ("keep", "in use (file: /etc/in-use.txt)"),
        "same-digest": ("keep", "in use (file: /etc/in-use.txt)"),
        "multi": ("keep", "in use of a platform manifest (kubernetes: shop/worker-1)"),
        "unused": ("delete", "beyond keep_last=0 (#1 by created time)"),
    }
    assert [d.digest for d in result.repositories[0].deletions] == ["sha256:c"]


def test_in_use_wins_over_every_rule_and_names_the_first_of_several_users() -> None:
    repo = repository(("v1", ago(400), None, None))
    in_use = tuple(ImageReference("app", "v1", None, f"kubernetes: ns/pod-{i}") for i in range(3))
    result = run(policy({"max_age": "1d"}), repo, in_use=in_use)
    assert verdicts(result) == {"v1": ("keep", "in use (kubernetes: ns/pod-0 and 2 more)")}


# -- a saved plan applied later -----------------------------------------------------------


def test_a_saved_plan_drops_deletions_of_images_in_use_when_applied() -> None:
    amd = Manifest("sha256:amd", IMAGE, 10, created=ago(90))
    arm = Manifest("sha256:arm", IMAGE, 10, created=ago(90))
    old_index = Manifest(
        "sha256:idx", INDEX, 10, created=ago(90), children=(amd.digest, arm.digest)
    )
    plain = {
        f"sha256:{t}": Manifest(f"sha256:{t}", IMAGE, 10, created=ago(91 + i))
        for i, t in enumerate("ab")
    }
    repo = Repository(
        "app",
        tags=(Tag("multi", old_index.digest), Tag("a", "sha256:a"), Tag("b", "sha256:b")),
        manifests={**plain, old_index.digest: old_index, amd.digest: amd, arm.digest: arm},
    )
    saved = run(policy({"keep_last": 0}), repo)
    assert [d.digest for d in saved.repositories[0].deletions] == [
        "sha256:a",
        "sha256:b",
        "sha256:idx",
        "sha256:amd",
        "sha256:arm",
    ]
    now_running = (
        ImageReference("app", None, "sha256:arm", "kubernetes: shop/worker-1"),
        ImageReference("app", "a", None, "file: /etc/in-use.txt"),
        ImageReference("other", "b", None, "file: /etc/in-use.txt"),
    )

    applied = hold_in_use(saved, now_running)

    assert [d.digest for d in applied.repositories[0].deletions] == ["sha256:b"]
    assert verdicts(applied)["multi"] == (
        "keep",
        "in use (kubernetes: shop/worker-1) when applied; the plan said: "
        "beyond keep_last=0 (#1 by created time)",
    )
    assert verdicts(applied)["a"][0] == "keep"
    assert verdicts(applied)["b"][0] == "delete"
    assert hold_in_use(saved, ()) == saved
