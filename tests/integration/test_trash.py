"""The trash tells the truth: it lists what the registry confirmed deleted, nothing more.

Against a registry with deletes disabled, after Ctrl-C in the middle of 300 deletions, with
a bin that cannot be marked collected and with a damaged bin: the real registry, the real
CLI (a subprocess where a signal is involved).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cli_support import command_gc, no_traceback, retention, write_policy
from registry_server import RecordingTransport, RegistryServer, Seeder, public_tls, registry_binary

from retention.apply import executor
from retention.apply.trash import BinWriter, Trash, TrashBin, TrashEntry
from retention.core import planner
from retention.core.policy import policy_from_mapping
from retention.errors import DeleteDisabled
from retention.registry import RegistryClient
from retention.scan.inventory import collect

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from seed import seed

NOW = datetime.now(UTC)
BUILDS = {"name": "builds", "match": r"v\d+", "keep_last": 1}
ALL = {"name": "all", "keep_last": 1}


def ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


def trash_rows(policy: Path) -> list[list[str]]:
    listed = retention("trash", "list", "-c", str(policy))
    return [line.split() for line in listed.stdout.splitlines()[1:]]


@pytest.mark.parametrize("registry_server", [{"delete_enabled": False}], indirect=True)
def test_a_registry_refusing_deletes_leaves_no_bin_claiming_restorable_manifests(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    for i in range(4):
        seeder.image("app", [f"v{i}"], ago(9 - i), unique=f"i{i}")
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)

    run = retention("run", "-c", str(policy))

    assert run.code == 1
    assert any("storage.delete.enabled" in line for line in run.error_lines)
    assert trash_rows(policy) == []
    assert Trash(tmp_path / "state").bins() == []


def test_the_bin_lists_the_deleted_manifests_once_confirmed(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    digests = [seeder.image("app", [f"v{i}"], ago(9 - i), unique=f"i{i}") for i in range(4)]
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)

    run = retention("run", "-c", str(policy), "-o", "json")

    assert run.code == 0, run.stderr
    (only,) = Trash(tmp_path / "state").bins()
    assert sorted(e.digest for e in only.entries) == sorted(digests[:3])
    assert only.unconfirmed == ()
    assert trash_rows(policy)[0][2:6] == ["3", "3", "0", "restorable"]


@pytest.mark.slow
def test_ctrl_c_mid_deletion_says_how_far_it_got_and_the_bin_lists_exactly_that(
    tmp_path: Path,
) -> None:
    binary = registry_binary()
    assert binary is not None, "docker-registry is not installed"
    server = RegistryServer(tmp_path / "registry", binary=binary)
    seeded = seed(server.root, repositories=1, tags=300)
    server.start()
    try:
        policy = write_policy(
            tmp_path / "p.yml",
            server.url,
            ALL,
            registry={"url": server.url, "retries": 1, "concurrency": 4},
            safety={"max_delete_fraction": 1.0},
        )
        code, stderr = interrupt_after_first_deletion(policy)
        statuses = manifest_statuses(server.url, seeded[0].repository, [s.manifest for s in seeded])
    finally:
        server.stop()

    assert code == 130, stderr
    interrupted = [line for line in stderr.splitlines() if "interrupted after" in line]
    assert len(interrupted) == 1, stderr
    deleted = int(interrupted[0].split("interrupted after ")[1].split()[0])
    assert " of 299 deletions" in interrupted[0]
    assert 0 < deleted < 299
    (only,) = Trash(tmp_path / "state").bins()
    in_bin = {e.digest for e in only.entries}
    assert len(in_bin) == deleted
    assert all(statuses[d] == 404 for d in in_bin)
    doubtful = {e.digest for e in only.unconfirmed}
    assert len(doubtful) <= 4, "concurrency 4: at most four DELETEs in flight"
    gone = {d for d, status in statuses.items() if status == 404}
    assert gone - doubtful == in_bin
    assert trash_rows(policy)[0][2] == str(deleted)


def interrupt_after_first_deletion(policy: Path) -> tuple[int, str]:
    """Run ``retention run`` and send SIGINT once it logs its first deletion."""
    process = subprocess.Popen(
        [sys.executable, "-m", "retention", "--log-format", "json", "run", "-c", str(policy)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if '"manifest deleted"' in line:
            process.send_signal(signal.SIGINT)
            break
    _, rest = process.communicate(timeout=60)
    return process.returncode, "".join(lines) + rest


def manifest_statuses(url: str, repository: str, digests: list[str]) -> dict[str, int]:
    with httpx.Client(base_url=url, trust_env=False, verify=public_tls()) as http:
        return {
            d: http.head(f"/v2/{repository}/manifests/{d}", headers={"Accept": "*/*"}).status_code
            for d in digests
        }


class _SlowDeletesIn(RecordingTransport):
    """The real registry, except that DELETEs in ``slow`` take a while and are counted while
    they run, and DELETEs in ``refusing`` answer 405 UNSUPPORTED as a read-only one does."""

    def __init__(self, slow: str, refusing: str) -> None:
        super().__init__()
        self.slow, self.refusing = slow, refusing
        self.in_flight = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "DELETE" and path.startswith(f"/v2/{self.refusing}/"):
            body = {"errors": [{"code": "UNSUPPORTED", "message": "The operation is unsupported."}]}
            return httpx.Response(405, json=body)
        if request.method == "DELETE" and path.startswith(f"/v2/{self.slow}/"):
            self.in_flight += 1
            try:
                await asyncio.sleep(0.5)
                return await super().handle_async_request(request)
            finally:
                self.in_flight -= 1
        return await super().handle_async_request(request)


async def test_a_405_in_one_repository_cancels_and_awaits_the_others_before_returning(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    for repository in ("fast", "slow"):
        for i in range(3):
            seeder.image(repository, [f"v{i}"], ago(9 - i), unique=f"{repository}{i}")
    policy = policy_from_mapping(
        {"registry": {"url": registry_server.url, "retries": 0}, "rules": [BUILDS]}
    )
    transport = _SlowDeletesIn(slow="slow", refusing="fast")
    async with RegistryClient(policy.registry, transport=transport) as client:
        plan = planner.plan(policy, await collect(client), NOW)
        with pytest.raises(DeleteDisabled):
            await executor.apply(client, plan)
        still_running = transport.in_flight

    assert still_running == 0


def test_a_bin_that_cannot_be_marked_collected_does_not_cost_the_report(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    for i in range(3):
        seeder.image("app", [f"v{i}"], ago(9 - i), unique=f"i{i}")
    sections = command_gc(registry_server)
    state = tmp_path / "state"
    # A GC that succeeds and then loses the trash (a full disk, an operator's rm -rf).
    script = tmp_path / "gc.sh"
    gc_command = " ".join(sections["gc"]["command"])
    script.write_text(f'#!/bin/sh\n{gc_command} && rm -rf "{state}/trash"\n')
    script.chmod(0o755)
    sections["gc"]["command"] = [str(script)]
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS, **sections)

    run = retention("run", "-c", str(policy), "-o", "json")

    assert run.code == 1
    no_traceback(run)
    report = run.json()
    assert [a["outcome"] for a in report["applied"]] == ["deleted", "deleted"]
    assert report["gc"]["ran"] is True
    assert any("not marked collected" in line for line in run.error_lines), run.stderr


def test_a_damaged_bin_is_reported_by_trash_list_and_by_the_next_pass(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    seeder.image("app", ["v1"], ago(2), unique="one")
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)
    damaged = tmp_path / "state" / "trash" / "20261101T000000Z-abcdef"
    damaged.mkdir(parents=True)
    (damaged / "index.json").write_text('{"run_id": "20261101T000000Z-abcdef", "entr')

    listed = retention("trash", "list", "-c", str(policy))
    run = retention("run", "-c", str(policy))

    assert listed.code == 1
    assert "20261101T000000Z-abcdef" in listed.stdout and "damaged" in listed.stdout
    assert run.code == 1
    assert any("trash bin 20261101T000000Z-abcdef is damaged" in e for e in run.error_lines)


def test_saving_two_thousand_manifests_writes_the_index_twice_not_per_manifest(
    tmp_path: Path,
) -> None:
    where = tmp_path / "trash" / "run"
    writer = BinWriter(where, TrashBin("run", "http://r", NOW))
    body = json.dumps({"schemaVersion": 2, "layers": [{"digest": "x" * 71}] * 5}).encode()
    digests = [f"sha256:{i:064x}" for i in range(2000)]
    started = time.monotonic()
    for i, digest in enumerate(digests):
        writer.stage(TrashEntry("app", digest, "m", (f"t{i}",), "tagged"), body)
    index_while_staging = (where / "index.json").exists()
    writer.write_ahead()
    written_ahead = Trash(tmp_path).get("run")
    for i, digest in enumerate(digests):
        writer.sending("app", digest)
        writer.settle("app", digest, deleted=i % 2 == 0)
    writer.commit()
    elapsed = time.monotonic() - started

    assert not index_while_staging
    assert (len(written_ahead.entries), len(written_ahead.unconfirmed)) == (0, 2000)
    committed = Trash(tmp_path).get("run")
    assert len(committed.entries) == 1000 and committed.unconfirmed == ()
    assert len(os.listdir(where / "manifests")) == 2000
    assert elapsed < 5, f"{elapsed:.1f}s"


def test_a_restored_tag_is_held_by_the_next_pass_until_released(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    old = seeder.image("app", ["v1"], ago(9), unique="old")
    seeder.image("app", ["v2"], ago(1), unique="new")
    # Ranked by created time: the restore re-pushes v1, so by push time it would be newest.
    by_created = {**BUILDS, "order_by": "created"}
    policy = write_policy(
        tmp_path / "p.yml",
        registry_server.url,
        by_created,
        **command_gc(registry_server, delay="1h"),
    )
    run_id = retention("run", "-c", str(policy), "-o", "json").json()["run_id"]

    restored = retention("restore", run_id, "-c", str(policy), "--tag", "v1")
    next_pass = retention("run", "-c", str(policy), "-o", "json")
    listed = retention("trash", "list", "-c", str(policy))
    released = retention("trash", "release", run_id, "-c", str(policy))
    after_release = retention("plan", "-c", str(policy), "-o", "json")

    assert restored.code == 0, restored.stderr
    assert "held until" in restored.stdout
    assert next_pass.code == 0, next_pass.stderr
    (v1,) = [t for r in next_pass.json()["repositories"] for t in r["tags"] if t["tag"] == "v1"]
    assert v1["action"] == "keep"
    assert v1["reason"].startswith(f"restored from {run_id} on {NOW.date().isoformat()}")
    assert seeder.digest("app", "v1") == old
    header, row = listed.stdout.splitlines()[:2]
    assert "RESTORED" in header and row.split()[4] == "1"
    assert "app:v1" in listed.stdout and "HELD TAG" in listed.stdout
    assert released.code == 0 and "released app:v1" in released.stdout
    (v1,) = [t for r in after_release.json()["repositories"] for t in r["tags"] if t["tag"] == "v1"]
    assert v1["action"] == "delete"
