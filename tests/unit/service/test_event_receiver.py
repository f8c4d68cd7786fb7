"""``POST /events`` without a socket: the secret, the limits, the envelope, the answers.

The integration tests (test_notifications.py) send the same through a real registry and a
real daemon; here each refusal is exercised on its own, with a store on disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from retention.core.policy import Notifications
from retention.errors import ConfigError
from retention.service.event_receiver import (
    MAX_BODY_BYTES,
    EventReceiver,
    load_secret,
    parse_envelope,
)
from retention.state.event_store import EventStore

SECRET = "s3cret-token"
EVENT_TYPE = "application/vnd.docker.distribution.events.v1+json"
DIGEST = "sha256:" + "a" * 64
REGISTRY = "http://127.0.0.1:5000"

# Shaped exactly like what Distribution 2.8.2 sent in our measurement (ids shortened).
MANIFEST_PUSH = {
    "id": "4c6bdb83",
    "timestamp": "2026-12-03T11:05:27.722764915Z",
    "action": "push",
    "target": {
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "size": 522,
        "digest": DIGEST,
        "length": 522,
        "repository": "app",
        "url": f"{REGISTRY}/v2/app/manifests/{DIGEST}",
        "tag": "v1",
    },
    "request": {"id": "5e7d", "addr": "127.0.0.1:50060", "method": "PUT", "useragent": "x"},
    "actor": {},
    "source": {"addr": "vm:5000", "instanceID": "3e88"},
}
BLOB_PUSH = {
    **MANIFEST_PUSH,
    "id": "64c22c29",
    "target": {
        "mediaType": "application/octet-stream",
        "digest": "sha256:" + "b" * 64,
        "repository": "app",
        "url": f"{REGISTRY}/v2/app/blobs/sha256:{'b' * 64}",
    },
}


def envelope(*events: Mapping[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def headers(body: bytes, **extra: str) -> dict[str, str]:
    base = {
        "authorization": f"Bearer {SECRET}",
        "content-type": EVENT_TYPE,
        "content-length": str(len(body)),
    }
    return {**base, **{k.replace("_", "-"): v for k, v in extra.items()}}


class Body:
    """``rfile.read``: records whether the body was read at all."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.read_count = 0

    def read(self, size: int) -> bytes:
        self.read_count += 1
        return self.data[:size]


@pytest.fixture
def store(tmp_path: Path) -> EventStore:
    return EventStore(tmp_path)


@pytest.fixture
def receiver(store: EventStore) -> EventReceiver:
    settings = Notifications(enabled=True, secret_env="X")
    return EventReceiver(store, settings, SECRET)


def test_a_good_envelope_is_stored_and_answered_200(
    receiver: EventReceiver, store: EventStore
) -> None:
    body = envelope(MANIFEST_PUSH, BLOB_PUSH)

    answer = receiver.receive(headers(body), Body(body).read)

    assert (answer.status, dict(answer.body)) == (
        200,
        {"stored": 1, "duplicates": 0, "ignored": 1},
    )
    assert set(store.times("app").tags) == {"v1"}


def test_the_same_envelope_again_is_a_success_that_stores_nothing(
    receiver: EventReceiver,
) -> None:
    body = envelope(MANIFEST_PUSH)
    receiver.receive(headers(body), Body(body).read)

    answer = receiver.receive(headers(body), Body(body).read)

    assert answer.status == 200
    assert answer.body["duplicates"] == 1 and answer.body["stored"] == 0


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Bearer {SECRET}x", SECRET, f"bearer {SECRET}", ""],
    ids=["missing", "wrong", "longer", "without scheme", "lower-case scheme", "empty"],
)
def test_a_missing_or_wrong_secret_is_401_before_the_body_is_read(
    receiver: EventReceiver, store: EventStore, authorization: str | None
) -> None:
    body = envelope(MANIFEST_PUSH)
    sent = headers(body)
    if authorization is None:
        del sent["authorization"]
    else:
        sent["authorization"] = authorization
    reader = Body(body)

    answer = receiver.receive(sent, reader.read)

    assert answer.status == 401
    assert reader.read_count == 0
    assert not store.path.exists()


def test_another_header_carries_the_secret_alone(store: EventStore) -> None:
    settings = Notifications(enabled=True, secret_env="X", header="X-Registry-Token")
    receiver = EventReceiver(store, settings, SECRET)
    body = envelope(MANIFEST_PUSH)
    sent = {k: v for k, v in headers(body).items() if k != "authorization"}

    assert receiver.receive({**sent, "x-registry-token": SECRET}, Body(body).read).status == 200
    assert receiver.receive(headers(body), Body(body).read).status == 401


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b'["events"]', "not an envelope"),
        (b'{"event": []}', "not an envelope"),
        (b'{"events": {}}', "not an envelope"),
        (b'{"events": [1, 2]}', "events must be objects"),
    ],
)
def test_a_body_that_is_not_an_envelope_is_400_and_nothing_is_stored(
    receiver: EventReceiver, store: EventStore, body: bytes, error: str
) -> None:
    answer = receiver.receive(headers(body), Body(body).read)

    assert answer.status == 400
    assert error in answer.body["error"]
    assert not store.path.exists()


