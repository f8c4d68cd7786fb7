"""Docker mode against a real engine: the GC frees what a deleted manifest left, and nothing more.

Each test seeds a registry container over HTTP, deletes one image by digest, runs the
collector, and checks both sides: the blob files are gone from the storage (seen from the
host through the bind mount), and the image that was kept is still fully pullable. The
offline strategy is held to its promise that the registry is back and answering whatever
happened: after success, after a failing GC, after a GC killed by its timeout.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from docker_engine import DockerEngine, RegistryContainer, answers, gc_containers
from registry_server import Seeder, public_tls

from retention.core.policy import GarbageCollection
from retention.errors import GarbageCollectionError, RegistryUnreachable, StorageError
from retention.gc.docker import ContainerStorage, DockerCollector, docker_client
from retention.registry import media_types

pytestmark = pytest.mark.docker

CREATED = datetime(2024, 3, 9, 8, 30, tzinfo=UTC)
MISSING_CONFIG = ("registry", "garbage-collect", "/etc/docker/registry/missing.yml")
Strategy = Literal["exec", "offline"]


@dataclass
class Seeded:
    """Two images in ``app``: ``kept`` stays tagged, ``deleted`` was deleted by digest."""

    kept: str
    freed: list[str]  # what GC must sweep: the deleted manifest's own blob, config, layers


@pytest.fixture
def container_seeder(registry_container: RegistryContainer) -> Iterator[Seeder]:
    seeder = Seeder(registry_container.url)
    try:
        yield seeder
    finally:
        seeder.close()


@pytest.fixture
def seeded(registry_container: RegistryContainer, container_seeder: Seeder) -> Seeded:
    """Push two images with two layers each, then delete one of them by digest."""
    kept = container_seeder.image("app", ["kept"], CREATED, layers=2)
    deleted = container_seeder.image("app", ["deleted"], CREATED, layers=2)
    freed = [deleted, *manifest_blobs(registry_container.url, "app", deleted)]
    response = httpx.delete(
        f"{registry_container.url}/v2/app/manifests/{deleted}", trust_env=False, verify=public_tls()
    )
    assert response.status_code == 202, response.text
    return Seeded(kept, freed)


def collector(
    engine: DockerEngine, registry: RegistryContainer, strategy: Strategy, **settings: Any
) -> DockerCollector:
    """A collector for ``registry`` whose readiness check polls the registry's ``/v2/``."""
    gc = GarbageCollection(mode="docker", container=registry.name, strategy=strategy, **settings)
    return DockerCollector(gc, registry.wait_until_ready, engine.client)


def manifest_blobs(url: str, repository: str, digest: str) -> list[str]:
    """The config and layer digests of a stored image manifest."""
    response = httpx.get(
        f"{url}/v2/{repository}/manifests/{digest}",
        headers={"Accept": media_types.MANIFEST_ACCEPT},
        trust_env=False,
        verify=public_tls(),
    )
    response.raise_for_status()
    document = json.loads(response.content)
    return [document["config"]["digest"], *(layer["digest"] for layer in document["layers"])]


def blob_directory(root: Path, digest: str) -> Path:
    hex_digest = digest.removeprefix("sha256:")
    return root / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest


def stored_blobs(root: Path) -> set[str]:
    """Every blob the storage holds, as digests, read from the host through the bind mount."""
    data_files = (root / "docker/registry/v2/blobs/sha256").glob("*/*/data")
    return {f"sha256:{path.parent.name}" for path in data_files}


def assert_pullable(url: str, repository: str, reference: str) -> None:
    """GET the manifest and every blob it names, and check each body against its digest."""
    manifest = httpx.get(
        f"{url}/v2/{repository}/manifests/{reference}",
        headers={"Accept": media_types.MANIFEST_ACCEPT},
        trust_env=False,
        verify=public_tls(),
    )
    assert manifest.status_code == 200, manifest.text
    for digest in manifest_blobs(url, repository, reference):
        blob = httpx.get(
            f"{url}/v2/{repository}/blobs/{digest}", trust_env=False, verify=public_tls()
        )
        assert blob.status_code == 200, f"{digest}: {blob.status_code}"
        assert f"sha256:{hashlib.sha256(blob.content).hexdigest()}" == digest


