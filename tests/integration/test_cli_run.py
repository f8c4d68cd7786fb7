"""``retention run`` end to end on a real registry with its own garbage-collect (command mode)."""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_support import (
    actions,
    blob_path,
    command_gc,
    du_bytes,
    log_events,
    no_traceback,
    retention,
    write_policy,
)
from registry_server import RegistryServer, Seeder

NOW = datetime.now(UTC)
BUILDS = {"name": "builds", "match": r"build-\d+", "keep_last": 1}


def ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


def blobs_of(seeder: Seeder, repository: str, digest: str) -> list[str]:
    """Every manifest and blob digest a tag needs, by reading it back from the registry."""
    document = json.loads(seeder.manifest_bytes(repository, digest))
    needed = [digest]
    for child in document.get("manifests", []):
        needed += blobs_of(seeder, repository, child["digest"])
    if "config" in document:
        needed += [document["config"]["digest"]] + [layer["digest"] for layer in document["layers"]]
    return needed


def fully_pullable(seeder: Seeder, repository: str, tag: str) -> bool:
    if seeder.manifest_status(repository, tag) != 200:
        return False
    for needed in blobs_of(seeder, repository, seeder.digest(repository, tag)):
        manifest = seeder.manifest_status(repository, needed)
        blob = seeder.blob_status(repository, needed)
        if 200 not in (manifest, blob):
            return False
    return True


@pytest.fixture
def seeded(seeder: Seeder) -> dict[str, Any]:
    """Builds, a shared digest, and multi-arch indexes, one of which goes."""
    builds = [seeder.image("app", [f"build-{i}"], ago(9 - i), unique=f"b{i}") for i in range(4)]
    seeder.tag("app", "stable", builds[1])
    amd_old = seeder.image("multi", [], ago(50), unique="amd-old")
    arm_shared = seeder.image("multi", [], ago(50), unique="arm-shared")
    amd_new = seeder.image("multi", [], ago(1), unique="amd-new")
    old = seeder.index("multi", ["build-1"], [amd_old, arm_shared])
    new = seeder.index("multi", ["build-2"], [amd_new, arm_shared])
    return {"builds": builds, "amd_old": amd_old, "arm": arm_shared, "old": old, "new": new}


def test_run_deletes_exactly_the_plan_keeps_kept_images_pullable_and_frees_space(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, seeded: dict[str, Any]
) -> None:
    policy = write_policy(
        tmp_path / "p.yml",
        registry_server.url,
        BUILDS,
        protect=["stable"],
        **command_gc(registry_server),
    )
    planned = retention("plan", "-c", str(policy), "-o", "json").json()
    doomed = [seeded["builds"][0], seeded["builds"][2]]
    old_blobs = blobs_of(seeder, "multi", seeded["old"])
    only_old = [b for b in old_blobs if b not in blobs_of(seeder, "multi", seeded["new"])]
    before = du_bytes(registry_server.root)

    result = retention("run", "-c", str(policy), "-o", "json")

    assert result.code == 0, result.stderr
    report = result.json()
    assert actions(report, "app") == actions(planned, "app")
    applied = {a["digest"]: a["outcome"] for a in report["applied"]}
    expected = {d: "deleted" for d in [*doomed, seeded["old"], seeded["amd_old"]]}
    assert applied == expected
    for tag in ("build-3", "stable", "build-1"):
        assert fully_pullable(seeder, "app", tag), tag
    assert fully_pullable(seeder, "multi", "build-2")
    assert seeder.manifest_status("app", "build-0") == 404
    assert seeder.manifest_status("multi", "build-1") == 404
    assert seeder.manifest_status("multi", seeded["amd_old"]) == 404
    assert seeder.manifest_status("multi", seeded["arm"]) == 200
    assert not any(blob_path(registry_server.root, b).exists() for b in only_old)
    after = du_bytes(registry_server.root)
    storage = report["storage"]
    assert storage["before_bytes"] == before
    # Measured right after GC; the probe's test image and canary (a few directories) come
    # after it and stay until the next GC.
    assert storage["after_bytes"] <= after
    assert storage["freed_bytes"] == before - storage["after_bytes"] > 0
    assert report["gc"]["mode"] == "command" and report["gc"]["blobs_deleted"] > 0
    assert report["gc"]["probe"] == "passed"
    events = {e["event"] for e in log_events(result.stderr)}
    assert {"manifest deleted", "gc started", "gc finished", "pass finished"} <= events


