"""scan: storage against the real registry's files: the same inventory, the same failures.

Every registry here is filled by pushing over the real API, so the files read are the ones
Distribution 2.8 wrote. Damage is done the way it happens in the field: a file removed or
cut short on disk, a blob removed between two reads of the scan.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from registry_server import RegistryServer, Seeder

from retention.apply import executor
from retention.core import planner
from retention.core.model import Inventory, Outcome, Repository, Tag
from retention.core.policy import RegistrySettings, policy_from_mapping
from retention.errors import StorageReadError
from retention.registry import RegistryClient
from retention.scan import inventory, storage_prefetch, storage_reader
from retention.scan.push_times import with_link_times
from retention.scan.storage_reader import (
    each_repository,
    read_storage,
    storage_root_problem,
)


@pytest.fixture(autouse=True, params=["read in the scan's process", "prefetched by the helper"])
def prefetch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every test twice: the helper process that reads ahead is only a shortcut, so what a
    scan finds, and how it fails, must not depend on whether it ran."""
    prefetched = request.param == "prefetched by the helper"
    monkeypatch.setattr(storage_reader, "PREFETCH_AFTER_TAGS", 0 if prefetched else 10**9)
    return prefetched


JANUARY = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
MARCH = datetime(2024, 3, 15, 10, 0, tzinfo=UTC)


async def over_api(server: RegistryServer) -> Inventory:
    async with RegistryClient(RegistrySettings(url=server.url, retries=0)) as client:
        return await inventory.collect(client)


def from_storage(server: RegistryServer) -> Inventory:
    return read_storage(server.root, registry=server.url)


def repositories(collected: Inventory) -> dict[str, Repository]:
    return {repository.name: repository for repository in collected.repositories}


def blob_data(server: RegistryServer, digest: str) -> Path:
    hex_digest = digest.removeprefix("sha256:")
    return server.root / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"


def repository_dir(server: RegistryServer, name: str) -> Path:
    return server.root / "docker/registry/v2/repositories" / name


def seed_everything(seeder: Seeder) -> dict[str, str]:
    """Shared digests, an index and its children, OCI, no created time, nested names."""
    old = seeder.image("team/web", ["v1", "stable"], JANUARY, layers=2)
    seeder.image("team/web", ["v2"], MARCH)
    seeder.image("team", ["undated"], None)
    amd64 = seeder.image("app", [], MARCH, media="oci")
    arm64 = seeder.image("app", [], JANUARY, media="oci")
    index = seeder.index("app", ["multi", "latest"], [amd64, arm64], media="oci")
    seeder.image("app-docker", ["x"], JANUARY, unique="x")
    seeder.blob("half-pushed", b"a layer whose manifest never came")
    return {"old": old, "amd64": amd64, "arm64": arm64, "index": index}