def host_du(path: Path) -> int:
    done = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def started_at(registry: RegistryContainer) -> str:
    registry.container.reload()
    return str(registry.container.attrs["State"]["StartedAt"])


# --- exec -------------------------------------------------------------------------------


def test_exec_strategy_frees_the_blobs_of_the_deleted_manifest_only(
    docker_engine: DockerEngine, registry_container: RegistryContainer, seeded: Seeded
) -> None:
    before = stored_blobs(registry_container.host_root)
    assert set(seeded.freed) <= before

    result = collector(docker_engine, registry_container, "exec").collect()

    after = stored_blobs(registry_container.host_root)
    assert before - after == set(seeded.freed)
    assert (result.mode, result.ran, result.blobs_deleted) == ("docker", True, 4)
    assert not any(blob_directory(registry_container.host_root, d).exists() for d in seeded.freed)
    assert_pullable(registry_container.url, "app", "kept")


def test_exec_strategy_restarts_the_registry_so_it_forgets_swept_blobs(
    docker_engine: DockerEngine,
    registry_container: RegistryContainer,
    seeded: Seeded,
    container_seeder: Seeder,
) -> None:
    """The in-memory descriptor cache would outlive the files: exec restarts the container."""
    first_start = started_at(registry_container)

    result = collector(docker_engine, registry_container, "exec").collect()

    swept_layer = seeded.freed[-1]
    assert not blob_directory(registry_container.host_root, swept_layer).exists()
    assert result.restarted and started_at(registry_container) != first_start
    assert container_seeder.blob_status("app", swept_layer) == 404
    assert_pullable(registry_container.url, "app", "kept")


def test_exec_without_the_restart_leaves_the_registry_believing_in_swept_blobs(
    docker_engine: DockerEngine,
    registry_container: RegistryContainer,
    seeded: Seeded,
    container_seeder: Seeder,
) -> None:
    """Why blob_cache: none must be true: this registry's config says inmemory."""
    collector(docker_engine, registry_container, "exec", blob_cache="none").collect()

    swept_layer = seeded.freed[-1]
    assert not blob_directory(registry_container.host_root, swept_layer).exists()
    assert container_seeder.blob_status("app", swept_layer) == 200


@pytest.mark.parametrize("strategy", ["exec", "offline"])
def test_restart_command_runs_on_this_host_after_gc_even_when_gc_fails(
    docker_engine: DockerEngine,
    registry_container: RegistryContainer,
    seeded: Seeded,
    strategy: Strategy,
    tmp_path: Path,
) -> None:
    """For a redis blob cache, which outlives the container: the command flushes it."""
    flushed = tmp_path / "flushed"
    flush = ("sh", "-c", f'echo flushed >> "{flushed}"')
    collector(docker_engine, registry_container, strategy, restart_command=flush).collect()
    failing = collector(
        docker_engine,
        registry_container,
        strategy,
        command=("sh", "-c", "exit 4"),
        restart_command=flush,
    )

    with pytest.raises(GarbageCollectionError, match="exited 4"):
        failing.collect()

    assert flushed.read_text().split() == ["flushed", "flushed"]
    assert registry_container.running()


def test_exec_with_delete_untagged_passes_the_flag(
    docker_engine: DockerEngine, registry_container: RegistryContainer, container_seeder: Seeder
) -> None:
    """An untagged manifest is marked (kept) by plain GC, swept with --delete-untagged.

    The repository keeps a tagged image: 2.8.2's --delete-untagged fails outright on a
    repository without any tag ("failed to retrieve tags unknown repository").
    """
    container_seeder.image("app", ["kept"], CREATED, layers=1)
    untagged = container_seeder.image("app", [], CREATED, layers=1)
    plain = collector(docker_engine, registry_container, "exec").collect()
    assert plain.blobs_deleted == 0

    swept = collector(docker_engine, registry_container, "exec", delete_untagged=True).collect()

    assert swept.blobs_deleted == 3  # manifest, config, layer
    assert untagged not in stored_blobs(registry_container.host_root)
    assert_pullable(registry_container.url, "app", "kept")


