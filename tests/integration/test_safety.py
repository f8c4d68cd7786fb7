"""Issue 7's guarantees on a real registry: signatures, fail closed, apply, trash, verify."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cli_support import actions, command_gc, no_traceback, retention, write_policy
from registry_server import RegistryServer, Seeder

from retention.registry import media_types

NOW = datetime.now(UTC)
BUILDS = {"name": "builds", "match": r"v\d+", "keep_last": 1}


def ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


def sign(seeder: Seeder, repository: str, digest: str) -> str:
    """A cosign-style signature: a small OCI manifest with a subject, tagged sha256-<hex>.sig."""
    config_digest, config_size = seeder.blob(repository, b"{}")
    payload, size = seeder.blob(repository, f"signature of {digest}".encode())
    subject_size = len(seeder.manifest_bytes(repository, digest))
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_types.OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "digest": payload,
                    "size": size,
                }
            ],
            "subject": {
                "mediaType": media_types.DOCKER_MANIFEST,
                "digest": digest,
                "size": subject_size,
            },
        }
    ).encode()
    tag = digest.replace(":", "-") + ".sig"
    return seeder.manifest(repository, [tag], body, media_types.OCI_MANIFEST)


def test_signatures_follow_their_image(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    old = seeder.image("app", ["v1"], ago(9), unique="old")
    new = seeder.image("app", ["v2"], ago(1), unique="new")
    old_sig, new_sig = sign(seeder, "app", old), sign(seeder, "app", new)
    policy = write_policy(tmp_path / "p.yml", registry_server.url, {"name": "all", "keep_last": 1})

    result = retention("run", "-c", str(policy), "-o", "json")

    assert result.code == 0, result.stderr
    report = result.json()
    assert actions(report, "app") == {
        "v2": "keep",
        new.replace(":", "-") + ".sig": "keep",
        "v1": "delete",
        old.replace(":", "-") + ".sig": "delete",
    }
    assert [(a["digest"], a["outcome"]) for a in report["applied"]] == [
        (old, "deleted"),
        (old_sig, "deleted"),
    ]
    assert seeder.manifest_status("app", new_sig) == 200
    assert seeder.manifest_status("app", old_sig) == 404


def test_a_repository_not_fully_read_deletes_nothing_and_the_others_go_on(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    broken = [seeder.image("broken", [f"v{i}"], ago(9 - i), unique=f"b{i}") for i in range(3)]
    fine = [seeder.image("fine", [f"v{i}"], ago(9 - i), unique=f"f{i}") for i in range(3)]
    revisions = registry_server.root / "docker/registry/v2/repositories/broken/_manifests"
    shutil.rmtree(revisions / "revisions/sha256" / broken[1].split(":")[1])
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)

    result = retention("run", "-c", str(policy), "-o", "json")

    assert result.code == 1
    no_traceback(result)
    assert {a["digest"] for a in result.json()["applied"]} == set(fine[:2])
    assert seeder.manifest_status("broken", broken[0]) == 200
    assert any(line.startswith("error: broken:") for line in result.error_lines)


def test_apply_carries_out_a_reviewed_plan_and_skips_what_changed(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    digests = [seeder.image("app", [f"v{i}"], ago(9 - i), unique=f"i{i}") for i in range(4)]
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)
    plan = tmp_path / "plan.json"
    assert retention("plan", "-c", str(policy), "-o", "json", "-f", str(plan)).code == 0
    moved = seeder.image("app", ["v0"], ago(0), unique="pushed-after-review")
    seeder.image("app", ["v9"], ago(20), unique="not-in-the-plan")

    result = retention("apply", str(plan), "-c", str(policy), "-o", "json")

    assert result.code == 0, result.stderr
    applied = {a["digest"]: (a["outcome"], a["detail"]) for a in result.json()["applied"]}
    assert applied == {
        digests[0]: ("skipped", f"tag 'v0' moved to {moved} since the plan"),
        digests[1]: ("deleted", ""),
        digests[2]: ("deleted", ""),
    }
    assert seeder.manifest_status("app", "v9") == 200


def test_apply_refuses_a_plan_for_another_registry_or_a_file_that_is_no_plan(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps(
            {
                "registry": "http://127.0.0.1:1",
                "generated_at": "2026-01-01T00:00:00Z",
                "repositories": [],
                "summary": {"reclaimable_bytes": 0},
            }
        )
    )
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")

    mismatch = retention("apply", str(other), "-c", str(policy))
    unreadable = retention("apply", str(junk), "-c", str(policy))

    assert mismatch.code == 1 and unreadable.code == 2
    no_traceback(mismatch)
    no_traceback(unreadable)
    assert "the plan is for http://127.0.0.1:1" in mismatch.error_lines[0]
    assert "not a retention plan report" in unreadable.error_lines[0]


def test_trash_restores_a_deleted_image_until_gc_collects_it(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    amd = seeder.image("multi", [], ago(9), unique="amd")
    arm = seeder.image("multi", [], ago(9), unique="arm")
    old = seeder.index("multi", ["v1"], [amd, arm])
    seeder.image("multi", ["v2"], ago(1), unique="new")
    sections = command_gc(registry_server, delay="1h")
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS, **sections)

    run = retention("run", "-c", str(policy), "-o", "json")
    report = run.json()
    run_id = report["run_id"]
    listed = retention("trash", "list", "-c", str(policy))
    restored = retention("restore", run_id, "-c", str(policy), "--tag", "v1")

    assert run.code == 0, run.stderr
    assert report["gc"]["ran"] is False and "gc.delay=1h" in report["gc"]["skipped"]
    assert run_id in listed.stdout and "restorable" in listed.stdout
    assert restored.code == 0, restored.stderr
    assert seeder.manifest_status("multi", "v1") == 200
    assert seeder.digest("multi", "v1") == old
    assert seeder.manifest_status("multi", amd) == 200


def test_restore_is_refused_once_gc_collected_the_run(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    for i in range(3):
        seeder.image("app", [f"v{i}"], ago(9 - i), unique=f"i{i}")
    policy = write_policy(
        tmp_path / "p.yml", registry_server.url, BUILDS, **command_gc(registry_server)
    )
    run_id = retention("run", "-c", str(policy), "-o", "json").json()["run_id"]

    refused = retention("restore", run_id, "-c", str(policy))
    unknown = retention("restore", "no-such-run", "-c", str(policy))

    assert refused.code == 1 and unknown.code == 1
    no_traceback(refused)
    assert "was garbage-collected" in refused.error_lines[0]
    assert "no trash for run 'no-such-run'" in unknown.error_lines[0]
    assert "collected" in retention("trash", "list", "-c", str(policy)).stdout


def test_verification_catches_a_kept_index_whose_platform_was_deleted_by_hand(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    amd = seeder.image("multi", [], ago(2), unique="amd")
    arm = seeder.image("multi", [], ago(2), unique="arm")
    seeder.index("multi", ["v2"], [amd, arm])
    for i in range(3):
        seeder.image("app", [f"v{i}"], ago(9 - i), unique=f"i{i}")
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)
    plan = tmp_path / "plan.json"
    assert retention("plan", "-c", str(policy), "-o", "json", "-f", str(plan)).code == 0
    assert seeder.delete("multi", arm) == 202

    result = retention("apply", str(plan), "-c", str(policy))

    assert result.code == 1
    no_traceback(result)
    assert f"broken: after deletion: multi:v2: manifest {arm} is missing" in result.stdout


def test_a_multi_arch_image_broken_by_delete_untagged_run_by_hand_fails_the_pass(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    """retention refuses --delete-untagged (test_gc_policy); an operator may still run it."""
    amd = seeder.image("multi", [], ago(2), unique="amd")
    arm = seeder.image("multi", [], ago(2), unique="arm")
    seeder.index("multi", ["v2"], [amd, arm])
    for i in range(3):
        seeder.image("app", [f"v{i}"], ago(9 - i), unique=f"i{i}")
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)
    assert registry_server.garbage_collect("--delete-untagged").returncode == 0

    result = retention("run", "-c", str(policy), "--format", "json")

    assert result.code == 1
    (multi,) = [r for r in result.json()["repositories"] if r["name"] == "multi"]
    assert "MANIFEST_UNKNOWN" in multi["error"]
    assert amd in multi["error"] or arm in multi["error"]


def test_a_policy_with_delete_untagged_is_refused_before_anything_is_deleted(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    for i in range(3):
        seeder.image("app", [f"v{i}"], ago(9 - i), unique=f"i{i}")
    sections = command_gc(registry_server, delete_untagged=True)
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS, **sections)

    result = retention("run", "-c", str(policy), "-o", "json")

    assert result.code == 2
    no_traceback(result)
    (error,) = result.error_lines
    assert "gc.delete_untagged" in error and "distribution#3178" in error
    assert seeder.manifest_status("app", "v0") == 200


def test_a_repository_over_its_delete_budget_is_held_and_said_why(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    for i in range(3):
        seeder.image("app", [f"v{i}"], ago(9 - i), unique=f"i{i}")
    typo = {"name": "typo", "match": ".*", "keep_last": 0}
    policy = write_policy(tmp_path / "p.yml", registry_server.url, typo)

    planned = retention("plan", "-c", str(policy))
    result = retention("run", "-c", str(policy), "-o", "json")

    assert planned.code == 0, planned.stderr
    held = "1 repository HELD by safety.max_delete_fraction: run would delete nothing there"
    assert f"{held}, and exits 1" in planned.stdout
    assert result.code == 1, "a safety limit is exit 1, as the README says"
    (app,) = result.json()["repositories"]
    assert app["held"] == (
        "would delete 3 of 3 tags (100%), more than safety.max_delete_fraction=0.9"
    )
    assert result.json()["applied"] == []
    assert "error: app: HELD: would delete 3 of 3 tags" in result.stderr
