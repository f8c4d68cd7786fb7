"""The registry client's contract, against the real Distribution binary and against the fake.

Every contract test runs twice, once per backend (as APScheduler's conftest runs its tests
over memory and real stores), so ``FakeRegistry`` cannot drift from what 2.8 really does
while ``tests/client`` leans on it for the cases a real registry cannot easily produce.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import pytest
from registry_server import FAKE_URL, FakeRegistry, RecordingTransport, RegistryServer, Seeder

from retention.core.policy import RegistrySettings
from retention.errors import DeleteDisabled, InvalidManifest, NotFound
from retention.registry import RegistryClient, parse_created, parse_manifest
from retention.registry import media_types as mt

CREATED = datetime(2024, 3, 9, 8, 30, 15, 250000, tzinfo=UTC)


class Recorder(Protocol):
    def count(self, method: str, path: str) -> int: ...


@dataclass
class Backend:
    """A registry to test against: how to seed it, reach it and count what it was asked."""

    url: str
    seeder: Seeder
    recorder: Recorder
    transport: Callable[[], httpx.AsyncBaseTransport]

    def client(self, **settings: Any) -> RegistryClient:
        options: dict[str, Any] = {"url": self.url, "retries": 0, **settings}
        return RegistryClient(RegistrySettings(**options), transport=self.transport())


@pytest.fixture(params=["real", "fake"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "real":
        server: RegistryServer = request.getfixturevalue("registry_server")
        recording = RecordingTransport()
        yield Backend(server.url, request.getfixturevalue("seeder"), recording, lambda: recording)
        return
    fake = FakeRegistry()
    seeder = Seeder(FAKE_URL, transport=httpx.MockTransport(fake.handler))
    yield Backend(FAKE_URL, seeder, fake, lambda: httpx.MockTransport(fake.handler))
    seeder.close()


@pytest.fixture
async def client(backend: Backend) -> AsyncIterator[RegistryClient]:
    async with backend.client() as client:
        yield client


async def test_the_catalog_crosses_pages_of_100_to_list_250_repositories(
    backend: Backend, client: RegistryClient
) -> None:
    names = sorted(f"team-{number % 7}/app-{number:03d}" for number in range(250))
    for name in names:
        backend.seeder.blob(name, b"layer")

    assert await client.catalog() == names
    assert backend.recorder.count("GET", "/v2/_catalog") == 3


async def test_the_catalog_lists_nested_repositories_in_directory_walk_order(
    backend: Backend, client: RegistryClient
) -> None:
    for name in ("b", "a.d", "a/z", "a-c", "a/b/c", "a/b"):
        backend.seeder.blob(name, b"layer")

    assert await client.catalog() == ["a/b", "a/b/c", "a/z", "a-c", "a.d", "b"]


async def test_tags_lists_every_tag_in_some_order(backend: Backend, client: RegistryClient) -> None:
    backend.seeder.image("app", ["v1", "v2", "latest"], CREATED, unique="a")
    backend.seeder.image("app", ["v3"], CREATED, unique="b")

    assert sorted(await client.tags("app")) == ["latest", "v1", "v2", "v3"]


@pytest.mark.parametrize(
    ("kind", "media_type"),
    [
        ("docker", mt.DOCKER_MANIFEST),
        ("oci", mt.OCI_MANIFEST),
        ("oci index", mt.OCI_INDEX),
        ("docker list", mt.DOCKER_MANIFEST_LIST),
    ],
)
async def test_a_tag_resolves_to_the_digest_that_was_pushed(
    backend: Backend, client: RegistryClient, kind: str, media_type: str
) -> None:
    digest = push(backend.seeder, kind, "app", ["t"])

    assert await client.resolve("app", "t") == (digest, media_type)
    fetched = await client.manifest("app", "t")
    assert (fetched.digest, fetched.media_type) == (digest, media_type)
    assert "sha256:" + hashlib.sha256(fetched.body).hexdigest() == digest


def push(seeder: Seeder, kind: str, repo: str, tags: list[str]) -> str:
    """Push one of the four manifest kinds under ``tags``; an index gets two image children."""
    media: Literal["docker", "oci"] = "oci" if kind.startswith("oci") else "docker"
    if kind in ("docker", "oci"):
        return seeder.image(repo, tags, CREATED, media=media)
    children = [seeder.image(repo, [], CREATED, media=media) for _ in range(2)]
    return seeder.index(repo, tags, children, media=media)


async def test_an_index_names_its_children_and_each_child_is_fetchable(
    backend: Backend, client: RegistryClient
) -> None:
    amd64 = backend.seeder.image("app", [], CREATED, media="oci")
    arm64 = backend.seeder.image("app", [], CREATED, media="oci")
    backend.seeder.index("app", ["multi"], [amd64, arm64], media="oci")

    index, config = parse_manifest(await client.manifest("app", "multi"))

    assert (index.children, config) == ((amd64, arm64), None)
    for child in index.children:
        assert (await client.manifest("app", child)).digest == child


async def test_the_created_time_is_read_from_the_config_blob(
    backend: Backend, client: RegistryClient
) -> None:
    backend.seeder.image("app", ["v1"], CREATED, layers=3)

    manifest, config = parse_manifest(await client.manifest("app", "v1"))

    assert config is not None
    assert len(manifest.blobs) == 4
    assert manifest.blobs[0].digest == config
    assert parse_created(await client.blob("app", config)) == CREATED


async def test_tags_on_the_same_image_resolve_to_one_digest(
    backend: Backend, client: RegistryClient
) -> None:
    digest = backend.seeder.image("app", ["v1", "stable"], CREATED)
    backend.seeder.tag("app", "prod", digest)

    resolved = {tag: (await client.resolve("app", tag))[0] for tag in ("v1", "stable", "prod")}

    assert set(resolved.values()) == {digest}


async def test_deleting_a_manifest_removes_every_tag_on_it_and_a_second_delete_finds_it_gone(
    backend: Backend, client: RegistryClient
) -> None:
    shared = backend.seeder.image("app", ["v1", "stable"], CREATED)
    backend.seeder.image("app", ["v2"], CREATED)

    assert await client.delete_manifest("app", shared) is True
    assert await client.delete_manifest("app", shared) is False
    assert await client.tags("app") == ["v2"]
    with pytest.raises(NotFound):
        await client.resolve("app", "stable")
    assert backend.seeder.manifest_status("app", shared) == 404


async def test_a_repository_emptied_by_deletes_lists_no_tags(
    backend: Backend, client: RegistryClient
) -> None:
    digest = backend.seeder.image("app", ["v1"], CREATED)
    await client.delete_manifest("app", digest)

    assert await client.tags("app") == []
    assert "app" in await client.catalog()


async def test_a_repository_with_layers_but_no_manifest_is_in_the_catalog_but_has_no_tag_list(
    backend: Backend, client: RegistryClient
) -> None:
    backend.seeder.blob("half-pushed", b"layer")

    assert await client.catalog() == ["half-pushed"]
    with pytest.raises(NotFound) as raised:
        await client.tags("half-pushed")
    assert raised.value.code == "NAME_UNKNOWN"


async def test_an_unknown_manifest_is_not_found_with_the_registry_code(
    backend: Backend, client: RegistryClient
) -> None:
    backend.seeder.image("app", ["v1"], CREATED)

    with pytest.raises(NotFound) as raised:
        await client.manifest("app", "nope")

    assert (raised.value.status, raised.value.code) == (404, "MANIFEST_UNKNOWN")


async def test_blobs_and_manifests_uploaded_by_the_client_are_served_back(
    backend: Backend, client: RegistryClient
) -> None:
    config_bytes, layer_bytes = b'{"created": "2024-03-09T08:30:15.25Z"}', b"layer bytes"
    config = await client.upload_blob("app", config_bytes)
    layer = await client.upload_blob("app", layer_bytes)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": config, "size": len(config_bytes)},
            "layers": [{"mediaType": mt.OCI_LAYER, "digest": layer, "size": len(layer_bytes)}],
        }
    ).encode()

    digest = await client.put_manifest("app", "v1", body, mt.OCI_MANIFEST)

    assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert await client.resolve("app", "v1") == (digest, mt.OCI_MANIFEST)
    assert await client.blob_exists("app", layer) is True
    assert await client.blob_exists("app", "sha256:" + "0" * 64) is False
    assert backend.seeder.blob_status("app", config) == 200


async def test_a_layer_larger_than_any_manifest_is_found_by_head(
    backend: Backend, client: RegistryClient
) -> None:
    layer, _ = backend.seeder.blob("app", os.urandom(5 * 1024 * 1024))

    assert await client.blob_exists("app", layer) is True


# Real registry only: what cannot be reproduced by pushing through the API.


@pytest.mark.parametrize("registry_server", [{"delete_enabled": False}], indirect=True)
async def test_deletes_disabled_in_the_registry_config_raise_delete_disabled(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    digest = seeder.image("app", ["v1"], CREATED)

    async with RegistryClient(RegistrySettings(url=registry_server.url)) as client:
        with pytest.raises(DeleteDisabled) as raised:
            await client.delete_manifest("app", digest)

    assert (raised.value.status, raised.value.code) == (405, "UNSUPPORTED")
    assert "storage.delete.enabled: true" in str(raised.value)
    assert seeder.manifest_status("app", digest) == 200


async def test_a_manifest_altered_in_storage_is_refused_although_the_registry_serves_it(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    digest = seeder.image("app", ["v1"], CREATED)
    data = blob_path(registry_server, digest)
    # Same length, still a valid manifest: the registry parses it and serves it unchecked.
    data.write_bytes(data.read_bytes().replace(b'"size": 32', b'"size": 33'))

    async with RegistryClient(RegistrySettings(url=registry_server.url)) as client:
        for reference in ("v1", digest):
            with pytest.raises(InvalidManifest, match="does not match"):
                await client.manifest("app", reference)


def blob_path(server: RegistryServer, digest: str) -> Path:
    hex_digest = digest.removeprefix("sha256:")
    return server.root / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