def test_exec_against_a_stopped_container_fails_clearly(
    docker_engine: DockerEngine, registry_container: RegistryContainer
) -> None:
    registry_container.container.stop(timeout=1)

    with pytest.raises(GarbageCollectionError, match=r"exec: container \S+ is exited, not"):
        collector(docker_engine, registry_container, "exec").collect()


@pytest.mark.parametrize("strategy", ["exec", "offline"])
def test_a_container_that_does_not_exist_fails_clearly(
    docker_engine: DockerEngine, strategy: Strategy
) -> None:
    gc = GarbageCollection(mode="docker", container="no-such-registry", strategy=strategy)
    collecting = DockerCollector(gc, lambda seconds: None, docker_engine.client)

    with pytest.raises(GarbageCollectionError, match="no container named no-such-registry"):
        collecting.collect()


def test_exec_past_its_timeout_fails_and_says_it_may_go_on(
    docker_engine: DockerEngine, registry_container: RegistryContainer
) -> None:
    slow = collector(
        docker_engine,
        registry_container,
        "exec",
        command=("sh", "-c", "sleep 5"),
        timeout=timedelta(seconds=1),
    )

    with pytest.raises(GarbageCollectionError, match=r"still running after 1s .* may go on"):
        slow.collect()


# --- offline ----------------------------------------------------------------------------


def test_offline_strategy_frees_the_blobs_and_the_registry_answers_again(
    docker_engine: DockerEngine,
    registry_container: RegistryContainer,
    seeded: Seeded,
    container_seeder: Seeder,
) -> None:
    before, first_start = stored_blobs(registry_container.host_root), started_at(registry_container)

    result = collector(docker_engine, registry_container, "offline").collect()

    swept = before - stored_blobs(registry_container.host_root)
    assert swept == set(seeded.freed)
    assert (result.mode, result.ran, result.blobs_deleted) == ("docker", True, len(swept))
    assert registry_container.running() and answers(registry_container.url)
    assert started_at(registry_container) != first_start, "the registry was never restarted"
    assert_pullable(registry_container.url, "app", "kept")
    assert container_seeder.blob_status("app", seeded.freed[-1]) == 404, "restart flushes the cache"
    assert gc_containers(docker_engine.client, registry_container) == []


