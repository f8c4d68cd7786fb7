"""The executor against a registry that changed between plan and delete, or went away."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from registry_server import RegistryServer, Seeder

from retention.apply import executor
from retention.core import planner
from retention.core.model import Outcome, Plan
from retention.core.policy import Policy, RegistrySettings, policy_from_mapping
from retention.registry import RegistryClient
from retention.scan.inventory import collect

NOW = datetime.now(UTC)


def ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


def policy_for(url: str) -> Policy:
    return policy_from_mapping(
        {
            "registry": {"url": url, "retries": 0, "timeout": "5s"},
            "rules": [{"name": "builds", "keep_last": 1}],
            "safety": {"max_delete_fraction": 1.0},
        }
    )


async def make_plan(policy: Policy) -> Plan:
    async with RegistryClient(policy.registry) as client:
        inventory = await collect(client)
    return planner.plan(policy, inventory, NOW)


async def apply(policy: Policy, plan: Plan) -> dict[str, tuple[Outcome, str]]:
    async with RegistryClient(policy.registry) as client:
        results = await executor.apply(client, plan)
    return {r.digest: (r.outcome, r.detail) for r in results}


async def test_a_tag_moved_since_the_plan_is_skipped_and_said_so(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    old = seeder.image("app", ["a"], ago(5), unique="old")
    seeder.image("app", ["b"], ago(1), unique="new")
    policy = policy_for(registry_server.url)
    plan = await make_plan(policy)
    moved_to = seeder.image("app", ["a"], ago(0), unique="pushed-later")

    results = await apply(policy, plan)

    assert results == {old: (Outcome.SKIPPED, f"tag 'a' moved to {moved_to} since the plan")}
    assert seeder.manifest_status("app", old) == 200


async def test_a_tag_added_to_a_planned_digest_blocks_its_deletion(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    old = seeder.image("app", ["a"], ago(5), unique="old")
    seeder.image("app", ["b"], ago(1), unique="new")
    policy = policy_for(registry_server.url)
    plan = await make_plan(policy)
    seeder.tag("app", "release", old)

    results = await apply(policy, plan)

    assert results == {old: (Outcome.SKIPPED, "tag 'release' now points at this digest")}
    assert seeder.manifest_status("app", "release") == 200


async def test_an_index_pushed_since_the_plan_keeps_its_platforms(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    amd = seeder.image("app", [], ago(9), unique="amd")
    arm = seeder.image("app", [], ago(9), unique="arm")
    old_index = seeder.index("app", ["old"], [amd, arm])
    seeder.image("app", ["new"], ago(1), unique="new")
    policy = policy_for(registry_server.url)
    plan = await make_plan(policy)
    seeder.index("app", ["rebuilt"], [amd])

    results = await apply(policy, plan)

    assert results[old_index][0] is Outcome.DELETED
    assert results[amd] == (
        Outcome.SKIPPED,
        "an index pushed since the plan references this manifest",
    )
    assert results[arm][0] is Outcome.DELETED
    assert seeder.manifest_status("app", amd) == 200


async def test_a_manifest_already_gone_counts_as_done(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    old = seeder.image("app", ["a"], ago(5), unique="old")
    seeder.image("app", ["b"], ago(1), unique="new")
    policy = policy_for(registry_server.url)
    plan = await make_plan(policy)
    assert seeder.delete("app", old) == 202  # someone else deleted it

    results = await apply(policy, plan)

    assert results == {old: (Outcome.ALREADY_GONE, "")}


async def test_a_registry_that_died_after_the_plan_fails_every_deletion_without_raising(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    for i in range(4):
        seeder.image("app", [f"t{i}"], ago(9 - i), unique=f"i{i}")
        seeder.image("other", [f"t{i}"], ago(9 - i), unique=f"o{i}")
    policy = policy_for(registry_server.url)
    plan = await make_plan(policy)
    registry_server.stop()

    results = await apply(policy, plan)

    assert len(results) == 6
    assert {outcome for outcome, _ in results.values()} == {Outcome.SKIPPED}
    assert all("could not re-read the repository" in detail for _, detail in results.values())


async def test_nothing_outside_the_plan_is_deleted(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    digests = [seeder.image("app", [f"t{i}"], ago(9 - i), unique=f"i{i}") for i in range(5)]
    policy = policy_for(registry_server.url)
    plan = await make_plan(policy)

    results = await apply(policy, plan)

    assert set(results) == set(digests[:4])
    assert seeder.manifest_status("app", "t4") == 200
    settings = RegistrySettings(url=registry_server.url)
    async with RegistryClient(settings) as client:
        assert await client.tags("app") == ["t4"]
