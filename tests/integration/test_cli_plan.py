"""``retention check`` and ``retention plan`` as an operator runs them, on a real registry."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import actions, no_traceback, retention, write_policy
from registry_server import RegistryServer, Seeder, free_port

NOW = datetime.now(UTC)


def ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


BUILDS = {"name": "builds", "match": r"build-\d+", "keep_last": 2}


def seed_builds(seeder: Seeder, repository: str = "app/web", count: int = 5) -> list[str]:
    return [
        seeder.image(repository, [f"build-{i}"], ago(count - i), unique=f"{repository}{i}")
        for i in range(count)
    ]


def test_plan_reports_each_decision_and_deletes_nothing(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    digests = seed_builds(seeder)
    seeder.tag("app/web", "latest", digests[0])
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS, protect=["latest"])

    # One plan as a process of its own (`python -m retention`), the rest in-process.
    result = retention("plan", "-c", str(policy), "-o", "json", process=True)

    assert result.code == 0, result.stderr
    report = result.json()
    assert report["dry_run"] is True
    assert actions(report, "app/web") == {
        "build-4": "keep",
        "build-3": "keep",
        "build-2": "delete",
        "build-1": "delete",
        "build-0": "keep",
        "latest": "keep",
    }
    (web,) = report["repositories"]
    reasons = {t["tag"]: t["reason"] for t in web["tags"]}
    assert reasons["build-0"] == "shares digest with kept tag 'latest'"
    assert web["delete"] == sorted([digests[1], digests[2]])
    assert report["summary"]["tags_to_delete"] == 2
    assert report["summary"]["reclaimable_bytes"] > 0
    assert all(seeder.manifest_status("app/web", d) == 200 for d in digests)


def test_plan_lists_children_of_a_deleted_index_and_keeps_a_kept_indexs_children(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    old = [seeder.image("multi", [], ago(90), unique=f"old{p}") for p in range(2)]
    new = [seeder.image("multi", [], ago(1), unique=f"new{p}") for p in range(2)]
    old_index = seeder.index("multi", ["v1"], [old[0], old[1]])
    seeder.index("multi", ["v2"], [new[0], new[1], old[1]], media="docker")
    rule = {"name": "releases", "keep_last": 1}
    policy = write_policy(tmp_path / "p.yml", registry_server.url, rule)

    report = retention("plan", "-c", str(policy), "-o", "json").json()

    (multi,) = report["repositories"]
    assert multi["delete"] == [old_index, old[0]]
    assert [d["kind"] for d in multi["deletions"]] == ["tagged", "child"]


def test_plan_follows_catalog_pagination_past_one_hundred_repositories(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    names = [f"team/r{i:03d}" for i in range(130)]
    for name in names:
        seeder.image(name, ["a"], ago(3), unique="shared")
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)

    report = retention("plan", "-c", str(policy), "-o", "json").json()

    assert sorted(r["name"] for r in report["repositories"]) == names


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_table_and_markdown_show_the_same_decisions_with_totals(
    fmt: str, tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    seed_builds(seeder)
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)

    result = retention("plan", "-c", str(policy), "-o", fmt)

    assert result.code == 0
    assert "app/web: 5 tags, 3 to delete, 3 manifests" in result.stdout
    assert result.stdout.count("DELETE") == 3
    assert "beyond keep_last=2 (#3 by created time)" in result.stdout
    assert "total: 1 repository, 5 tags, 3 tags to delete" in result.stdout


def test_plan_writes_the_report_to_a_file(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    seed_builds(seeder)
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)
    target = tmp_path / "out" / "plan.json"

    result = retention("plan", "-c", str(policy), "-o", "json", "-f", str(target))

    assert result.code == 0
    assert result.stdout == ""
    assert '"dry_run": true' in target.read_text()


def test_unreachable_registry_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "p.yml", f"http://127.0.0.1:{free_port()}", BUILDS)

    result = retention("plan", "-c", str(policy))

    assert result.code == 1
    no_traceback(result)
    (line,) = result.error_lines
    assert "no answer from the registry" in line and "/v2/" in line


def test_invalid_policy_exits_2_before_contacting_anything(tmp_path: Path) -> None:
    policy = tmp_path / "p.yml"
    policy.write_text(
        "registry:\n  url: http://127.0.0.1:1\nrules:\n  - name: a\n    max_age: 3x\n"
        "    keep_lst: 1\n"
    )
    for command in ("check", "plan", "run"):
        result = retention(command, "-c", str(policy))
        assert result.code == 2, command
        no_traceback(result)
        assert result.error_lines == [
            f"error: {policy}:5 rules[0].max_age: '3x' is not a duration (use 30d, 12h, 2w)",
            f"error: {policy}:6 rules[0]: unknown key 'keep_lst' (did you mean 'keep_last'?)",
        ]


def test_check_accepts_the_example_policy_and_prints_warnings(tmp_path: Path) -> None:
    policy = tmp_path / "p.yml"
    policy.write_text(
        "registry: {url: 'http://127.0.0.1:1'}\n"
        "rules: [{name: a, keep_last: 1}, {name: b, keep_last: 2}]\n"
    )
    example = Path(__file__).parents[2] / "policies.example.yml"

    assert retention("check", "-c", str(example)).code == 0
    result = retention("check", "-c", str(policy))

    assert result.code == 0
    assert "can never claim a tag" in result.stderr and "warning:" in result.stderr


def test_check_refuses_gc_beside_a_writable_registry_with_file_line_and_fix(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "p.yml"
    policy.write_text(
        "registry: {url: 'http://127.0.0.1:1'}\nrules: [{name: a, keep_last: 1}]\n"
        "gc:\n  mode: command\n  command: [registry, garbage-collect, -m, c.yml]\n"
    )

    result = retention("check", "-c", str(policy))

    assert result.code == 2
    no_traceback(result)
    assert [line.split(" ", 2)[1] for line in result.error_lines] == [
        f"{policy}:4",
        f"{policy}:4",
        f"{policy}:5",
    ]
    joined = "\n".join(result.error_lines)
    assert "gc.mode: garbage collection would run beside a registry that accepts pushes" in joined
    assert "gc.blob_cache: the registry's inmemory blob-descriptor cache is kept" in joined
    assert "gc.command: on Distribution 2.x" in joined and "remove -m" in joined


def test_missing_policy_file_is_a_usage_error(tmp_path: Path) -> None:
    result = retention("plan", "-c", str(tmp_path / "nope.yml"))
    assert result.code == 2
    no_traceback(result)


def test_wrong_credentials_are_reported_as_an_authentication_error(
    tmp_path: Path,
) -> None:
    htpasswd = tmp_path / "htpasswd"
    line = subprocess.run(
        ["htpasswd", "-Bbn", "ci", "right"], capture_output=True, text=True, check=True
    ).stdout
    htpasswd.write_text(line)
    auth = {"auth": {"htpasswd": {"realm": "test", "path": str(htpasswd)}}}
    server = RegistryServer(tmp_path / "reg", binary="docker-registry", config=auth)
    server.start()
    try:
        bad = write_policy(
            tmp_path / "bad.yml",
            server.url,
            BUILDS,
            registry={"url": server.url, "username": "ci", "password": "wrong", "retries": 0},
        )
        good = write_policy(
            tmp_path / "good.yml",
            server.url,
            BUILDS,
            registry={"url": server.url, "username": "ci", "password": "right"},
        )
        refused = retention("plan", "-c", str(bad))
        accepted = retention("plan", "-c", str(good), "-o", "json")
    finally:
        server.stop()
    assert refused.code == 1
    no_traceback(refused)
    assert "401" in refused.error_lines[0]
    assert "wrong" not in refused.stderr
    assert accepted.code == 0, accepted.stderr


def test_a_corrupt_manifest_skips_its_repository_and_the_others_go_on(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    broken = seed_builds(seeder, "broken")
    seed_builds(seeder, "fine")
    hex_digest = broken[0].split(":", 1)[1]
    data = registry_server.root / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest
    (data / "data").write_bytes(b'{"schemaVersion": 2, "tampered": true}')
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)

    result = retention("plan", "-c", str(policy), "-o", "json")

    assert result.code == 1
    no_traceback(result)
    report = result.json()
    by_name = {r["name"]: r for r in report["repositories"]}
    assert by_name["broken"]["delete"] == []
    assert by_name["broken"]["error"]
    assert len(by_name["fine"]["delete"]) == 3
    assert any(line.startswith("error: broken:") for line in result.error_lines)


def test_plan_with_scan_storage_reads_the_files_and_decides_as_the_api_scan_does(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    digests = seed_builds(seeder)
    seeder.tag("app/web", "latest", digests[0])
    storage = {"path": str(registry_server.root)}
    by_api = write_policy(tmp_path / "api.yml", registry_server.url, BUILDS, storage=storage)
    by_files = write_policy(
        tmp_path / "files.yml", registry_server.url, BUILDS, storage=storage, scan="storage"
    )

    from_api = retention("plan", "-c", str(by_api), "--format", "json")
    from_files = retention("plan", "-c", str(by_files), "--format", "json")

    assert from_files.code == 0, from_files.stderr
    assert from_files.json()["repositories"] == from_api.json()["repositories"]
    assert actions(from_files.json(), "app/web")["build-1"] == "delete"


def test_check_says_when_scan_storage_is_possible_and_when_it_cannot_read(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    seed_builds(seeder, count=1)  # a registry that never stored anything has no layout yet
    here = {"path": str(registry_server.root)}
    elsewhere = {"path": str(tmp_path / "nothing")}
    possible = write_policy(tmp_path / "a.yml", registry_server.url, BUILDS, storage=here)
    broken = write_policy(
        tmp_path / "b.yml", registry_server.url, BUILDS, storage=elsewhere, scan="storage"
    )
    silent = write_policy(tmp_path / "c.yml", registry_server.url, BUILDS, storage=elsewhere)

    assert "scan: storage can read" in retention("check", "-c", str(possible)).stderr
    result = retention("check", "-c", str(broken))
    assert result.code == 0 and "warning: scan: storage cannot read it" in result.stderr
    assert "scan: storage" not in retention("check", "-c", str(silent)).stderr


def test_scan_storage_without_a_storage_path_is_a_policy_error(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "p.yml", "http://127.0.0.1:1", BUILDS, scan="storage")

    result = retention("check", "-c", str(policy))

    assert result.code == 2
    assert "scan: storage reads storage.path" in result.stderr
    no_traceback(result)
