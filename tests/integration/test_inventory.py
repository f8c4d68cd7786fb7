"""inventory.collect against the real registry: what it finds, what it asks, how it fails.

Failures that matter here are produced the way they happen in the field where possible: a
tag link pointing at a manifest that is gone, a manifest altered on disk, an index whose
child was deleted, a push interrupted before its manifest. The rest (a 503 on the catalog)
is injected into otherwise real traffic by ``RecordingTransport``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from registry_server import RecordingTransport, RegistryServer, Seeder

from retention.core.model import Inventory, Repository, Tag
from retention.core.policy import RegistrySettings
from retention.errors import RegistryError, RegistryUnreachable
from retention.registry import RegistryClient
from retention.registry import media_types as mt
from retention.scan import inventory

JANUARY = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
FEBRUARY = datetime(2024, 2, 15, 10, 0, tzinfo=UTC)
MARCH = datetime(2024, 3, 15, 10, 0, tzinfo=UTC)


def client_for(
    server: RegistryServer, transport: httpx.AsyncBaseTransport | None = None
) -> RegistryClient:
    return RegistryClient(RegistrySettings(url=server.url, retries=0), transport=transport)


async def collect(
    server: RegistryServer, transport: httpx.AsyncBaseTransport | None = None, **options: Any
) -> Inventory:
    async with client_for(server, transport) as client:
        return await inventory.collect(client, **options)


def repositories(collected: Inventory) -> dict[str, Repository]:
    return {repository.name: repository for repository in collected.repositories}


def tag_link(server: RegistryServer, repository: str, tag: str) -> Path:
    return server.root / "docker/registry/v2/repositories" / repository / "_manifests/tags" / tag


async def test_every_repository_is_collected_with_tags_digests_blobs_and_created_times(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    old = seeder.image("web", ["v1", "stable"], JANUARY, layers=2)
    new = seeder.image("web", ["v2"], MARCH)
    api = seeder.image("api", ["latest"], FEBRUARY, media="oci")

    collected = await collect(registry_server)

    assert collected.registry == registry_server.url
    found = repositories(collected)
    assert list(found) == ["api", "web"]
    assert found["web"].tags == (Tag("stable", old), Tag("v1", old), Tag("v2", new))
    assert found["api"].tags == (Tag("latest", api),)
    assert {d: m.created for d, m in found["web"].manifests.items()} == {old: JANUARY, new: MARCH}
    assert found["api"].manifests[api].media_type == mt.OCI_MANIFEST
    assert len(found["web"].manifests[old].blobs) == 3
    assert all(r.error is None for r in collected.repositories)


async def test_an_index_is_as_new_as_its_newest_child_and_its_children_are_collected(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    amd64 = seeder.image("app", [], MARCH, media="oci")
    arm64 = seeder.image("app", [], JANUARY, media="oci")
    index = seeder.index("app", ["multi"], [amd64, arm64], media="oci")

    app = repositories(await collect(registry_server))["app"]

    assert app.tags == (Tag("multi", index),)
    assert app.manifests[index].children == (amd64, arm64)
    assert app.manifests[index].created == MARCH
    assert (app.manifests[amd64].created, app.manifests[arm64].created) == (MARCH, JANUARY)
    assert app.error is None


async def test_a_cold_scan_sends_one_get_per_tag_and_one_per_distinct_config(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    # The same config under a Docker and an OCI manifest: two manifests, one config blob.
    docker = seeder.image("app", ["a", "b", "c"], JANUARY, media="docker", unique="same")
    oci = seeder.image("app", ["d", "e"], JANUARY, media="oci", unique="same")
    seeder.index("app", ["multi"], [docker, oci], media="oci")
    recording = RecordingTransport()

    app = repositories(await collect(registry_server, recording))["app"]

    config = app.manifests[docker].blobs[0].digest
    assert config == app.manifests[oci].blobs[0].digest
    assert recording.count("GET", f"/v2/app/blobs/{config}") == 1
    tags = ("a", "b", "c", "d", "e", "multi")
    for tag in tags:
        assert recording.count("GET", f"/v2/app/manifests/{tag}") == 1
    assert not [r for r in recording.requests if r.method == "HEAD"]
    # A tag's GET brings its manifest along; only an index child no tag has reached yet
    # is fetched by digest, and never twice.
    for digest in app.manifests:
        assert recording.count("GET", f"/v2/app/manifests/{digest}") <= 1
    by_digest = [r for r in recording.requests if "/manifests/sha256:" in r.url.path]
    assert len(by_digest) <= len(app.manifests[app.tags[-1].digest].children)


async def test_only_repositories_the_filter_accepts_are_scanned(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    seeder.image("team/web", ["v1"], JANUARY)
    seeder.image("other/db", ["v1"], JANUARY)
    recording = RecordingTransport()

    collected = await collect(
        registry_server, recording, repositories=lambda name: name.startswith("team/")
    )

    assert [r.name for r in collected.repositories] == ["team/web"]
    assert not [r for r in recording.requests if r.url.path.startswith("/v2/other/")]


async def test_progress_counts_repositories_against_a_total_known_before_the_first_call(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    seeder.image("web", ["v1", "v2", "v3"], JANUARY)
    seeder.image("api", ["v1", "v2"], JANUARY)
    seeder.image("db", ["v1"], JANUARY)
    calls: list[tuple[int, int]] = []

    await collect(registry_server, progress=lambda done, total: calls.append((done, total)))

    assert calls == [(1, 3), (2, 3), (3, 3)]


async def test_a_config_without_created_leaves_the_age_unknown_without_failing(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    digest = seeder.image("app", ["v1"], None)

    app = repositories(await collect(registry_server))["app"]

    assert app.manifests[digest].created is None
    assert app.error is None


async def test_a_half_pushed_repository_is_collected_empty_rather_than_failed(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    seeder.blob("half-pushed", b"a layer whose manifest never came")

    half = repositories(await collect(registry_server))["half-pushed"]

    assert (half.tags, dict(half.manifests), half.error) == ((), {}, None)


async def test_a_repository_emptied_by_deletes_is_collected_with_no_tags(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    digest = seeder.image("app", ["v1"], JANUARY)
    async with client_for(registry_server) as client:
        await client.delete_manifest("app", digest)

    app = repositories(await collect(registry_server))["app"]

    assert (app.tags, app.error) == ((), None)


# Fail closed: one broken repository is reported, the others are collected in full.


async def test_a_tag_whose_manifest_is_gone_fails_its_repository_and_no_other(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    seeder.image("web", ["v1"], JANUARY)
    api = seeder.image("api", ["v1"], JANUARY)
    ghost = tag_link(registry_server, "web", "ghost") / "current"
    ghost.mkdir(parents=True)
    (ghost / "link").write_text("sha256:" + "1" * 64)

    found = repositories(await collect(registry_server))

    assert found["web"].error is not None
    assert found["web"].error.startswith("web: ")
    assert "/v2/web/manifests/ghost" in found["web"].error
    assert "\n" not in found["web"].error
    assert found["api"].tags == (Tag("v1", api),)
    assert found["api"].error is None


async def test_a_manifest_altered_in_storage_fails_its_repository(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    digest = seeder.image("web", ["v1"], JANUARY)
    hex_digest = digest.removeprefix("sha256:")
    data = (
        registry_server.root / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest
    ) / "data"
    data.write_bytes(data.read_bytes().replace(b'"size": 32', b'"size": 33'))

    web = repositories(await collect(registry_server))["web"]

    assert web.error is not None
    assert "does not match" in web.error
    assert web.tags == ()  # the tag's own GET served the altered body: its digest is unproven
    assert digest not in web.manifests


async def test_an_index_whose_child_was_deleted_fails_its_repository(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    amd64 = seeder.image("app", [], JANUARY, media="oci")
    arm64 = seeder.image("app", [], JANUARY, media="oci")
    seeder.index("app", ["multi"], [amd64, arm64], media="oci")
    async with client_for(registry_server) as client:
        await client.delete_manifest("app", arm64)

    app = repositories(await collect(registry_server))["app"]

    assert app.error is not None
    assert arm64 in app.error
    assert "MANIFEST_UNKNOWN" in app.error


@pytest.mark.parametrize(
    "break_web",
    [
        lambda t: t.script("GET", "/v2/web/tags/list", httpx.Response(500)),
        lambda t: t.script("GET", "/v2/web/manifests/v2", httpx.Response(404)),
        lambda t: t.script("GET", "/v2/web/manifests/v1", httpx.ReadTimeout("stalled")),
    ],
    ids=["tag listing fails", "tag vanishes mid-scan", "connection stalls"],
)
async def test_a_failing_exchange_fails_only_its_own_repository(
    registry_server: RegistryServer,
    seeder: Seeder,
    break_web: Callable[[RecordingTransport], None],
) -> None:
    seeder.image("web", ["v1", "v2"], JANUARY, unique="web")
    seeder.image("api", ["v1"], JANUARY)
    recording = RecordingTransport()
    break_web(recording)

    found = repositories(await collect(registry_server, recording))

    assert found["web"].error is not None
    assert found["web"].error.startswith("web: ")
    assert found["api"].error is None


async def test_a_catalog_that_cannot_be_listed_raises_because_there_is_nothing_to_plan(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    seeder.image("web", ["v1"], JANUARY)
    recording = RecordingTransport()
    recording.script("GET", "/v2/_catalog", httpx.Response(503))

    with pytest.raises(RegistryError) as raised:
        await collect(registry_server, recording)

    assert raised.value.status == 503


async def test_a_registry_that_does_not_answer_raises_unreachable(
    registry_server: RegistryServer,
) -> None:
    registry_server.stop()

    with pytest.raises(RegistryUnreachable):
        await collect(registry_server)
