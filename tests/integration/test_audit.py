"""The audit trail on a real registry: ``retention run`` and ``restore`` write it,
``retention audit`` reads it back by every filter."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cli_support import command_gc, log_events, no_traceback, retention, write_policy
from registry_server import RegistryServer, Seeder

NOW = datetime.now(UTC)
BUILDS = {"name": "builds", "match": r"build-\d+", "keep_last": 1}


def ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


def audit_lines(policy: Path, *filters: str) -> list[dict[str, Any]]:
    found = retention("audit", "-c", str(policy), "-o", "json", *filters)
    assert found.code == 0, found.stderr
    return [json.loads(line) for line in found.stdout.splitlines()]


def test_a_run_audits_each_deleted_manifest_and_a_restore_audits_its_return(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    amd = seeder.image("multi", [], ago(9), unique="amd")
    arm = seeder.image("multi", [], ago(9), unique="arm")
    index = seeder.index("multi", ["build-1"], [amd, arm])
    seeder.image("multi", ["build-2"], ago(1), unique="new")
    old = seeder.image("app", ["build-1", "build-1-alias"], ago(5), unique="a1")
    seeder.image("app", ["build-2"], ago(1), unique="a2")
    keep_alias = {"name": "alias", "match": "build-1-alias", "max_age": "30d"}
    policy = write_policy(
        tmp_path / "p.yml",
        registry_server.url,
        BUILDS,
        keep_alias,
        **command_gc(registry_server, delay="1h"),
    )

    run = retention("run", "-c", str(policy), "-o", "json")
    assert run.code == 0, run.stderr
    run_id = run.json()["run_id"]
    lines = (tmp_path / "state" / "audit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]

    deleted = {(r["repository"], r["digest"]) for r in records}
    confirmed = {(a["repository"], a["digest"]) for a in run.json()["applied"]}
    assert deleted == confirmed == {("multi", index), ("multi", amd), ("multi", arm)}
    assert old not in {r["digest"] for r in records}  # kept: its alias is still wanted
    by_digest = {r["digest"]: r for r in records}
    top = by_digest[index]
    assert (top["action"], top["run_id"], top["registry"]) == (
        "deleted",
        run_id,
        run.json()["registry"],
    )
    assert top["tags"] == ["build-1"] and top["rule"] == "builds"
    assert "keep_last" in top["reason"] or "newer" in top["reason"], top["reason"]
    assert by_digest[amd]["tags"] == [] and index in by_digest[amd]["reason"]
    assert by_digest[amd]["bytes_estimate"] > by_digest[index]["bytes_estimate"] > 0
    assert abs(datetime.fromisoformat(top["time"]) - datetime.now(UTC)) < timedelta(minutes=5)

    restored = retention("restore", run_id, "-c", str(policy), "--tag", "build-1")
    assert restored.code == 0, restored.stderr
    back = audit_lines(policy, "--repository", "multi", "--digest", index)
    assert [r["action"] for r in back] == ["deleted", "restored"]
    assert back[1]["tags"] == ["build-1"] and run_id in back[1]["reason"]


def test_audit_finds_records_by_each_filter_and_says_bad_dates_in_one_line(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    first = seeder.image("app", ["build-1"], ago(5), unique="a1")
    seeder.image("app", ["build-2"], ago(1), unique="a2")
    other = seeder.image("web", ["build-7"], ago(5), unique="w7")
    seeder.image("web", ["build-8"], ago(1), unique="w8")
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)
    assert retention("run", "-c", str(policy)).code == 0

    assert {r["digest"] for r in audit_lines(policy)} == {first, other}
    assert [r["digest"] for r in audit_lines(policy, "--repository", "web")] == [other]
    assert [r["digest"] for r in audit_lines(policy, "--tag", "build-1")] == [first]
    assert [r["digest"] for r in audit_lines(policy, "--digest", first[:15])] == [first]
    assert len(audit_lines(policy, "--since", "1h")) == 2
    assert audit_lines(policy, "--until", "1h") == []
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert audit_lines(policy, "--since", tomorrow) == []
    assert len(audit_lines(policy, "--until", tomorrow)) == 2

    table = retention("audit", "-c", str(policy), "--repository", "app")
    assert table.code == 0 and "build-1" in table.stdout and "deleted" in table.stdout
    bad = retention("audit", "-c", str(policy), "--since", "last tuesday")
    assert bad.code == 2
    no_traceback(bad)
    assert "--since 'last tuesday' is not a date" in bad.stderr


def test_a_dry_run_and_a_plan_write_no_audit_line(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    seeder.image("app", ["build-1"], ago(5), unique="a1")
    seeder.image("app", ["build-2"], ago(1), unique="a2")
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)

    assert retention("run", "--dry-run", "-c", str(policy)).code == 0
    assert retention("plan", "-c", str(policy)).code == 0

    assert not (tmp_path / "state" / "audit.jsonl").exists()
    assert audit_lines(policy) == []


def test_an_audit_log_that_cannot_be_written_stops_the_deletions_after_the_batch(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    amd = seeder.image("multi", [], ago(9), unique="amd")
    arm = seeder.image("multi", [], ago(9), unique="arm")
    seeder.index("multi", ["build-1"], [amd, arm])
    seeder.image("multi", ["build-2"], ago(1), unique="new")
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)
    (tmp_path / "state" / "audit.jsonl").mkdir(parents=True)  # appending to it fails

    run = retention("run", "-c", str(policy), "-o", "json")

    assert run.code == 1
    no_traceback(run)
    outcomes = {a["digest"]: a["outcome"] for a in run.json()["applied"]}
    assert outcomes[amd] == outcomes[arm] == "failed"  # the children were never attempted
    assert seeder.manifest_status("multi", amd) == seeder.manifest_status("multi", arm) == 200
    assert "the audit log cannot be written" in run.stderr


def test_debug_logs_one_decision_per_tag_with_its_reason_and_info_one_line_per_deletion(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    seeder.image("app", ["build-1"], ago(5), unique="a1")
    seeder.image("app", ["build-2"], ago(1), unique="a2")
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)

    quiet = retention("--log-format", "json", "plan", "-c", str(policy))
    loud = retention("--log-format", "json", "--log-level", "debug", "run", "-c", str(policy))

    assert [e for e in log_events(quiet.stderr) if e["event"] == "decision"] == []
    decisions = {e["tag"]: e for e in log_events(loud.stderr) if e["event"] == "decision"}
    assert set(decisions) == {"build-1", "build-2"}
    assert decisions["build-1"]["action"] == "delete" and decisions["build-1"]["reason"]
    assert decisions["build-2"]["action"] == "keep" and decisions["build-2"]["rule"] == "builds"
    deleted = [e for e in log_events(loud.stderr) if e["event"] == "manifest deleted"]
    assert [(e["level"], e["tags"]) for e in deleted] == [("info", ["build-1"])]