def test_dry_run_gives_the_plan_report_and_deletes_nothing(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, seeded: dict[str, Any]
) -> None:
    policy = write_policy(
        tmp_path / "p.yml", registry_server.url, BUILDS, **command_gc(registry_server)
    )
    before = du_bytes(registry_server.root)

    dry = retention("run", "-c", str(policy), "--dry-run", "-o", "json").json()
    planned = retention("plan", "-c", str(policy), "-o", "json").json()

    for report in (dry, planned):
        report.pop("generated_at")
        report.pop("duration_s")
    assert dry == planned
    assert "applied" not in dry
    assert du_bytes(registry_server.root) == before
    assert all(seeder.manifest_status("app", d) == 200 for d in seeded["builds"])


@pytest.mark.parametrize("registry_server", [{"delete_enabled": False}], indirect=True)
def test_registry_with_deletes_disabled_names_the_config_key(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, seeded: dict[str, Any]
) -> None:
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)

    result = retention("run", "-c", str(policy))

    assert result.code == 1
    no_traceback(result)
    assert any("storage.delete.enabled" in line for line in result.error_lines)
    assert all(seeder.manifest_status("app", d) == 200 for d in seeded["builds"])


def test_plan_over_max_deletions_deletes_nothing_unless_forced(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, seeded: dict[str, Any]
) -> None:
    policy = write_policy(
        tmp_path / "p.yml", registry_server.url, BUILDS, safety={"max_deletions": 2}
    )

    planned = retention("plan", "-c", str(policy), "-o", "json")
    refused = retention("run", "-c", str(policy), "-o", "json")
    still_there = [seeder.manifest_status("app", d) for d in seeded["builds"]]
    forced = retention("run", "-c", str(policy), "--force", "-o", "json")

    assert planned.code == 0
    assert "safety.max_deletions=2" in planned.json()["summary"]["refused"]
    assert "warning: run will refuse this plan" in planned.stderr
    assert refused.code == 1
    assert any("safety.max_deletions=2" in line for line in refused.error_lines)
    assert refused.json()["applied"] == []
    assert still_there == [200, 200, 200, 200]
    assert forced.code == 0, forced.stderr
    assert len(forced.json()["applied"]) == 4


def test_a_second_pass_waits_for_no_one_it_fails_while_the_lock_is_held(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, seeded: dict[str, Any]
) -> None:
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)
    state = tmp_path / "state"
    state.mkdir()
    with (state / "retention.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"{os.getpid()}\n")
        held.flush()
        result = retention("run", "-c", str(policy))
    assert result.code == 1
    no_traceback(result)
    assert result.error_lines == [
        f"error: another retention pass is running (lock {state / 'retention.lock'} "
        f"held by pid {os.getpid()})"
    ]
    assert all(seeder.manifest_status("app", d) == 200 for d in seeded["builds"])


def test_failed_gc_is_reported_with_the_deletions_and_exits_1(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, seeded: dict[str, Any]
) -> None:
    gc = command_gc(registry_server)
    gc["gc"]["command"] = [registry_server.binary, "garbage-collect", str(tmp_path / "none.yml")]
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS, **gc)

    result = retention("run", "-c", str(policy), "-o", "json")

    assert result.code == 1
    no_traceback(result)
    report = result.json()
    assert {a["outcome"] for a in report["applied"]} == {"deleted"}
    assert report["gc"]["error"].startswith("garbage-collect exited")
    assert any(line.startswith("error: gc: garbage-collect exited") for line in result.error_lines)


def test_unmeasurable_storage_is_said_once_and_the_pass_goes_on(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, seeded: dict[str, Any]
) -> None:
    gc = command_gc(registry_server)
    gc["storage"] = {"path": str(tmp_path / "not-here")}
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS, **gc)

    result = retention("run", "-c", str(policy), "-o", "json")

    assert result.code == 0, result.stderr
    warnings = [e for e in log_events(result.stderr) if e["event"] == "storage not measured"]
    assert len(warnings) == 1
    assert result.json()["storage"]["freed_bytes"] is None


def test_gc_is_not_run_when_nothing_was_deleted(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    seeder.image("app", ["build-1"], ago(1), unique="only")
    policy = write_policy(
        tmp_path / "p.yml", registry_server.url, BUILDS, **command_gc(registry_server)
    )

    report = retention("run", "-c", str(policy), "-o", "json").json()

    assert report["gc"] == {
        "mode": "command",
        "ran": False,
        "blobs_deleted": None,
        "duration_s": 0.0,
        "error": None,
        "skipped": "nothing deleted since the last collection",
        "restarted": False,
        "probe": None,
    }
    assert report["applied"] == []