@pytest.mark.parametrize(
    "registry_container",
    [{"environment": {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/var/lib/registry/nested"}}],
    indirect=True,
)
def test_offline_gc_runs_with_the_registry_environment(
    docker_engine: DockerEngine, registry_container: RegistryContainer, seeded: Seeded
) -> None:
    """Without the container's REGISTRY_* variables GC would sweep the config's root."""
    nested = registry_container.host_root / "nested"
    before = stored_blobs(nested)

    result = collector(docker_engine, registry_container, "offline").collect()

    assert before - stored_blobs(nested) == set(seeded.freed)
    assert result.blobs_deleted == 4


@pytest.mark.parametrize(
    "registry_container", [{"image_entrypoint": ["/bin/sh", "-c", "exit 3"]}], indirect=True
)
def test_offline_gc_is_not_run_through_the_image_entrypoint(
    docker_engine: DockerEngine, registry_container: RegistryContainer, seeded: Seeded
) -> None:
    result = collector(docker_engine, registry_container, "offline").collect()

    assert result.blobs_deleted == 4
    assert not blob_directory(registry_container.host_root, seeded.freed[0]).exists()


@pytest.mark.parametrize("strategy", ["exec", "offline"])
def test_a_failing_gc_raises_and_the_registry_is_running_and_answering(
    docker_engine: DockerEngine,
    registry_container: RegistryContainer,
    seeded: Seeded,
    strategy: Strategy,
) -> None:
    failing = collector(docker_engine, registry_container, strategy, command=MISSING_CONFIG)

    with pytest.raises(
        GarbageCollectionError,
        match=r"garbage-collect exited 1 .*: configuration error: open \S+/missing\.yml",
    ):
        failing.collect()

    assert registry_container.running() and answers(registry_container.url)
    assert set(seeded.freed) <= stored_blobs(registry_container.host_root)
    assert gc_containers(docker_engine.client, registry_container) == []


def test_a_failing_gc_and_a_failing_restart_are_both_reported(
    docker_engine: DockerEngine, registry_container: RegistryContainer
) -> None:
    def never_ready(seconds: float) -> None:
        raise RegistryUnreachable("registry not answering", method="GET", url="/v2/")

    gc = GarbageCollection(
        mode="docker", container=registry_container.name, strategy="offline", command=MISSING_CONFIG
    )
    with pytest.raises(GarbageCollectionError) as raised:
        DockerCollector(gc, never_ready, docker_engine.client).collect()

    message = str(raised.value)
    assert "garbage-collect exited 1" in message
    assert "started but the registry is not ready: registry not answering" in message


def test_offline_gc_past_its_timeout_is_killed_and_the_registry_started_again(
    docker_engine: DockerEngine, registry_container: RegistryContainer
) -> None:
    slow = collector(
        docker_engine,
        registry_container,
        "offline",
        command=("sh", "-c", "sleep 30"),
        timeout=timedelta(seconds=1),
    )

    with pytest.raises(GarbageCollectionError, match="still running after 1s; killed it"):
        slow.collect()

    assert registry_container.running() and answers(registry_container.url)
    assert gc_containers(docker_engine.client, registry_container) == []


# --- storage and client -----------------------------------------------------------------


def test_container_storage_equals_du_on_the_host_and_drops_after_gc(
    docker_engine: DockerEngine, registry_container: RegistryContainer, seeded: Seeded
) -> None:
    """Same files through a bind mount on the same filesystem: apparent sizes are equal."""
    storage = ContainerStorage(docker_engine.client, registry_container.name, "/var/lib/registry")
    before = storage.measure()
    assert before == host_du(registry_container.host_root)

    collector(docker_engine, registry_container, "offline").collect()

    after = storage.measure()
    assert after == host_du(registry_container.host_root)
    assert after < before


def test_container_storage_errors_are_storage_errors(
    docker_engine: DockerEngine, registry_container: RegistryContainer
) -> None:
    missing_path = ContainerStorage(docker_engine.client, registry_container.name, "/nowhere")
    with pytest.raises(StorageError, match=r"du -sb /nowhere .* exited 1"):
        missing_path.measure()

    registry_container.container.stop(timeout=1)
    stopped = ContainerStorage(docker_engine.client, registry_container.name, "/var/lib/registry")
    with pytest.raises(StorageError, match="is not running"):
        stopped.measure()


def test_docker_client_reaches_the_engine_by_setting_or_environment(
    docker_engine: DockerEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/rd-nowhere/docker.sock")
    by_setting = GarbageCollection(mode="docker", docker_host=docker_engine.host)
    with closing(docker_client(by_setting)) as client:
        assert client.ping()

    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    with closing(docker_client(GarbageCollection(mode="docker"))) as client:
        assert client.ping()


@pytest.mark.parametrize("docker_host", ["unix:///tmp/rd-nowhere/docker.sock", "tcp://127.0.0.1:9"])
def test_docker_client_for_an_unreachable_host_fails_in_one_line_naming_it(
    docker_host: str,
) -> None:
    with pytest.raises(GarbageCollectionError) as raised:
        docker_client(GarbageCollection(mode="docker", docker_host=docker_host))

    message = str(raised.value)
    assert message.startswith(f"cannot reach Docker at {docker_host}: ")
    assert "\n" not in message
