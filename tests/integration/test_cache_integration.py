"""inventory.collect with the manifest cache, against the real registry.

What the cache promises: a second pass over an unchanged registry sends no manifest GET and
no blob GET, and still sees exactly what a pass without it sees; what changed in between
(a moved tag, a deleted child) is still found, because existence is checked every pass.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
from registry_server import RecordingTransport, RegistryServer, Seeder

from retention.core.model import Inventory, Tag
from retention.core.policy import RegistrySettings
from retention.registry import RegistryClient
from retention.scan import inventory
from retention.state.manifest_cache import ManifestCache

JANUARY = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
MARCH = datetime(2024, 3, 15, 10, 0, tzinfo=UTC)


async def collect(
    server: RegistryServer, state_dir: Path, transport: httpx.AsyncBaseTransport | None = None
) -> Inventory:
    """One pass with a fresh ``ManifestCache`` on ``state_dir``, as ``run_pass`` makes it."""
    settings = RegistrySettings(url=server.url, retries=0)
    async with RegistryClient(settings, transport=transport) as client:
        return await inventory.collect(client, cache=ManifestCache(state_dir))


def gets(recording: RecordingTransport, kind: str) -> list[str]:
    """The paths of GET requests for ``manifests`` or ``blobs``."""
    return [
        r.url.path for r in recording.requests if r.method == "GET" and f"/{kind}/" in r.url.path
    ]


def seed_mixed(seeder: Seeder) -> str:
    """Shared digests, an index with its children, an image of unknown age; returns a child."""
    seeder.image("web", ["v1", "stable"], JANUARY, layers=2)
    seeder.image("web", ["v2"], MARCH)
    seeder.image("web", ["undated"], None)
    amd64 = seeder.image("app", [], MARCH, media="oci")
    arm64 = seeder.image("app", [], JANUARY, media="oci")
    seeder.index("app", ["multi", "latest"], [amd64, arm64], media="oci")
    return arm64


async def test_a_second_pass_sends_no_manifest_or_blob_get_and_sees_the_same_inventory(
    registry_server: RegistryServer, seeder: Seeder, tmp_path: Path
) -> None:
    seed_mixed(seeder)
    first_recording, second_recording = RecordingTransport(), RecordingTransport()

    first = await collect(registry_server, tmp_path, first_recording)
    second = await collect(registry_server, tmp_path, second_recording)

    assert second == first
    assert all(repository.error is None for repository in second.repositories)
    assert gets(first_recording, "manifests") and gets(first_recording, "blobs")
    assert gets(second_recording, "manifests") == []
    assert gets(second_recording, "blobs") == []


async def test_with_the_cache_each_tag_costs_one_head_and_each_cached_child_one_more(
    registry_server: RegistryServer, seeder: Seeder, tmp_path: Path
) -> None:
    seed_mixed(seeder)
    await collect(registry_server, tmp_path)
    recording = RecordingTransport()

    second = await collect(registry_server, tmp_path, recording)

    heads = [r.url.path for r in recording.requests if r.method == "HEAD"]
    tags = sum(len(repository.tags) for repository in second.repositories)
    assert len(heads) == tags + 2  # the two platform manifests of the cached index


async def test_an_inventory_with_the_cache_equals_one_without_it(
    registry_server: RegistryServer, seeder: Seeder, tmp_path: Path
) -> None:
    seed_mixed(seeder)
    await collect(registry_server, tmp_path)

    with_cache = await collect(registry_server, tmp_path)
    settings = RegistrySettings(url=registry_server.url, retries=0)
    async with RegistryClient(settings) as client:
        without_cache = await inventory.collect(client)

    assert with_cache == without_cache


async def test_a_tag_moved_between_passes_fetches_only_the_new_manifest_and_config(
    registry_server: RegistryServer, seeder: Seeder, tmp_path: Path
) -> None:
    seed_mixed(seeder)
    await collect(registry_server, tmp_path)
    moved = seeder.image("web", ["v2"], datetime(2024, 4, 1, tzinfo=UTC))
    recording = RecordingTransport()

    second = await collect(registry_server, tmp_path, recording)

    web = next(r for r in second.repositories if r.name == "web")
    assert Tag("v2", moved) in web.tags
    assert web.manifests[moved].created == datetime(2024, 4, 1, tzinfo=UTC)
    assert gets(recording, "manifests") == [f"/v2/web/manifests/{moved}"]
    assert len(gets(recording, "blobs")) == 1


async def test_a_cached_index_whose_child_was_deleted_still_fails_its_repository(
    registry_server: RegistryServer, seeder: Seeder, tmp_path: Path
) -> None:
    arm64 = seed_mixed(seeder)
    await collect(registry_server, tmp_path)
    async with RegistryClient(RegistrySettings(url=registry_server.url)) as client:
        await client.delete_manifest("app", arm64)

    second = await collect(registry_server, tmp_path)

    app = next(r for r in second.repositories if r.name == "app")
    assert app.error is not None
    assert arm64 in app.error
    assert next(r for r in second.repositories if r.name == "web").error is None


async def test_a_corrupt_cache_file_gives_the_same_inventory_as_a_fresh_pass(
    registry_server: RegistryServer, seeder: Seeder, tmp_path: Path
) -> None:
    seed_mixed(seeder)
    first = await collect(registry_server, tmp_path)
    (tmp_path / "cache" / "manifests.sqlite3").write_bytes(b"garbage" * 4096)
    recording = RecordingTransport()

    second = await collect(registry_server, tmp_path, recording)
    third_recording = RecordingTransport()
    third = await collect(registry_server, tmp_path, third_recording)

    assert second == first == third
    assert gets(recording, "manifests")  # nothing came from the corrupt file
    assert gets(third_recording, "manifests") == []  # and it was rebuilt by the second pass


async def test_a_warm_cache_that_misses_more_than_it_hits_switches_to_one_get_per_tag(
    registry_server: RegistryServer, seeder: Seeder, tmp_path: Path
) -> None:
    seeder.image("old", ["v1"], JANUARY)
    await collect(registry_server, tmp_path)
    fresh = [f"b{number:02d}" for number in range(24)]
    for tag in fresh:
        seeder.image("new", [tag], MARCH, unique=tag)
    recording = RecordingTransport()

    settings = RegistrySettings(url=registry_server.url, retries=0, concurrency=1)
    async with RegistryClient(settings, transport=recording) as client:
        second = await inventory.collect(client, cache=ManifestCache(tmp_path))

    new = next(r for r in second.repositories if r.name == "new")
    assert [tag.name for tag in new.tags] == fresh and new.error is None
    heads = [r for r in recording.requests if r.method == "HEAD" and "/v2/new/" in r.url.path]
    by_tag = [tag for tag in fresh if recording.count("GET", f"/v2/new/manifests/{tag}")]
    # HEADs only until the misses outnumber the hits (two workers at concurrency 1)...
    assert 1 <= len(heads) <= 4
    # ...then every other tag costs one GET that brings its manifest along.
    assert len(heads) + len(by_tag) == len(fresh)
