"""A full pass with real GC behind the gate of a real ``retention serve``, under load.

Pushers (real API: blobs, then a manifest over several MB layers) and pullers of a large
blob work through the gate the whole time; a pass deletes old builds and runs the real
``garbage-collect`` in command mode. GC is slowed by a ``sleep`` in front of it so that the
window is wide enough to be hit for certain. Afterwards every tag in the registry must pull
completely, every push must have either worked or got the read-only answer, and the pulls
must have lost no byte while the daemon's memory stayed flat.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cli_support import log_events, retention, write_policy
from registry_server import RegistryServer, Seeder, free_port, public_tls, sha256_digest
from test_daemon import Served, ago, wait_for

from retention.apply.trash import Trash
from retention.registry import media_types

LAYER_BYTES = 1024 * 1024
LAYERS = 4
BIG_BLOB_BYTES = 48 * 1024 * 1024
PULLERS = 3
GC_SLEEP_S = 3
RSS_GROWTH_LIMIT = 25 * 1024 * 1024


@dataclass
class Pushes:
    """What the pushers saw: tags stored, read-only refusals, anything else."""

    stored: list[str] = field(default_factory=list)
    refused: int = 0
    other: list[str] = field(default_factory=list)
    retried_after_refusal: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def push_image(seeder: Seeder, repository: str, tag: str) -> None:
    """Config and several MB of random layers, then the manifest, as a client pushes."""
    layers = [seeder.blob(repository, os.urandom(LAYER_BYTES)) for _ in range(LAYERS)]
    config = seeder.blob(
        repository, f'{{"architecture":"amd64","os":"linux","t":"{tag}"}}'.encode()
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_types.DOCKER_MANIFEST,
        "config": {"mediaType": media_types.DOCKER_CONFIG, "digest": config[0], "size": config[1]},
        "layers": [
            {"mediaType": media_types.DOCKER_LAYER, "digest": d, "size": s} for d, s in layers
        ],
    }
    body = httpx.Request("PUT", "http://x", json=manifest).content
    seeder.manifest(repository, [tag], body, media_types.DOCKER_MANIFEST)


def pusher(url: str, name: str, stop: threading.Event, pushes: Pushes) -> None:
    """Push until told to stop; a refused push is retried until it works, and noted."""
    seeder = Seeder(url)
    try:
        number = 0
        while not stop.is_set():
            number += 1
            tag = f"{name}-{number}"
            refused = False
            while True:
                try:
                    push_image(seeder, "pushed", tag)
                except AssertionError as exc:
                    if "answered 405" not in str(exc) or "Method not allowed" not in str(exc):
                        with pushes.lock:
                            pushes.other.append(f"{tag}: {exc}")
                        break
                    refused = True
                    with pushes.lock:
                        pushes.refused += 1
                    time.sleep(0.1)
                    continue
                with pushes.lock:
                    pushes.stored.append(tag)
                    if refused:
                        pushes.retried_after_refusal.append(tag)
                break
    finally:
        seeder.close()


def pull(client: httpx.Client, path: str, digest: str) -> bool:
    """One whole GET, hashed as it streams in: True if every byte arrived intact."""
    sha = hashlib.sha256()
    with client.stream("GET", path) as response:
        for chunk in response.iter_bytes():
            sha.update(chunk)
        return response.status_code == 200 and f"sha256:{sha.hexdigest()}" == digest


def puller(url: str, path: str, digest: str, stop: threading.Event, results: list[bool]) -> None:
    with httpx.Client(base_url=url, timeout=60, trust_env=False, verify=public_tls()) as client:
        while not stop.is_set():
            results.append(pull(client, path, digest))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def sample_rss(pid: int, stop: threading.Event, samples: list[int]) -> None:
    while not stop.is_set():
        samples.append(rss_bytes(pid))
        time.sleep(0.05)


def pull_every_tag(url: str) -> dict[str, str]:
    """Every tag of every repository: manifest, config and layers, each checked by sha256."""
    problems: dict[str, str] = {}
    accept = {"Accept": media_types.MANIFEST_ACCEPT}
    with httpx.Client(base_url=url, timeout=60, trust_env=False, verify=public_tls()) as client:
        for repository in client.get("/v2/_catalog?n=1000").json()["repositories"]:
            for tag in client.get(f"/v2/{repository}/tags/list").json()["tags"] or []:
                where = f"{repository}:{tag}"
                manifest = client.get(f"/v2/{repository}/manifests/{tag}", headers=accept)
                if manifest.status_code != 200:
                    problems[where] = f"manifest {manifest.status_code}"
                    continue
                if sha256_digest(manifest.content) != manifest.headers["docker-content-digest"]:
                    problems[where] = "manifest digest"
                document = manifest.json()
                for blob in [document["config"], *document["layers"]]:
                    served = client.get(f"/v2/{repository}/blobs/{blob['digest']}")
                    if served.status_code != 200 or sha256_digest(served.content) != blob["digest"]:
                        problems[where] = f"blob {blob['digest']} {served.status_code}"
    return problems


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[[Path], Served]]:
    """``retention serve`` on a policy (its port from ``server.listen``); killed at teardown."""
    started: list[Served] = []

    def start(policy: Path) -> Served:
        port = json.loads(policy.read_text())["server"]["listen"].rsplit(":", 1)[1]
        served = Served(policy, int(port), tmp_path / f"serve-{len(started)}.log")
        started.append(served)
        served.wait_serving()
        return served

    yield start
    for served in started:
        served.close()


def gated_policy(tmp_path: Path, registry: RegistryServer, gate_port: int) -> Path:
    collect = f"sleep {GC_SLEEP_S}; exec {registry.binary} garbage-collect {registry.config_path}"
    return write_policy(
        tmp_path / "policy.yml",
        registry.url,
        {"name": "builds", "repositories": "app", "match": r"build-\d+", "keep_last": 1},
        # The test registry has no in-memory blob cache (registry_server's default config).
        gc={"mode": "command", "command": ["sh", "-c", collect], "blob_cache": "none"},
        storage={"path": str(registry.root)},
        schedule={"interval": "1h"},
        server={"listen": f"127.0.0.1:{free_port(gate_port)}"},
        gate={"listen": f"127.0.0.1:{gate_port}", "upstream": registry.url},
    )


def start_threads(targets: list[Callable[[], None]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.slow
def test_a_pass_with_gc_behind_the_gate_breaks_no_push_and_no_pull(
    tmp_path: Path,
    registry_server: RegistryServer,
    seeder: Seeder,
    daemons: Callable[[Path], Served],
) -> None:
    for number in (1, 2, 3):
        seeder.image("app", [f"build-{number}"], ago(10 - number), layers=2)
    big = os.urandom(BIG_BLOB_BYTES)
    big_digest, _ = seeder.blob("big", big)
    seeder.manifest("big", ["v1"], _manifest_over(seeder, big_digest), media_types.DOCKER_MANIFEST)
    del big
    gate_port = free_port()
    daemon = daemons(gated_policy(tmp_path, registry_server, gate_port))
    gate_url = f"http://127.0.0.1:{gate_port}"
    pid = daemon.process.pid
    blob_path = f"/v2/big/blobs/{big_digest}"
    with httpx.Client(
        base_url=gate_url, timeout=60, trust_env=False, verify=public_tls()
    ) as warm_up:
        assert pull(warm_up, blob_path, big_digest)  # the gate's first stream allocates
    baseline = rss_bytes(pid)

    stop, pushes, pulls, samples = threading.Event(), Pushes(), [], []
    workers = start_threads(
        [
            *[lambda n=n: pusher(gate_url, f"p{n}", stop, pushes) for n in range(2)],
            *[lambda: puller(gate_url, blob_path, big_digest, stop, pulls)] * PULLERS,
            lambda: sample_rss(pid, stop, samples),
        ]
    )
    time.sleep(1)
    assert daemon.post("/run").status_code == 202
    daemon.wait_passes("success", 1)
    wait_for(lambda: len(pushes.stored) >= len(pushes.retried_after_refusal) + 2, "pushes after")
    stop.set()
    for worker in workers:
        worker.join(60)

    report = daemon.http.get("/report").json()
    assert report["gc"]["ran"] is True and report["gc"]["error"] is None, report["gc"]
    events = [e["event"] for e in daemon.events()]
    closed, gc_started = events.index("write window closed"), events.index("gc started")
    assert closed < gc_started < events.index("gc finished") < events.index("write window opened")
    assert pushes.other == []
    assert pushes.refused >= 1 and pushes.retried_after_refusal  # the window was hit, and left
    assert pull_every_tag(registry_server.url) == {}
    assert set(pushes.stored) <= set(
        httpx.get(f"{registry_server.url}/v2/pushed/tags/list", verify=public_tls()).json()["tags"]
    )
    assert pulls and all(pulls), pulls
    assert max(samples) - baseline < RSS_GROWTH_LIMIT, (baseline, max(samples))
    assert seeder.manifest_status("app", "build-1") == 404


def _manifest_over(seeder: Seeder, layer: str) -> bytes:
    config = seeder.blob("big", b'{"architecture":"amd64","os":"linux"}')
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_types.DOCKER_MANIFEST,
        "config": {"mediaType": media_types.DOCKER_CONFIG, "digest": config[0], "size": config[1]},
        "layers": [
            {"mediaType": media_types.DOCKER_LAYER, "digest": layer, "size": BIG_BLOB_BYTES}
        ],
    }
    return httpx.Request("PUT", "http://x", json=manifest).content


@pytest.mark.parametrize("drain_timeout", ["1s"])
def test_a_drain_that_times_out_skips_gc_fails_the_pass_and_keeps_deletions_pending(
    tmp_path: Path,
    registry_server: RegistryServer,
    seeder: Seeder,
    daemons: Callable[[Path], Served],
    drain_timeout: str,
) -> None:
    for number in (1, 2):
        seeder.image("app", [f"build-{number}"], ago(10 - number))
    gate_port = free_port()
    policy = gated_policy(tmp_path, registry_server, gate_port)
    text = policy.read_text().replace(
        '"upstream"', f'"drain_timeout": "{drain_timeout}", "upstream"'
    )
    policy.write_text(text)
    daemon = daemons(policy)
    gate_url = f"http://127.0.0.1:{gate_port}"
    abandoned = httpx.post(
        f"{gate_url}/v2/stuck/blobs/uploads/", trust_env=False, verify=public_tls()
    )
    assert abandoned.status_code == 202

    assert daemon.post("/run").status_code == 202
    daemon.wait_passes("failure", 1)

    report = daemon.http.get("/report").json()
    assert report["gc"]["ran"] is False
    assert "gate.drain_timeout=1s" in report["gc"]["skipped"]
    assert any("did not drain" in error for error in report["errors"])
    assert seeder.manifest_status("app", "build-1") == 404  # deleted, waiting for GC
    assert len(Trash(tmp_path / "state").uncollected()) == 1
    assert (
        httpx.post(
            f"{gate_url}/v2/app/blobs/uploads/", trust_env=False, verify=public_tls()
        ).status_code
        == 202
    )


def test_retention_run_with_a_gate_deletes_but_leaves_gc_to_serve_and_says_why(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    for number in (1, 2):
        seeder.image("app", [f"build-{number}"], ago(10 - number))
    policy = gated_policy(tmp_path, registry_server, free_port())

    result = retention("run", "-c", str(policy), "--format", "json")

    assert result.code == 0, result.stderr
    report = result.json()
    assert report["gc"]["ran"] is False
    assert report["gc"]["skipped"] == (
        "gate: is configured and only `retention serve` runs the write gate"
    )
    skipped = [e for e in log_events(result.stderr) if e["event"] == "gc skipped"]
    assert [e["reason"] for e in skipped] == [report["gc"]["skipped"]]
    assert seeder.manifest_status("app", "build-1") == 404
    assert len(Trash(tmp_path / "state").uncollected()) == 1


def test_a_reload_that_changes_the_gate_says_it_waits_for_a_restart_and_the_gate_serves_on(
    tmp_path: Path, registry_server: RegistryServer, daemons: Callable[[Path], Served]
) -> None:
    gate_port = free_port()
    policy = gated_policy(tmp_path, registry_server, gate_port)
    daemon = daemons(policy)
    document = json.loads(policy.read_text())
    document["gate"]["drain_timeout"] = "1m"
    policy.write_text(json.dumps(document))

    daemon.signal(signal.SIGHUP)

    wait_for(lambda: daemon.events("policy reloaded"), "the reload")
    assert daemon.events("gate changes at the next restart")
    answer = httpx.get(f"http://127.0.0.1:{gate_port}/v2/", trust_env=False, verify=public_tls())
    assert answer.status_code == 200
