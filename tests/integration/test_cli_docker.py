"""``retention run`` with ``gc.mode: docker`` end to end: the CLI, a real engine, a real GC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import blob_path, du_bytes, no_traceback, retention, write_policy
from docker_engine import DockerEngine, RegistryContainer
from registry_server import Seeder

pytestmark = pytest.mark.docker

NOW = datetime.now(UTC)
BUILDS = {"name": "builds", "keep_last": 1}


def seed(url: str) -> tuple[list[str], Seeder]:
    seeder = Seeder(url)
    digests = [
        seeder.image("app", [f"v{i}"], NOW - timedelta(days=9 - i), layers=2, unique=f"i{i}")
        for i in range(3)
    ]
    return digests, seeder


@pytest.mark.parametrize("strategy", ["offline", "exec"])
def test_run_collects_garbage_in_the_registry_container(
    strategy: str,
    tmp_path: Path,
    docker_engine: DockerEngine,
    registry_container: RegistryContainer,
) -> None:
    digests, seeder = seed(registry_container.url)
    gc = {"mode": "docker", "container": registry_container.name, "strategy": strategy}
    if strategy == "exec":
        gc["writes"] = "none"  # nothing pushes during the test; check refuses exec otherwise
    policy = write_policy(
        tmp_path / "p.yml",
        registry_container.url,
        BUILDS,
        gc=gc,
        storage={"path": "/var/lib/registry"},
    )
    before = du_bytes(registry_container.host_root)

    result = retention(
        "run", "-c", str(policy), "-o", "json", env={"DOCKER_HOST": docker_engine.host}
    )

    assert result.code == 0, result.stderr
    report = result.json()
    assert report["gc"]["ran"] is True and report["gc"]["blobs_deleted"] > 0
    assert report["storage"]["before_bytes"] == before
    assert report["storage"]["freed_bytes"] > 0
    assert report["verification"] == []
    assert report["gc"]["restarted"] is True and report["gc"]["probe"] == "passed"
    assert registry_container.running()
    assert seeder.manifest_status("app", "v2") == 200
    assert seeder.manifest_status("app", digests[0]) == 404
    assert not blob_path(registry_container.host_root, digests[0]).exists()
    seeder.close()


def test_an_unreachable_engine_stops_the_pass_before_anything_is_deleted(
    tmp_path: Path, registry_container: RegistryContainer
) -> None:
    digests, seeder = seed(registry_container.url)
    gc = {
        "mode": "docker",
        "container": registry_container.name,
        "docker_host": f"unix://{tmp_path}/no-engine.sock",
    }
    policy = write_policy(tmp_path / "p.yml", registry_container.url, BUILDS, gc=gc)

    result = retention("run", "-c", str(policy))

    assert result.code == 1
    no_traceback(result)
    assert "no-engine.sock" in result.error_lines[0]
    assert all(seeder.manifest_status("app", d) == 200 for d in digests)
    seeder.close()
