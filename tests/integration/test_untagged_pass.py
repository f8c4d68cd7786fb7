"""``untagged:`` end to end: re-pushed tags leave manifests behind; retention deletes them by
digest once untagged long enough, and every kept image (multi-arch ones included) stays
whole through the registry's own garbage-collect."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_support import command_gc, no_traceback, retention, write_policy
from registry_server import RegistryServer, Seeder

NOW = datetime.now(UTC)


def ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


@pytest.fixture
def left_behind(seeder: Seeder) -> dict[str, str]:
    """Tags pushed again to new digests, an untagged signed image, and what stays tagged."""
    found: dict[str, str] = {}
    found["app_old"] = seeder.image("app", ["latest"], ago(20), unique="app-1")
    found["app_new"] = seeder.image("app", ["latest"], ago(1), unique="app-2")
    amd_old = seeder.image("multi", [], ago(30), unique="amd-1")
    arm = seeder.image("multi", [], ago(30), unique="arm-shared")
    found["index_old"] = seeder.index("multi", ["1.0"], [amd_old, arm])
    amd_new = seeder.image("multi", [], ago(2), unique="amd-2")
    found["index_new"] = seeder.index("multi", ["1.0"], [amd_new, arm])
    found.update(amd_old=amd_old, amd_new=amd_new, arm=arm)
    subject = seeder.image("signed", [], ago(10), unique="signed-subject")
    signature_tag = f"sha256-{subject.split(':', 1)[1]}.sig"
    found["signature"] = seeder.image("signed", [signature_tag], ago(10), unique="sig")
    found["signed_subject"] = subject
    seeder.image("signed", ["latest"], ago(1), unique="signed-latest")
    return found


def untagged_policy(tmp_path: Path, server: RegistryServer, **extra: Any) -> Path:
    sections = {**command_gc(server), **extra}
    return write_policy(tmp_path / "p.yml", server.url, untagged={"max_age": "7d"}, **sections)


def untagged_rows(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """digest -> (action, reason) of every row without a tag, across repositories."""
    return {
        row["digest"]: (row["action"], row["reason"])
        for repository in report["repositories"]
        for row in repository["manifests"]
        if row["kind"] == "untagged"
    }


def age_untagged_times(policy: Path, days: int) -> None:
    """What days of passes would have done: move every first-seen time back."""
    state = json.loads(policy.read_text())["state_dir"]
    path = Path(state) / "untagged-since.json"
    seen = json.loads(path.read_text())
    for digests in seen.values():
        for digest, moment in digests.items():
            earlier = datetime.fromisoformat(moment) - timedelta(days=days)
            digests[digest] = earlier.isoformat()
    path.write_text(json.dumps(seen))


def test_untagged_manifests_are_planned_aged_and_deleted_by_digest_keeping_every_image_whole(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, left_behind: dict[str, str]
) -> None:
    policy = untagged_policy(tmp_path, registry_server)
    gone = [left_behind[k] for k in ("app_old", "index_old", "amd_old")]

    first = retention("plan", "-c", str(policy), "-o", "json")

    assert first.code == 0, first.stderr
    rows = untagged_rows(first.json())
    assert set(rows) == {*gone, left_behind["signed_subject"]}
    assert all(action == "keep" for action, _ in rows.values())
    assert rows[left_behind["app_old"]][1].startswith("untagged for ")
    assert rows[left_behind["app_old"]][1].endswith(", newer than 7d")

    age_untagged_times(policy, days=9)
    table = retention("plan", "-c", str(policy), "--only", "delete")
    assert table.stdout.count("<untagged>  DELETE") == 3, table.stdout
    assert "untagged for 9d, older than 7d" in table.stdout
    planned = untagged_rows(retention("plan", "-c", str(policy), "-o", "json").json())
    assert planned[left_behind["signed_subject"]] == (
        "keep",
        f"subject of kept signature 'sha256-{left_behind['signed_subject'][7:]}.sig'",
    )

    result = retention("run", "-c", str(policy), "-o", "json")

    assert result.code == 0, result.stderr
    report = result.json()
    assert {a["digest"]: a["outcome"] for a in report["applied"]} == dict.fromkeys(gone, "deleted")
    assert report["summary"]["untagged_to_delete"] == 3
    audit = Path(json.loads(policy.read_text())["state_dir"]) / "audit.jsonl"
    reasons = {r["digest"]: r["reason"] for r in map(json.loads, audit.read_text().splitlines())}
    assert reasons == dict.fromkeys(gone, "untagged for 9d, older than 7d")
    assert report["gc"]["ran"] and report["verification"] == []
    for digest in gone:
        assert seeder.manifest_status("app" if digest == gone[0] else "multi", digest) == 404
    assert_whole(seeder, "multi", "1.0")
    assert_whole(seeder, "app", "latest")
    assert_whole(seeder, "signed", left_behind["signed_subject"])
    assert_whole(seeder, "signed", f"sha256-{left_behind['signed_subject'][7:]}.sig")

    collected = registry_server.garbage_collect()  # again, by hand: nothing kept is swept
    assert collected.returncode == 0, collected.stderr
    registry_server.stop()
    registry_server.start()
    assert_whole(seeder, "multi", "1.0")
    assert_whole(seeder, "multi", left_behind["arm"])


def assert_whole(seeder: Seeder, repository: str, reference: str) -> None:
    """The manifest, every child, and every blob they name answer 200."""
    assert seeder.manifest_status(repository, reference) == 200, reference
    document = json.loads(seeder.manifest_bytes(repository, reference))
    for child in document.get("manifests", []):
        assert_whole(seeder, repository, child["digest"])
    for blob in [document.get("config"), *document.get("layers", [])]:
        if blob is not None:
            assert seeder.blob_status(repository, blob["digest"]) == 200, blob["digest"]


def test_a_digest_tagged_again_after_the_plan_is_not_deleted(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, left_behind: dict[str, str]
) -> None:
    policy = untagged_policy(tmp_path, registry_server, gc={"mode": "none"})
    retention("plan", "-c", str(policy), "-o", "json")
    age_untagged_times(policy, days=9)
    saved = tmp_path / "plan.json"
    saved.write_text(retention("plan", "-c", str(policy), "-o", "json").stdout)
    seeder.tag("app", "revived", left_behind["app_old"])

    applied = retention("apply", str(saved), "-c", str(policy), "-o", "json")

    outcomes = {a["digest"]: (a["outcome"], a["detail"]) for a in applied.json()["applied"]}
    assert outcomes[left_behind["app_old"]] == (
        "skipped",
        "tag 'revived' now points at this digest",
    )
    assert outcomes[left_behind["index_old"]][0] == "deleted"
    assert seeder.manifest_status("app", "revived") == 200


def test_an_untagged_manifest_deleted_by_a_run_is_restored_by_digest(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, left_behind: dict[str, str]
) -> None:
    policy = untagged_policy(tmp_path, registry_server, gc={"mode": "none"})
    retention("plan", "-c", str(policy), "-o", "json")
    age_untagged_times(policy, days=9)
    run = retention("run", "-c", str(policy), "-o", "json").json()
    assert seeder.manifest_status("multi", left_behind["index_old"]) == 404

    restored = retention("restore", run["run_id"], "-c", str(policy))

    assert restored.code == 0, restored.stderr
    assert_whole(seeder, "multi", left_behind["index_old"])
    assert_whole(seeder, "app", left_behind["app_old"])


def test_check_refuses_untagged_without_a_readable_storage_path(
    tmp_path: Path, registry_server: RegistryServer
) -> None:
    missing = write_policy(tmp_path / "none.yml", registry_server.url, untagged={"max_age": "7d"})
    wrong = write_policy(
        tmp_path / "wrong.yml",
        registry_server.url,
        untagged={"max_age": "7d"},
        storage={"path": str(tmp_path / "nowhere")},
    )

    for policy, says in (
        (missing, "untagged: needs storage.path on this host"),
        (wrong, "untagged: cannot list manifests no tag points at: "),
    ):
        result = retention("check", "-c", str(policy))
        no_traceback(result)
        assert result.code == 2, result.stderr
        assert len(result.error_lines) == 1, result.stderr
        assert says in result.error_lines[0]


def test_a_damaged_revision_link_fails_only_its_repository_and_keeps_the_ages(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, left_behind: dict[str, str]
) -> None:
    policy = untagged_policy(tmp_path, registry_server)
    retention("plan", "-c", str(policy), "-o", "json")
    age_untagged_times(policy, days=9)
    revisions = registry_server.root / "docker/registry/v2/repositories/app/_manifests/revisions"
    link = revisions / "sha256" / left_behind["app_old"].split(":", 1)[1] / "link"
    link.write_text("not a digest")

    report = retention("plan", "-c", str(policy), "-o", "json").json()

    app = next(r for r in report["repositories"] if r["name"] == "app")
    assert "untagged manifests" in app["error"] and "not its digest" in app["error"]
    assert app["deletions"] == [] and report["ok"] is False
    assert untagged_rows(report)[left_behind["index_old"]][0] == "delete"
    state = json.loads(policy.read_text())["state_dir"]
    seen = json.loads((Path(state) / "untagged-since.json").read_text())
    assert left_behind["app_old"] in seen["app"]  # its age is not lost to the bad read


def test_platforms_pushed_by_digest_moments_ago_are_kept_by_the_grace_period(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    """A multi-arch push uploads its platforms by digest before the index arrives by tag."""
    seeder.image("multi", ["latest"], ago(1), unique="tagged")
    waiting = [seeder.image("multi", [], ago(1), unique=f"platform-{i}") for i in range(2)]
    policy = untagged_policy(tmp_path, registry_server, safety={"grace_period": "1h"})
    retention("plan", "-c", str(policy), "-o", "json")
    age_untagged_times(policy, days=30)

    report = retention("plan", "-c", str(policy), "-o", "json").json()

    rows = untagged_rows(report)
    assert set(rows) == set(waiting)
    for action, reason in rows.values():
        assert action == "keep"
        assert reason.startswith("pushed ") and reason.endswith(
            " ago, within safety.grace_period=1h (an index may be about to reference it)"
        )
    assert report["summary"]["manifests_to_delete"] == 0
