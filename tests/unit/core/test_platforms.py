"""The platform manifests of tagged indexes, listed under their index with why they stay or go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from retention.core.model import Action, Inventory, Manifest, Plan, Repository, RunResult, Tag
from retention.core.planner import plan
from retention.core.policy import policy_from_mapping
from retention.core.render import render, to_dict

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
IMAGE = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def image(name: str) -> Manifest:
    return Manifest(digest=f"sha256:{name}", media_type=IMAGE, size=100)


def index(name: str, *children: Manifest) -> Manifest:
    return Manifest(
        digest=f"sha256:{name}",
        media_type=INDEX,
        size=200,
        children=tuple(c.digest for c in children),
    )


def planned(tags: dict[str, tuple[Manifest, float]], *children: Manifest) -> Plan:
    """``keep_last: 1`` by push time over ``tags`` (name -> manifest, days since pushed)."""
    data: dict[str, Any] = {
        "registry": {"url": "http://127.0.0.1:5000"},
        "rules": [{"name": "all", "keep_last": 1}],
        "safety": {"max_delete_fraction": 1.0},
    }
    manifests = {m.digest: m for m in [*(m for m, _ in tags.values()), *children]}
    repository = Repository(
        name="multi",
        tags=tuple(Tag(t, m.digest, pushed=NOW - timedelta(days=d)) for t, (m, d) in tags.items()),
        manifests=manifests,
    )
    inventory = Inventory("http://127.0.0.1:5000", (repository,))
    return plan(policy_from_mapping(data), inventory, NOW)


def rows(result: Plan) -> list[tuple[str, str, str, str]]:
    return [
        (d.tag or d.kind, d.digest, d.action.value, d.reason)
        for d in result.repositories[0].decisions
    ]


def test_platforms_are_listed_under_their_index_with_the_index_that_decides_them() -> None:
    amd_old, amd_new, arm = image("amd-old"), image("amd-new"), image("arm")
    old, new = index("old", amd_old, arm), index("new", amd_new, arm)
    result = planned({"1.0": (old, 9), "2.0": (new, 1)}, amd_old, amd_new, arm)
    assert rows(result) == [
        ("1.0", old.digest, "delete", "beyond keep_last=1 (#2 by push time)"),
        ("platform", amd_old.digest, "delete", f"child of deleted index {old.digest} ('1.0')"),
        ("2.0", new.digest, "keep", "within keep_last=1 (#1 by push time)"),
        ("platform", amd_new.digest, "keep", f"child of kept index {new.digest} ('2.0')"),
        ("platform", arm.digest, "keep", f"child of kept index {new.digest} ('2.0')"),
    ]
    assert result.summary.tags == 2 and result.summary.untagged == 0
    assert result.summary.manifests_to_delete == 2


def test_the_table_shows_platforms_that_go_and_the_wide_table_all_of_them() -> None:
    amd_old, amd_new = image("amd-old"), image("amd-new")
    old, new = index("old", amd_old), index("new", amd_new)
    report = RunResult(planned({"1.0": (old, 9), "2.0": (new, 1)}, amd_old, amd_new), True)
    table, wide = render(report, "table"), render(report, "wide")
    assert table.count("└ <platform>") == 1 and "child of deleted index sha256:old" in table
    assert wide.count("└ <platform>") == 2 and "child of kept index sha256:new" in wide
    assert render(report, "table", only_delete=True).count("└ <platform>") == 1
    data = to_dict(report)["repositories"][0]
    assert [t["tag"] for t in data["tags"]] == ["1.0", "2.0"]
    assert [(m["kind"], m["action"]) for m in data["manifests"]] == [
        ("platform", "delete"),
        ("platform", "keep"),
    ]


def test_a_platform_shared_with_a_kept_index_is_listed_under_it_and_kept() -> None:
    shared = image("shared")
    old, new = index("old", shared), index("new", shared)
    result = planned({"1.0": (old, 9), "2.0": (new, 1)}, shared)
    platform = [d for d in result.repositories[0].decisions if d.kind == "platform"]
    assert [(d.action, d.reason) for d in platform] == [
        (Action.KEEP, f"child of kept index {new.digest} ('2.0')")
    ]
    assert {d.digest for d in result.repositories[0].deletions} == {old.digest}