def test_an_unusable_event_in_a_good_envelope_is_skipped_not_refused(
    receiver: EventReceiver, store: EventStore
) -> None:
    """A 400 would make Distribution send this envelope forever, blocking the rest."""
    broken = [
        {**MANIFEST_PUSH, "id": "t1", "timestamp": "yesterday"},
        {**MANIFEST_PUSH, "id": "t2", "timestamp": "2026-12-03T11:05:27"},  # no zone
        {**MANIFEST_PUSH, "id": ""},
        {**MANIFEST_PUSH, "id": "t3", "target": {**MANIFEST_PUSH["target"], "digest": None}},
        {**MANIFEST_PUSH, "id": "t4", "action": "mount"},
    ]
    body = envelope(*broken, MANIFEST_PUSH)

    answer = receiver.receive(headers(body), Body(body).read)

    assert answer.status == 200
    assert (answer.body["stored"], answer.body["ignored"]) == (1, 5)


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"content_length": str(MAX_BODY_BYTES + 1)}, 413),
        ({"content_length": "ten"}, 411),
        ({"content_type": "text/plain"}, 415),
    ],
)
def test_limits_are_refused_without_reading_the_body(
    receiver: EventReceiver, changes: dict[str, str], status: int
) -> None:
    body = envelope(MANIFEST_PUSH)
    reader = Body(body)

    assert receiver.receive(headers(body, **changes), reader.read).status == status
    assert reader.read_count == 0


def test_plain_json_with_a_charset_is_accepted(receiver: EventReceiver) -> None:
    body = envelope(MANIFEST_PUSH)
    sent = headers(body, content_type="application/json; charset=utf-8")

    assert receiver.receive(sent, Body(body).read).status == 200


def test_a_store_that_cannot_be_written_is_503_so_the_registry_retries(tmp_path: Path) -> None:
    (tmp_path / "events").write_text("a file where the directory should be")
    receiver = EventReceiver(
        EventStore(tmp_path), Notifications(enabled=True, secret_env="X"), SECRET
    )
    body = envelope(MANIFEST_PUSH)

    assert receiver.receive(headers(body), Body(body).read).status == 503


def test_head_pulls_and_pulls_by_digest_keep_their_method_and_lack_of_tag() -> None:
    head = {
        **MANIFEST_PUSH,
        "action": "pull",
        "target": {k: v for k, v in MANIFEST_PUSH["target"].items() if k != "tag"},
        "request": {"method": "HEAD"},
    }

    (event,), ignored = parse_envelope(envelope(head))

    assert (event.action, event.tag, event.digest, event.method) == ("pull", None, DIGEST, "HEAD")
    assert event.at.isoformat() == "2026-12-03T11:05:27.722764+00:00"
    assert ignored == 0


def test_pulls_by_retention_itself_are_not_pulls_but_its_pushes_are_pushes() -> None:
    """Every pass HEADs every tag; ``retention restore`` really pushes."""
    own = {"method": "HEAD", "useragent": "retention/0.1.0"}
    pull = {**MANIFEST_PUSH, "id": "p", "action": "pull", "request": own}
    push = {**MANIFEST_PUSH, "id": "r", "request": {**own, "method": "PUT"}}
    someone = {**pull, "id": "k", "request": {"method": "HEAD", "useragent": "containerd/1.7"}}

    events, ignored = parse_envelope(envelope(pull, push, someone))

    assert [(e.id, e.action) for e in events] == [("r", "push"), ("k", "pull")]
    assert ignored == 1


def test_deletes_of_a_digest_a_tag_and_a_repository_are_all_kept() -> None:
    deletes = [
        {"id": "d1", "timestamp": MANIFEST_PUSH["timestamp"], "action": "delete",
         "target": {"repository": "app", "digest": DIGEST}},
        {"id": "d2", "timestamp": MANIFEST_PUSH["timestamp"], "action": "delete",
         "target": {"repository": "app", "tag": "v1"}},
        {"id": "d3", "timestamp": MANIFEST_PUSH["timestamp"], "action": "delete",
         "target": {"repository": "app"}},
    ]  # fmt: skip

    events, _ = parse_envelope(envelope(*deletes))

    assert [(e.digest, e.tag) for e in events] == [(DIGEST, None), (None, "v1"), (None, None)]


def test_the_secret_comes_from_a_file_less_one_newline_or_from_the_environment(
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")

    assert load_secret(Notifications(enabled=True, secret_file=secret_file)) == "from-file"
    settings = Notifications(enabled=True, secret_env="EVENTS_SECRET")
    assert load_secret(settings, {"EVENTS_SECRET": "from-env"}) == "from-env"


def test_a_secret_that_is_missing_or_empty_is_a_config_error_naming_the_key(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cases = [
        (Notifications(enabled=True, secret_env="UNSET"), "notifications.secret_env: UNSET"),
        (Notifications(enabled=True, secret_file=empty), "notifications.secret_file: "),
        (
            Notifications(enabled=True, secret_file=tmp_path / "missing"),
            "notifications.secret_file: cannot read",
        ),
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError) as caught:
            load_secret(settings, {})
        assert caught.value.problems[0].startswith(message)
