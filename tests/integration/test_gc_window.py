"""GC that never breaks an image while the registry stays in use (issue #11), on the real 2.8.

The registries here keep Distribution's ``inmemory`` blob-descriptor cache, and the ones
whose hooks restart them run under ``registry_supervisor.py``, which starts the registry
again whenever it exits (read-only while told so), the way systemd or the kubelet would.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_support import command_gc, log_events, retention, write_policy
from push_support import Pusher, fully_pullable, manifest_for
from registry_server import RegistryServer, Seeder, public_tls, registry_binary

from retention.registry import media_types

SUPERVISOR = Path(__file__).resolve().parents[1] / "registry_supervisor.py"
INMEMORY = {"storage": {"cache": {"blobdescriptor": "inmemory"}}}
BUILDS = {"name": "builds", "match": "build-.*", "keep_last": 1}


@dataclass
class Supervised:
    """A registry under the supervisor: ``hook(action)`` is the command a GC hook runs."""

    server: RegistryServer
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return self.server.url

    def hook(self, action: str) -> list[str]:
        return [sys.executable, str(SUPERVISOR), "control", str(self.directory), action]

    def hooks_run(self) -> list[str]:
        log = self.directory / "hooks.log"
        return log.read_text().split() if log.exists() else []

    def gc_command(self, pause_s: float = 0.0) -> list[str]:
        """garbage-collect with the server's config, noted in the hook log (after a pause)."""
        log = self.directory / "hooks.log"
        script = f'echo gc >> "{log}"; sleep {pause_s}; exec "$0" garbage-collect "$1"'
        return ["sh", "-c", script, self.server.binary, str(self.server.config_path)]


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Supervised]:
    binary = registry_binary()
    if binary is None:
        pytest.fail("docker-registry (CNCF Distribution) is not installed; the tests need it")
    config = {**INMEMORY, "http": {"draintimeout": "10s"}}
    server = RegistryServer(tmp_path / "registry", binary=binary, config=config)
    directory = tmp_path / "supervisor"
    directory.mkdir()
    arguments = [str(directory), server.url, binary, str(server.config_path)]
    process = subprocess.Popen([sys.executable, str(SUPERVISOR), "serve", *arguments])
    registry = Supervised(server, directory, process)
    try:
        _wait_until_answering(registry)
        yield registry
    finally:
        (directory / "stop").touch()
        pid = directory / "pid"
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)
        process.wait(timeout=30)


def _wait_until_answering(registry: Supervised) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{registry.url}/v2/", timeout=1, trust_env=False, verify=public_tls())
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"supervised registry silent:\n{registry.directory / 'registry.log'}")


def ago(days: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def seed_builds(seeder: Seeder, count: int = 3) -> list[str]:
    """build-0 .. build-N in ``app``, oldest first; BUILDS deletes all but the newest."""
    return [
        seeder.image("app", [f"build-{i}"], ago(9 - i), layers=2, unique=f"b{i}")
        for i in range(count)
    ]


def seed_supervised(supervised: Supervised, count: int = 3) -> list[str]:
    """``seed_builds`` into the supervised registry, through a seeder closed afterwards."""
    seeder = Seeder(supervised.url)
    try:
        return seed_builds(seeder, count)
    finally:
        seeder.close()


def read_only_hooks(supervised: Supervised) -> dict[str, Any]:
    """Command-mode GC with read-only hooks around it, and a window long enough to push into."""
    return command_gc(
        supervised.server,
        command=supervised.gc_command(pause_s=1.0),
        writes="retention",
        blob_cache="inmemory",
        readonly_start=supervised.hook("readonly"),
        readonly_stop=supervised.hook("writable"),
    )


def layer_of(seeder: Seeder, repository: str, reference: str) -> dict[str, Any]:
    return dict(json.loads(seeder.manifest_bytes(repository, reference))["layers"][0])


def repush_skipping_existing(url: str, repository: str, tag: str, manifest: bytes) -> int:
    """What docker push does: HEAD each blob, upload only the missing ones, PUT the manifest.

    Returns the manifest PUT's status. The blobs' bytes are not known here, so a blob the
    registry says is missing cannot be uploaded: the PUT then shows whether the registry
    checks (400) or believes its cache (201).
    """
    with httpx.Client(base_url=url, trust_env=False, verify=public_tls(), timeout=30) as http:
        document = json.loads(manifest)
        for blob in [document["config"], *document["layers"]]:
            http.head(f"/v2/{repository}/blobs/{blob['digest']}")
        answer = http.put(
            f"/v2/{repository}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": media_types.DOCKER_MANIFEST},
        )
        return answer.status_code


