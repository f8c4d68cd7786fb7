"""Real notifications: Distribution sends its webhook events to a real ``retention serve``.

Each test starts the daemon (``python -m retention serve``) with notifications enabled, then
a real ``docker-registry`` whose ``notifications.endpoints`` point at the daemon's
``POST /events`` with the shared secret in ``headers``, pushes and pulls over the real API,
and reads what the daemon stored from ``state_dir`` as ``retention plan`` would.

Distribution delivers each endpoint's events in order (one queue per endpoint), so a
"sentinel" event that arrives proves every earlier event arrived (or was left out).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_support import actions, retention, write_policy
from registry_server import RegistryServer, Seeder, free_port, registry_binary
from test_daemon import Served, serve, wait_for  # noqa: F401 (serve is a fixture)

from retention.core.policy import Notifications, RegistrySettings
from retention.registry import RegistryClient
from retention.scan.inventory import collect
from retention.scan.push_times import with_event_times
from retention.state.event_store import DigestTimes, EventStore, RepositoryTimes

SECRET = "registry-events-secret"
EVENT_TYPE = "application/vnd.docker.distribution.events.v1+json"
OLD = datetime.now(UTC) - timedelta(days=100)


def now() -> datetime:
    return datetime.now(UTC)


class Wiring:
    """A daemon receiving events and a registry sending them, both real processes."""

    def __init__(self, tmp_path: Path, start_serving: Callable[..., Served]) -> None:
        self.tmp_path = tmp_path
        self.serve = start_serving
        self.port = free_port()
        self.state_dir = tmp_path / "state"
        self.secret_file = tmp_path / "events-secret"
        self.secret_file.write_text(SECRET + "\n")
        self.registry: RegistryServer | None = None
        self.daemon: Served | None = None
        self.seeders: list[Seeder] = []
        self.policy = tmp_path / "policy.yml"

    def write_policy(self, *rules: dict[str, Any], **notifications: Any) -> Path:
        registry_url = self.registry.url if self.registry else "http://127.0.0.1:9"
        settings = {"enabled": True, "secret_file": str(self.secret_file), **notifications}
        return write_policy(
            self.policy,
            registry_url,
            *rules,
            schedule={"interval": "1h"},
            server={"listen": f"127.0.0.1:{self.port}"},
            notifications=settings,
        )

    def start_daemon(self) -> Served:
        if not self.policy.exists():
            self.write_policy()
        self.daemon = self.serve(self.policy)
        return self.daemon

    def start_registry(self, secret: str = SECRET) -> RegistryServer:
        binary = registry_binary()
        assert binary is not None, "docker-registry is not installed"
        endpoint = {
            "name": "retention",
            "url": f"http://127.0.0.1:{self.port}/events",
            "headers": {"Authorization": [f"Bearer {secret}"]},
            "timeout": "2s",
            "threshold": 3,
            "backoff": "200ms",
            "ignoredmediatypes": ["application/octet-stream"],
        }
        config = {"notifications": {"endpoints": [endpoint]}}
        self.registry = RegistryServer(self.tmp_path / "registry", binary=binary, config=config)
        self.registry.start()
        return self.registry

    def times(self, repository: str = "app") -> RepositoryTimes:
        store = EventStore.existing(self.state_dir)
        if store is None:
            return RepositoryTimes(tags={}, digests={})
        try:
            return store.times(repository)
        finally:
            store.close()

    def digest_times(self, digest: str) -> DigestTimes:
        return self.times().digests.get(digest, DigestTimes())

    def sentinel(self, seeder: Seeder, name: str) -> None:
        """Push a tag in another repository and wait for it: everything sent before is in."""
        seeder.image("sentinel", [name], OLD, unique=name)
        wait_for(lambda: name in self.times("sentinel").tags, f"sentinel {name}")

    def seeder(self) -> Seeder:
        assert self.registry is not None
        self.seeders.append(Seeder(self.registry.url))
        return self.seeders[-1]

    def stop(self) -> None:
        for seeder in self.seeders:
            seeder.close()
        if self.registry is not None:
            self.registry.stop()


@pytest.fixture
def wiring(tmp_path: Path, serve: Callable[..., Served]) -> Iterator[Wiring]:  # noqa: F811
    wired = Wiring(tmp_path, serve)
    try:
        yield wired
    finally:
        wired.stop()


def started(wiring: Wiring, **notifications: Any) -> Seeder:
    """Daemon first (the registry's first events must find it), then the registry."""
    wiring.write_policy(**notifications)
    wiring.start_daemon()
    wiring.start_registry()
    wiring.write_policy(**notifications)  # now with the registry's URL
    return wiring.seeder()


def between(moment: datetime | None, start: datetime, end: datetime) -> bool:
    return moment is not None and start <= moment <= end


def test_push_get_head_and_digest_pulls_are_stored_with_their_times_and_delete_prunes(
    wiring: Wiring,
) -> None:
    seeder = started(wiring)
    start = now()
    digest = seeder.image("app", ["v1", "latest"], OLD, unique="v1")
    pushed = now()
    push = wait_for(lambda: wiring.times().tags.get("latest"), "the push of latest")
    assert push.digest == digest and between(push.pushed, start, pushed)
    assert between(wiring.times().tags["v1"].pushed, start, pushed)
    assert between(wiring.digest_times(digest).pushed, start, pushed)

    seeder.manifest_bytes("app", "v1")  # GET by tag
    got = now()
    wait_for(lambda: wiring.digest_times(digest).pulled_by_get, "the GET pull")
    assert between(wiring.digest_times(digest).pulled_by_get, pushed, got)
    assert wiring.digest_times(digest).pulled_by_head is None

    seeder.digest("app", "latest")  # HEAD by tag
    headed = now()
    wait_for(lambda: wiring.digest_times(digest).pulled_by_head, "the HEAD pull")
    assert between(wiring.digest_times(digest).pulled_by_head, got, headed)

    seeder.manifest_bytes("app", digest)  # GET by digest: no tag in the event
    by_digest = now()
    wait_for(
        lambda: between(wiring.digest_times(digest).pulled_by_get, headed, by_digest),
        "the pull by digest",
    )

    daemon = wiring.daemon
    assert daemon is not None
    # v1 and latest pushed, a GET, a HEAD, a GET by digest; blob events are not even sent.
    assert daemon.metric("retention_registry_events_total", outcome="stored") == 5
    assert daemon.metric("retention_registry_events_total", outcome="ignored") == 0
    last = daemon.metric("retention_last_registry_event_timestamp_seconds") or 0
    assert start.timestamp() <= last <= now().timestamp()

    other = seeder.image("app", ["v2"], OLD, unique="v2")
    assert seeder.delete("app", digest) == 202
    wait_for(lambda: digest not in wiring.times().digests, "the delete")
    remaining = wiring.times()
    assert set(remaining.tags) == {"v2"}
    assert set(remaining.digests) == {other}


@pytest.mark.parametrize(("pull_events", "head_counts"), [("get_and_head", True), ("get", False)])
async def test_heads_count_as_pulls_only_with_get_and_head_and_our_own_scans_never(
    wiring: Wiring, pull_events: str, head_counts: bool
) -> None:
    seeder = started(wiring, pull_events=pull_events)
    image = seeder.image("app", ["v1", "latest"], OLD, unique="v1")
    seeder.image("app", ["v2"], OLD, unique="v2")
    start = now()
    seeder.manifest_bytes("app", image)  # a pull by digest: counts for v1 and latest
    seeder.digest("app", "v2")  # a HEAD, as kubelet's freshness check
    pulled = now()
    settings = Notifications(enabled=True, secret_env="UNUSED", pull_events=pull_events)  # type: ignore[arg-type]

    async with RegistryClient(RegistrySettings(url=wiring.registry.url)) as client:  # type: ignore[union-attr]
        scanned = await collect(client)  # HEADs and GETs every tag as retention
    wiring.sentinel(seeder, "after-scan")
    timed = with_event_times(scanned, wiring.state_dir, settings)

    app = next(r for r in timed.repositories if r.name == "app")
    tags = {tag.name: tag for tag in app.tags}
    assert between(tags["v1"].pulled, start, pulled)
    assert tags["latest"].pulled == tags["v1"].pulled
    assert between(tags["v2"].pulled, start, pulled) is head_counts
    assert timed.pull_history_since is not None and timed.pull_history_since <= start


def test_nothing_stored_is_lost_across_restarts_and_a_resent_id_is_ignored(
    wiring: Wiring,
) -> None:
    seeder = started(wiring)
    digest = seeder.image("app", ["v1"], OLD, unique="v1")
    seeder.manifest_bytes("app", "v1")
    wait_for(lambda: wiring.digest_times(digest).pulled_by_get, "the first pull")
    before = wiring.times()
    assert wiring.daemon is not None and wiring.daemon.stop() == 0

    # The registry keeps sending while the daemon is down: it queues and retries.
    seeder.image("app", ["v2"], OLD, unique="v2")
    daemon = wiring.start_daemon()
    wait_for(lambda: "v2" in wiring.times().tags, "the push sent while the daemon was down")
    wiring.registry.stop()  # type: ignore[union-attr]
    wiring.registry.start()  # type: ignore[union-attr]
    seeder.manifest_bytes("app", "v2")
    wiring.sentinel(seeder, "after-restarts")

    after = wiring.times()
    assert after.tags["v1"] == before.tags["v1"]
    assert after.digests[digest] == before.digests[digest]
    # An id sent again is ignored even when its time would move the push forward.
    soon, later = now() + timedelta(hours=1), now() + timedelta(hours=2)
    first = post_events(daemon, envelope(event_id="resent", tag="v1", digest=digest, at=soon))
    assert first.status_code == 200 and first.json()["stored"] == 1
    again = post_events(daemon, envelope(event_id="resent", tag="v1", digest=digest, at=later))
    assert again.status_code == 200
    assert again.json() == {"stored": 0, "duplicates": 1, "ignored": 0}
    assert daemon.metric("retention_registry_events_total", outcome="duplicate") == 1
    assert wiring.times().tags["v1"].pushed == soon


def test_a_registry_with_the_wrong_secret_is_refused_and_nothing_is_stored(
    wiring: Wiring,
) -> None:
    wiring.write_policy()
    daemon = wiring.start_daemon()
    wiring.start_registry(secret="not-the-secret")
    seeder = wiring.seeder()
    seeder.image("app", ["v1"], OLD, unique="v1")

    refusals = wait_for(lambda: daemon.events("notification refused"), "a refusal")
    assert refusals[0]["status"] == 401 and refusals[0]["reason"] == "wrong authorization"
    assert SECRET not in daemon.log() and "not-the-secret" not in daemon.log()
    assert EventStore.existing(wiring.state_dir) is None
    assert (daemon.metric("retention_registry_event_refusals_total", status="401") or 0) >= 1
    assert daemon.metric("retention_registry_events_total", outcome="stored") == 0
    assert daemon.metric("retention_last_registry_event_timestamp_seconds") == 0
    body = envelope(event_id="x", tag="v1", digest="sha256:" + "a" * 64, at=now())
    assert post_events(daemon, body, authorization=None).status_code == 401
    assert post_events(daemon, body, authorization="Bearer nope").status_code == 401
    assert EventStore.existing(wiring.state_dir) is None
    for malformed in (b"{not json", b'{"events": "no"}', b"[]"):
        answer = post_events(daemon, malformed)
        assert answer.status_code == 400, answer.text
    assert EventStore.existing(wiring.state_dir) is None


def test_a_plan_uses_the_push_time_from_events_on_any_backend(wiring: Wiring) -> None:
    """No storage.path: without events the only age is the image's created time."""
    seeder = started(wiring)
    rule = {"name": "all", "max_age": "30d"}
    # Different created times: identical ones would read as a reproducible build (unknown).
    seeder.image("app", ["v1"], OLD, unique="v1")
    seeder.image("app", ["v2"], OLD - timedelta(days=1), unique="v2")
    wiring.sentinel(seeder, "pushed")
    grace = {"grace_period": "1h", "max_delete_fraction": 1.0}
    with_events = wiring.write_policy(rule)
    document = json.loads(with_events.read_text())
    document["safety"] = grace
    with_events.write_text(json.dumps(document))
    without = wiring.tmp_path / "without-events.yml"
    document["notifications"] = {"enabled": False}
    without.write_text(json.dumps(document))

    planned = retention("plan", "-c", str(with_events), "-o", "json")
    blind = retention("plan", "-c", str(without), "-o", "json")

    assert planned.code == 0, planned.stderr
    assert actions(planned.json(), "app") == {"v1": "keep", "v2": "keep"}
    reasons = [t["reason"] for r in planned.json()["repositories"] for t in r["tags"]]
    # Ages follow the push time where it is known (age_by's default), so the rule itself
    # keeps them: "newer than 30d (1s since pushed)".
    assert all("since pushed" in reason for reason in reasons), reasons
    assert actions(blind.json(), "app") == {"v1": "delete", "v2": "delete"}


# -- sending by hand, for duplicates and refusals ------------------------------------------


def envelope(*, event_id: str, tag: str, digest: str, at: datetime) -> bytes:
    event = {
        "id": event_id,
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "action": "push",
        "target": {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": digest,
            "repository": "app",
            "url": f"http://registry/v2/app/manifests/{digest}",
            "tag": tag,
        },
        "request": {"method": "PUT", "useragent": "docker/27"},
    }
    return json.dumps({"events": [event]}).encode()


def post_events(
    daemon: Served, body: bytes, authorization: str | None = f"Bearer {SECRET}"
) -> httpx.Response:
    headers = {"Content-Type": EVENT_TYPE}
    if authorization is not None:
        headers["Authorization"] = authorization
    started_at = time.monotonic()
    response = daemon.http.post("/events", content=body, headers=headers)
    assert time.monotonic() - started_at < 2.0, "the receiver must answer fast"
    return response


def test_serve_without_its_secret_stops_at_start_with_one_line_naming_the_key(
    tmp_path: Path,
) -> None:
    policy = write_policy(
        tmp_path / "policy.yml",
        "http://127.0.0.1:9",
        server={"listen": f"127.0.0.1:{free_port()}"},
        notifications={"enabled": True, "secret_env": "RETENTION_TEST_UNSET_SECRET"},
    )

    result = retention("serve", "-c", str(policy), timeout=30)

    assert result.code == 2
    assert result.error_lines == [
        "error: notifications.secret_env: RETENTION_TEST_UNSET_SECRET is empty or not set"
    ]


def test_sighup_reads_a_rotated_secret_and_keeps_the_old_one_when_the_new_is_missing(
    wiring: Wiring,
) -> None:
    wiring.write_policy()
    daemon = wiring.start_daemon()
    body = envelope(event_id="r1", tag="v1", digest="sha256:" + "a" * 64, at=now())

    wiring.secret_file.write_text("rotated\n")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.events("policy reloaded"), "the reload")
    assert post_events(daemon, body).status_code == 401
    assert post_events(daemon, body, authorization="Bearer rotated").status_code == 200

    wiring.secret_file.unlink()
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.events("notifications not reloaded"), "the failed reload")
    assert post_events(daemon, body, authorization="Bearer rotated").json()["duplicates"] == 1


def test_without_notifications_enabled_post_events_is_404_and_nothing_is_written(
    wiring: Wiring,
) -> None:
    wiring.write_policy(enabled=False)
    daemon = wiring.start_daemon()

    answer = post_events(
        daemon, envelope(event_id="x", tag="v1", digest="sha256:" + "a" * 64, at=now())
    )

    assert answer.status_code == 404
    assert answer.json() == {"error": "notifications are not enabled in the policy"}
    assert EventStore.existing(wiring.state_dir) is None
