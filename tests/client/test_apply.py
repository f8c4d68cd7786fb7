"""The delete half (executor, trash, restore, verify) against the in-memory fake registry.

The integration tests drive the same code through the CLI and the real binary; these run
the scan → plan → apply → restore → verify chain in milliseconds, and reach what a real
registry will not do on cue: a manifest that vanishes between plan and delete, a tag moved
at the last moment, deletes switched off.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from registry_server import FAKE_URL, FakeRegistry, Seeder

from retention.apply import executor
from retention.apply.restore import restore
from retention.apply.trash import Trash, restorable
from retention.apply.verify import verify
from retention.core import planner
from retention.core.model import Outcome, Plan
from retention.core.policy import RegistrySettings, policy_from_mapping
from retention.errors import DeleteDisabled
from retention.registry import RegistryClient
from retention.scan.inventory import collect

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def days_ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def seeder(fake: FakeRegistry) -> Iterator[Seeder]:
    seeder = Seeder(FAKE_URL, transport=httpx.MockTransport(fake.handler))
    yield seeder
    seeder.close()


def client_for(fake: FakeRegistry) -> RegistryClient:
    settings = RegistrySettings(url=FAKE_URL, retries=0)
    return RegistryClient(settings, transport=httpx.MockTransport(fake.handler))


async def plan_for(fake: FakeRegistry, **rule: Any) -> Plan:
    policy = policy_from_mapping(
        {
            "registry": {"url": FAKE_URL},
            "rules": [{"name": "builds", **rule}],
            "safety": {"grace_period": "0s", "max_delete_fraction": 1.0},
        }
    )
    async with client_for(fake) as client:
        inventory = await collect(client)
    return planner.plan(policy, inventory, NOW)


def deletes(fake: FakeRegistry) -> list[str]:
    return [r.url.path.rsplit("/", 1)[1] for r in fake.requests if r.method == "DELETE"]


def seed_builds(seeder: Seeder, count: int = 4) -> list[str]:
    return [
        seeder.image("app", [f"build-{i}"], days_ago(count - i), unique=f"b{i}")
        for i in range(count)
    ]


async def test_an_index_is_deleted_before_its_platforms_and_kept_tags_stay(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    platforms = [
        seeder.image("app", [], days_ago(9), unique="amd64"),
        seeder.image("app", [], days_ago(9), unique="arm64"),
    ]
    index = seeder.index("app", ["build-old"], platforms)
    kept = seeder.image("app", ["build-new"], days_ago(1), unique="new")
    plan = await plan_for(fake, match="build-.*", keep_last=1)

    async with client_for(fake) as client:
        applied = await executor.apply(client, plan)

    assert {a.digest: a.outcome for a in applied} == {
        index: Outcome.DELETED,
        platforms[0]: Outcome.DELETED,
        platforms[1]: Outcome.DELETED,
    }
    order = deletes(fake)
    assert order[0] == index and set(order[1:]) == set(platforms)
    assert seeder.manifest_status("app", kept) == 200


async def test_a_tag_moved_after_the_plan_blocks_that_deletion_only(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    digests = seed_builds(seeder)
    plan = await plan_for(fake, match="build-.*", keep_last=1)
    seeder.tag("app", "release", digests[0])  # pushed between plan and delete

    async with client_for(fake) as client:
        applied = {a.digest: a for a in await executor.apply(client, plan)}

    assert applied[digests[0]].outcome is Outcome.SKIPPED
    assert "release" in applied[digests[0]].detail
    assert {applied[d].outcome for d in digests[1:3]} == {Outcome.DELETED}
    assert seeder.manifest_status("app", digests[0]) == 200


async def test_a_manifest_gone_before_its_delete_counts_as_done(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    digests = seed_builds(seeder, count=2)
    plan = await plan_for(fake, match="build-.*", keep_last=1)
    fake.script(
        "DELETE",
        f"/v2/app/manifests/{digests[0]}",
        httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "x"}]}),
    )

    async with client_for(fake) as client:
        applied = await executor.apply(client, plan)

    assert [(a.digest, a.outcome) for a in applied] == [(digests[0], Outcome.ALREADY_GONE)]


async def test_deletes_switched_off_stop_the_pass_and_nothing_is_deleted(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    digests = seed_builds(seeder)
    fake.delete_enabled = False
    plan = await plan_for(fake, match="build-.*", keep_last=1)

    async with client_for(fake) as client:
        with pytest.raises(DeleteDisabled, match=r"storage\.delete\.enabled"):
            await executor.apply(client, plan)

    assert all(seeder.manifest_status("app", d) == 200 for d in digests)


async def test_the_trash_gives_back_the_exact_manifests_with_their_digests(
    fake: FakeRegistry, seeder: Seeder, tmp_path: Path
) -> None:
    digests = seed_builds(seeder, count=3)
    before = {d: seeder.manifest_bytes("app", d) for d in digests[:2]}
    plan = await plan_for(fake, match="build-.*", keep_last=1)
    trash = Trash(tmp_path)

    async with client_for(fake) as client:
        trash_bin = trash.open_bin("run-1", plan.registry, NOW)
        await executor.apply(client, plan, trash_bin)
        trash_bin.commit()  # the runner commits the bin whatever happened
        assert all(seeder.manifest_status("app", d) == 404 for d in digests[:2])
        entries = restorable(trash.get("run-1"), tag="build-0")
        restored = await restore(client, trash, "run-1", entries)

    assert [entry.digest for entry in entries] == [digests[0]]
    assert restored and seeder.digest("app", "build-0") == digests[0]
    assert seeder.manifest_bytes("app", digests[0]) == before[digests[0]]
    assert seeder.manifest_status("app", digests[1]) == 404


async def test_verification_names_a_kept_index_whose_platform_was_deleted_by_hand(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    platforms = [
        seeder.image("app", [], days_ago(2), unique="amd64"),
        seeder.image("app", [], days_ago(2), unique="arm64"),
    ]
    seeder.index("app", ["multi"], platforms)
    plan = await plan_for(fake, match="build-.*", keep_last=1)
    async with client_for(fake) as client:
        assert await verify(client, plan) == []
        seeder.delete("app", platforms[1])
        problems = await verify(client, plan)

    assert len(problems) == 1
    assert "multi" in problems[0] and platforms[1][:19] in problems[0]