# -- the stale-cache trap ---------------------------------------------------------------------


@pytest.mark.parametrize("registry_server", [{"config": INMEMORY}], indirect=True)
def test_without_a_restart_gc_leaves_a_registry_that_accepts_a_manifest_over_a_swept_layer(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    """The trap itself, on the real binary: GC beside a live registry with an inmemory cache."""
    digest = seeder.image("app", ["v1"], ago(3), layers=2, unique="gone")
    manifest = seeder.manifest_bytes("app", "v1")
    layer = layer_of(seeder, "app", "v1")
    assert seeder.blob_status("app", layer["digest"]) == 200  # now in the cache
    assert seeder.delete("app", digest) == 202

    collected = registry_server.garbage_collect()

    assert collected.returncode == 0, collected.stdout
    blob_file = registry_server.root / "docker/registry/v2/blobs/sha256"
    assert not (blob_file / layer["digest"][7:9] / layer["digest"][7:] / "data").exists()
    assert seeder.blob_status("app", layer["digest"]) == 200, "the cache still says present"
    assert repush_skipping_existing(registry_server.url, "app", "v2", manifest) == 201
    with pytest.raises(httpx.HTTPError):  # the accepted image cannot be pulled
        response = httpx.get(
            f"{registry_server.url}/v2/app/blobs/{layer['digest']}",
            trust_env=False,
            verify=public_tls(),
        )
        response.raise_for_status()
        assert hashlib.sha256(response.content).hexdigest() == layer["digest"][7:]


@pytest.mark.parametrize("registry_server", [{"config": INMEMORY}], indirect=True)
def test_the_probe_catches_a_stale_blob_cache_when_the_policy_wrongly_says_none(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    seed_builds(seeder)
    sections = command_gc(registry_server)  # blob_cache: none, but the config says inmemory
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS, **sections)

    result = retention("run", "-c", str(policy), "--format", "json")

    assert result.code == 1, result.stderr
    assert result.json()["gc"]["ran"] is True
    probe = result.json()["gc"]["probe"]
    assert probe.startswith("failed: the registry still answers 200 for blob sha256:")
    (error,) = result.error_lines
    assert error.startswith("error: probe: the registry still answers 200 for blob")
    assert "gc.restart_command" in error
    events = [e for e in log_events(result.stderr) if e["event"] == "probe failed"]
    assert len(events) == 1 and events[0]["repository"] == "retention-probe"


def test_with_the_restart_the_probe_passes_and_a_re_push_uploads_the_swept_layer_again(
    tmp_path: Path, supervised: Supervised
) -> None:
    seeder = Seeder(supervised.url)
    try:
        seed_builds(seeder)
        manifest = seeder.manifest_bytes("app", "build-0")
        layer = layer_of(seeder, "app", "build-0")
        gc = command_gc(
            supervised.server,
            writes="none",
            blob_cache="inmemory",
            restart_command=supervised.hook("restart"),
        )
        policy = write_policy(tmp_path / "p.yml", supervised.url, BUILDS, **gc)

        result = retention("run", "-c", str(policy), "--format", "json")

        assert result.code == 0, result.stderr
        report = result.json()
        assert report["gc"]["probe"] == "passed" and report["gc"]["restarted"] is True
        assert supervised.hooks_run() == ["restart"]
        assert seeder.blob_status("app", layer["digest"]) == 404, "the restart flushed the cache"
        assert repush_skipping_existing(supervised.url, "app", "again", manifest) == 400
        repushed = seeder.image("app", ["again"], ago(9), layers=2, unique="b0")
        assert layer_of(seeder, "app", "again") == layer
        assert fully_pullable(supervised.url, "app", "again"), repushed
        events = {e["event"] for e in log_events(result.stderr)}
        assert {"gc finished", "probe passed"} <= events
        listed = httpx.get(
            f"{supervised.url}/v2/retention-probe/tags/list", trust_env=False, verify=public_tls()
        )
        assert listed.json()["tags"] in (None, []), "the probe deleted its test image"
    finally:
        seeder.close()


# -- a probe that fails -----------------------------------------------------------------------


def test_a_registry_left_read_only_fails_the_probe_and_the_pass_with_one_line(
    tmp_path: Path, supervised: Supervised
) -> None:
    """readonly_stop that does not make the registry writable: the probe push gets 405."""
    seed_supervised(supervised)
    gc = command_gc(
        supervised.server,
        writes="retention",
        blob_cache="inmemory",
        readonly_start=supervised.hook("readonly"),
        readonly_stop=supervised.hook("restart"),  # the bug: still read-only afterwards
    )
    policy = write_policy(tmp_path / "p.yml", supervised.url, BUILDS, **gc)

    result = retention("run", "-c", str(policy), "--format", "json")

    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    (error,) = result.error_lines
    assert error.startswith("error: probe: pushing retention-probe:probe-")
    assert "the registry refuses writes" in error and "405" in error
    assert result.json()["gc"]["probe"].startswith("failed: pushing retention-probe:")
    assert result.json()["gc"]["error"] is None, "GC itself went well"


# -- read-only hooks --------------------------------------------------------------------------


def test_read_only_hooks_run_in_order_around_gc(tmp_path: Path, supervised: Supervised) -> None:
    seed_supervised(supervised)
    gc = command_gc(
        supervised.server,
        command=supervised.gc_command(),
        writes="retention",
        blob_cache="inmemory",
        readonly_start=supervised.hook("readonly"),
        readonly_stop=supervised.hook("writable"),
        restart_command=supervised.hook("restart"),
    )
    policy = write_policy(tmp_path / "p.yml", supervised.url, BUILDS, **gc)

    result = retention("run", "-c", str(policy), "--format", "json")

    assert result.code == 0, result.stderr
    assert supervised.hooks_run() == ["readonly", "gc", "writable", "restart"]
    assert result.json()["gc"]["probe"] == "passed"


def test_readonly_stop_and_restart_run_when_gc_fails(
    tmp_path: Path, supervised: Supervised
) -> None:
    seed_supervised(supervised)
    gc = command_gc(
        supervised.server,
        command=["sh", "-c", f'echo gc >> "{supervised.directory}/hooks.log"; exit 3'],
        readonly_start=supervised.hook("readonly"),
        readonly_stop=supervised.hook("writable"),
        restart_command=supervised.hook("restart"),
        writes="retention",
        blob_cache="inmemory",
    )
    policy = write_policy(tmp_path / "p.yml", supervised.url, BUILDS, **gc)

    result = retention("run", "-c", str(policy), "--format", "json")

    assert result.code == 1
    assert supervised.hooks_run() == ["readonly", "gc", "writable", "restart"]
    report = result.json()
    assert report["gc"]["error"] == "garbage-collect exited 3: (no output)"
    assert report["gc"]["probe"] == "passed", "the registry is writable again afterwards"
    assert not (supervised.directory / "readonly").exists()


def test_readonly_stop_runs_when_readonly_start_fails_and_gc_does_not_run(
    tmp_path: Path, supervised: Supervised
) -> None:
    seed_supervised(supervised)
    log = supervised.directory / "hooks.log"
    gc = command_gc(
        supervised.server,
        command=["sh", "-c", f'echo gc >> "{log}"'],
        readonly_start=["sh", "-c", f'echo broken-start >> "{log}"; exit 1'],
        readonly_stop=supervised.hook("writable"),
        writes="retention",
        blob_cache="inmemory",
    )
    policy = write_policy(tmp_path / "p.yml", supervised.url, BUILDS, **gc)

    result = retention("run", "-c", str(policy), "--format", "json")

    assert result.code == 1
    assert supervised.hooks_run() == ["broken-start", "writable"]
    assert result.json()["gc"]["error"].startswith("readonly_start exited 1")


# -- pushes during a full pass ----------------------------------------------------------------


def test_pushes_during_a_pass_with_read_only_hooks_either_succeed_whole_or_are_refused(
    tmp_path: Path, supervised: Supervised
) -> None:
    seed_supervised(supervised, count=4)
    gc = read_only_hooks(supervised)
    policy = write_policy(tmp_path / "p.yml", supervised.url, BUILDS, **gc)
    pusher = Pusher(supervised.url)
    thread = threading.Thread(target=pusher.run)
    thread.start()
    try:
        time.sleep(0.5)
        result = retention("run", "-c", str(policy), "--format", "json")
        time.sleep(0.5)
    finally:
        pusher.stop.set()
        thread.join(timeout=60)

    assert result.code == 0, result.stderr
    assert result.json()["gc"]["ran"] is True and result.json()["gc"]["probe"] == "passed"
    print("push outcomes:", Counter(outcome for _, outcome in pusher.outcomes))
    kinds = {outcome for _, outcome in pusher.outcomes}
    assert kinds <= {"ok", "read-only", "unavailable"}, pusher.outcomes
    assert "ok" in kinds and "read-only" in kinds, pusher.outcomes
    tags = httpx.get(
        f"{supervised.url}/v2/load/tags/list", trust_env=False, verify=public_tls()
    ).json()["tags"]
    assert set(pusher.pushed) <= set(tags), "every push that succeeded is there"
    broken = [tag for tag in tags if not fully_pullable(supervised.url, "load", tag)]
    assert broken == []
    assert fully_pullable(supervised.url, "app", "build-3")
    retried = Pusher(supervised.url)
    with httpx.Client(
        base_url=supervised.url, trust_env=False, verify=public_tls(), timeout=30
    ) as http:
        assert retried.push(http, "after-the-window") == "ok"
    assert fully_pullable(supervised.url, "load", "after-the-window")


def test_a_push_whose_blobs_went_up_before_the_window_and_manifest_after_is_refused_whole(
    tmp_path: Path, supervised: Supervised
) -> None:
    """What dockerd's retry can do to a push cut by the read-only restart (see
    test_docker_push.py): GC sweeps the blobs nothing referenced yet, and the restarted
    registry refuses the late manifest with MANIFEST_BLOB_UNKNOWN instead of storing a
    broken image. Pushed again, the image goes up whole."""
    seed_supervised(supervised)
    gc = command_gc(
        supervised.server,
        writes="retention",
        blob_cache="inmemory",
        readonly_start=supervised.hook("readonly"),
        readonly_stop=supervised.hook("writable"),
    )
    policy = write_policy(tmp_path / "p.yml", supervised.url, BUILDS, **gc)
    pusher = Pusher(supervised.url, layers=2, layer_bytes=64 * 1024)
    config = b'{"architecture":"amd64","os":"linux"}'
    with httpx.Client(
        base_url=supervised.url, trust_env=False, verify=public_tls(), timeout=30
    ) as http:
        layers = [os.urandom(pusher.layer_bytes) for _ in range(pusher.layers)]
        blobs = {pusher.upload(http, data): data for data in layers}
        config_digest = pusher.upload(http, config)

        result = retention("run", "-c", str(policy), "--format", "json")

        assert result.code == 0, result.stderr
        assert all(http.head(f"/v2/load/blobs/{d}").status_code == 404 for d in blobs)
        late = http.put(
            "/v2/load/manifests/late",
            content=manifest_for(config_digest, config, blobs),
            headers={"Content-Type": media_types.DOCKER_MANIFEST},
        )
        assert late.status_code == 400, late.text
        assert late.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
        assert http.get("/v2/load/manifests/late").status_code == 404
        for data in [*layers, config]:
            pusher.upload(http, data)
        stored = http.put(
            "/v2/load/manifests/late",
            content=manifest_for(config_digest, config, blobs),
            headers={"Content-Type": media_types.DOCKER_MANIFEST},
        )
        assert stored.status_code == 201, stored.text
    assert fully_pullable(supervised.url, "load", "late")