async def test_the_storage_scan_gives_the_same_inventory_as_the_api_scan(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    seed_everything(seeder)

    from_api = await over_api(registry_server)
    read = from_storage(registry_server)

    assert read == from_api
    names = [r.name for r in read.repositories]
    assert names == ["app", "app-docker", "half-pushed", "team", "team/web"]
    assert all(r.error is None for r in read.repositories)


@pytest.mark.parametrize("prefetch", ["read in the scan's process"], indirect=True)
async def test_a_blob_removed_mid_scan_fails_only_its_repository(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    """In the scan's own process only: the helper reads ahead, so a blob removed while the
    scan plans another repository is gone either before the helper reads it (then the scan
    reads the repository itself and fails it, as the damaged-file tests show both ways) or
    after (then the repository was read whole, a moment earlier)."""
    seeder.image("web", ["v1"], JANUARY, unique="1")
    second = seeder.image("web", ["v2"], MARCH, unique="2")
    api = seeder.image("api", ["v1"], JANUARY)
    removed: list[Path] = []

    def remove_once_web_is_listed(done: int, total: int) -> None:
        """Called after each repository: once api is read (web comes next), a blob goes."""
        if (done, total) == (1, 2) and not removed:
            removed.append(blob_data(registry_server, second))
            removed[0].unlink()

    read = read_storage(
        registry_server.root, registry=registry_server.url, progress=remove_once_web_is_listed
    )

    found = repositories(read)
    assert found["api"].tags == (Tag("v1", api),) and found["api"].error is None
    assert removed, "the scan never got as far as the first tag"
    assert found["web"].error is not None
    assert second.removeprefix("sha256:") in found["web"].error
    assert "No such file" in found["web"].error
    assert "\n" not in found["web"].error


@pytest.mark.parametrize(
    "damage",
    [
        "manifest blob cut short",
        "config blob missing",
        "tag link cut short",
        "revision link missing",
        "revision link cut short",
        "config link missing",
        "tag link missing",
    ],
)
async def test_damaged_files_fail_their_repository_and_no_other(
    registry_server: RegistryServer, seeder: Seeder, damage: str
) -> None:
    digest = seeder.image("web", ["v1"], JANUARY, unique="web")
    api = seeder.image("api", ["v1"], JANUARY)
    web = repositories(from_storage(registry_server))["web"]
    config = web.manifests[digest].blobs[0].digest
    hex_digest, config_hex = digest.removeprefix("sha256:"), config.removeprefix("sha256:")
    tags = repository_dir(registry_server, "web") / "_manifests/tags"
    paths = {
        "manifest blob cut short": blob_data(registry_server, digest),
        "config blob missing": blob_data(registry_server, config),
        "tag link cut short": tags / "v1/current/link",
        "revision link missing": repository_dir(registry_server, "web")
        / f"_manifests/revisions/sha256/{hex_digest}/link",
        "revision link cut short": repository_dir(registry_server, "web")
        / f"_manifests/revisions/sha256/{hex_digest}/link",
        "config link missing": repository_dir(registry_server, "web")
        / f"_layers/sha256/{config_hex}/link",
        "tag link missing": tags / "v1/current/link",
    }
    path = paths[damage]
    if damage.endswith("cut short"):
        path.write_bytes(path.read_bytes()[:20])
    else:
        path.unlink()

    found = repositories(from_storage(registry_server))

    assert found["web"].error is not None
    assert found["web"].error.startswith("web: ")
    assert found["api"].error is None and found["api"].tags == (Tag("v1", api),)


async def test_an_index_whose_child_was_deleted_fails_its_repository(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    digests = seed_everything(seeder)
    async with RegistryClient(RegistrySettings(url=registry_server.url)) as client:
        await client.delete_manifest("app", digests["arm64"])

    found = repositories(from_storage(registry_server))

    assert found["app"].error is not None
    assert digests["arm64"] in found["app"].error
    assert found["team/web"].error is None


def test_a_storage_root_that_is_not_a_registry_fails_the_scan_in_one_line(tmp_path: Path) -> None:
    assert storage_root_problem(tmp_path) is not None

    with pytest.raises(StorageReadError) as raised:
        read_storage(tmp_path, registry="http://127.0.0.1:5000")

    assert str(tmp_path) in str(raised.value)
    assert "\n" not in str(raised.value)


async def test_only_repositories_the_filter_accepts_are_read(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    seed_everything(seeder)

    read = read_storage(
        registry_server.root,
        registry=registry_server.url,
        repositories=lambda name: name.startswith("team"),
    )

    assert [r.name for r in read.repositories] == ["team", "team/web"]


async def test_a_tag_moved_after_a_storage_scan_is_skipped_not_deleted(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    now = datetime.now(UTC)
    old = seeder.image("app", ["a"], now - timedelta(days=5), unique="old")
    seeder.image("app", ["b"], now - timedelta(days=1), unique="new")
    policy = policy_from_mapping(
        {
            "registry": {"url": registry_server.url, "retries": 0},
            "rules": [{"name": "builds", "keep_last": 1}],
            "safety": {"max_delete_fraction": 1.0},
            "storage": {"path": str(registry_server.root)},
            "scan": "storage",
        }
    )
    plan = planner.plan(policy, from_storage(registry_server), now)
    moved_to = seeder.image("app", ["a"], now, unique="pushed-later")

    async with RegistryClient(policy.registry) as client:
        results = await executor.apply(client, plan)

    assert [(r.digest, r.outcome, r.detail) for r in results] == [
        (old, Outcome.SKIPPED, f"tag 'a' moved to {moved_to} since the plan")
    ]
    assert seeder.manifest_status("app", old) == 200


async def test_an_unlistable_tag_directory_fails_its_repository_and_progress_still_ends(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    seeder.image("web", ["v1", "v2"], JANUARY)
    seeder.image("api", ["v1", "v2", "v3"], JANUARY)
    api_tags = repository_dir(registry_server, "api") / "_manifests/tags"
    (api_tags / "v2/current/link").unlink()  # api fails at one of its three tags
    web_tags = repository_dir(registry_server, "web") / "_manifests/tags"
    shutil.rmtree(web_tags)
    web_tags.write_bytes(b"not a directory")
    seen: list[tuple[int, int]] = []

    read = read_storage(
        registry_server.root,
        registry=registry_server.url,
        progress=lambda done, total: seen.append((done, total)),
    )

    found = repositories(read)
    assert found["web"].error is not None and "cannot list the tags" in found["web"].error
    assert found["api"].error is not None and "v2" in found["api"].error
    assert seen == [(1, 2), (2, 2)]  # repositories read of listed: failures count as read


async def test_push_times_read_with_the_tags_are_the_link_times_the_api_pass_adds(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    seed_everything(seeder)
    link = repository_dir(registry_server, "team/web") / "_manifests/tags/v2/current/link"
    os.utime(link, (MARCH.timestamp(), MARCH.timestamp()))  # one tag pushed at a known time

    timed = list(each_repository(registry_server.root, push_times=True))
    untimed = list(each_repository(registry_server.root))

    from_links = [with_link_times(r, registry_server.root).tags for r in untimed]
    assert [r.tags for r in timed] == from_links
    assert all(tag.pushed is not None for r in timed for tag in r.tags)
    assert all(tag.pushed is None for r in untimed for tag in r.tags)
    web = {tag.name: tag for tag in repositories(Inventory("", tuple(timed)))["team/web"].tags}
    assert web["v2"].pushed == MARCH


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_a_scan_leaves_no_descriptor_open_when_it_ends_fails_or_stops_early(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    """Files are opened relative to open directories (each repository, ``blobs``): every
    one of them is closed, also after a failed repository and when the scan is dropped."""
    digests = seed_everything(seeder)
    blob_data(registry_server, digests["old"]).unlink()  # team/web fails
    before = open_descriptors()

    read = from_storage(registry_server)
    stopped = each_repository(registry_server.root)
    first = next(stopped)
    stopped.close()

    assert repositories(read)["team/web"].error is not None
    assert first.name == "app" and first.error is None
    assert open_descriptors() == before


async def test_a_registry_without_a_blobs_directory_fails_only_repositories_with_tags(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    """``blobs`` is opened on first use: a registry whose uploads never finished has none,
    and only a repository that needs a blob from it can fail for that."""
    seeder.image("web", ["v1"], JANUARY)
    (repository_dir(registry_server, "empty") / "_layers").mkdir(parents=True)
    shutil.rmtree(registry_server.root / "docker/registry/v2/blobs")

    found = repositories(from_storage(registry_server))

    assert found["empty"] == Repository(name="empty")
    assert found["web"].error is not None and "No such file" in found["web"].error


def prefetch_helpers() -> list[int]:
    """This process's children that are prefetch helpers, running or not yet reaped (a
    zombie has no command line left, so they are told by their program: the only Python
    children here; the registry is ``docker-registry``)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, ValueError):
            continue
        program = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and program.startswith("python"):
            found.append(int(entry))
    return found


async def test_the_helper_is_stopped_and_reaped_when_a_scan_stops_early(
    registry_server: RegistryServer, seeder: Seeder, prefetch: bool
) -> None:
    for number in range(3):
        seeder.image(f"repo-{number}", ["v1"], JANUARY, unique=str(number))

    stopped = each_repository(registry_server.root)
    first = next(stopped)
    running = prefetch_helpers()
    stopped.close()

    assert first.name == "repo-0" and first.error is None
    assert len(running) == (1 if prefetch else 0)
    assert prefetch_helpers() == []


@pytest.mark.parametrize(
    "helper",
    [
        "import sys; sys.exit(3)",  # dies before sending anything
        "import sys; sys.stdin.read(); sys.stdout.write('not a pickle')",
        "import pickle, sys; sys.stdin.read(); pickle.dump(('elsewhere', True, (), {}, {}), "
        "sys.stdout.buffer)",  # a record for another repository
    ],
    ids=["dies", "garbage", "out-of-order"],
)
@pytest.mark.parametrize("prefetch", ["prefetched by the helper"], indirect=True)
async def test_a_helper_that_fails_leaves_the_scan_reading_everything_itself(
    registry_server: RegistryServer,
    seeder: Seeder,
    helper: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed_everything(seeder)
    expected = from_storage(registry_server)
    script = tmp_path / "helper.py"
    script.write_text(helper)
    monkeypatch.setattr(storage_prefetch, "__file__", str(script))

    assert from_storage(registry_server) == expected
    assert prefetch_helpers() == []


@pytest.mark.parametrize("prefetch", ["prefetched by the helper"], indirect=True)
async def test_with_the_helper_the_scan_reads_no_file_itself_and_finds_the_same(
    registry_server: RegistryServer, seeder: Seeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the helper sends is used: the scan's own file reads are not needed at all."""
    seed_everything(seeder)
    monkeypatch.setattr(storage_reader, "PREFETCH_AFTER_TAGS", 10**9)
    in_process = from_storage(registry_server)
    monkeypatch.setattr(storage_reader, "PREFETCH_AFTER_TAGS", 0)

    def no_read(*args: object, **kwargs: object) -> tuple[bytes, float | None]:
        raise AssertionError("read in the scan's process")

    monkeypatch.setattr(storage_reader, "_read", no_read)

    assert from_storage(registry_server) == in_process


@pytest.mark.parametrize("prefetch", ["prefetched by the helper"], indirect=True)
async def test_the_helper_starts_once_the_scan_has_read_enough_tags_itself(
    registry_server: RegistryServer, seeder: Seeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small scan never pays for the helper's start; a large one hands it the rest."""
    for number in range(3):
        seeder.image(f"repo-{number}", ["v1", "v2"], JANUARY, unique=str(number))
    monkeypatch.setattr(storage_reader, "PREFETCH_AFTER_TAGS", 2)  # after repo-0

    scan = each_repository(registry_server.root)
    first, after_first = next(scan), prefetch_helpers()
    second, after_second = next(scan), prefetch_helpers()
    third, after_third = next(scan), prefetch_helpers()
    rest = list(scan)

    assert (after_first, len(after_second), len(after_third)) == ([], 1, 1)
    assert rest == [] and prefetch_helpers() == []
    assert [r.name for r in (first, second, third)] == ["repo-0", "repo-1", "repo-2"]
    assert all(len(r.tags) == 2 and r.error is None for r in (first, second, third))


@pytest.mark.parametrize("prefetch", ["prefetched by the helper"], indirect=True)
async def test_a_repository_too_large_for_one_record_is_read_by_the_scan_itself(
    registry_server: RegistryServer, seeder: Seeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_everything(seeder)
    whole = from_storage(registry_server)
    reads: list[str] = []
    real_read = storage_reader._read

    def counted(directory: object, name: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(name)
        return real_read(directory, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(storage_reader, "PREFETCH_RECORD_LIMIT_BYTES", 1)
    monkeypatch.setattr(storage_reader, "_read", counted)

    assert from_storage(registry_server) == whole
    assert any(name.endswith("/data") for name in reads)
    assert prefetch_helpers() == []
