"""The notification event store on its own: out-of-order events, duplicates, deletes, bounds.

Events are built by hand with fixed times, so order and timing are whatever a test says;
the integration tests send the registry's own events.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

import pytest

from retention.errors import EventStoreError
from retention.state.event_store import (
    DigestTimes,
    EventStore,
    RegistryEvent,
    TagPush,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
_ids = count()


def at(minutes: int) -> datetime:
    return NOW + timedelta(minutes=minutes)


def event(
    action: str, minutes: int, *, event_id: str | None = None, **target: str
) -> RegistryEvent:
    return RegistryEvent(
        id=event_id or f"event-{next(_ids)}",
        at=at(minutes),
        action=action,  # type: ignore[arg-type]
        repository=target.pop("repository", "app"),
        **target,
    )


@pytest.fixture
def store(tmp_path: Path) -> EventStore:
    return EventStore(tmp_path)


def test_a_push_by_tag_records_the_tag_and_its_digest(store: EventStore) -> None:
    store.record([event("push", 0, tag="v1", digest=A)])

    times = store.times("app")

    assert times.tags == {"v1": TagPush(A, at(0))}
    assert times.digests == {A: DigestTimes(pushed=at(0))}
    assert store.times("other").tags == {}


def test_pulls_keep_the_latest_time_and_get_and_head_apart(store: EventStore) -> None:
    store.record([event("pull", 5, tag="v1", digest=A, method="GET")])
    store.record([event("pull", 3, digest=A, method="GET")])  # older, arrives later
    store.record([event("pull", 7, tag="v1", digest=A, method="HEAD")])

    times = store.times("app").digests[A]

    assert times == DigestTimes(pushed=None, pulled_by_get=at(5), pulled_by_head=at(7))
    assert times.pulled(count_head=True) == at(7)
    assert times.pulled(count_head=False) == at(5)


def test_only_a_newer_push_moves_a_tag_to_another_digest(store: EventStore) -> None:
    store.record([event("push", 10, tag="v1", digest=B)])
    store.record([event("push", 2, tag="v1", digest=A)])  # the older push, delivered late

    times = store.times("app")

    assert times.tags["v1"] == TagPush(B, at(10))
    assert times.digests[A].pushed == at(2)


def test_an_event_sent_again_with_the_same_id_is_ignored(store: EventStore) -> None:
    assert store.record([event("push", 0, event_id="same", tag="v1", digest=A)]) == 1

    again = store.record([event("push", 30, event_id="same", tag="v1", digest=A)])

    assert again == 0
    assert store.times("app").tags["v1"].pushed == at(0)


def test_a_delete_by_digest_removes_the_digest_and_every_tag_on_it(store: EventStore) -> None:
    store.record([event("push", 0, tag="v1", digest=A), event("push", 1, tag="latest", digest=A)])
    store.record([event("push", 2, tag="v2", digest=B), event("pull", 3, digest=A)])

    store.record([event("delete", 4, digest=A)])

    times = store.times("app")
    assert set(times.tags) == {"v2"}
    assert set(times.digests) == {B}


def test_a_delete_by_tag_removes_only_that_tag(store: EventStore) -> None:
    store.record([event("push", 0, tag="v1", digest=A), event("push", 1, tag="latest", digest=A)])

    store.record([event("delete", 2, tag="latest")])

    times = store.times("app")
    assert set(times.tags) == {"v1"}
    assert set(times.digests) == {A}


def test_a_delete_of_the_repository_removes_all_of_it_and_nothing_else(
    store: EventStore,
) -> None:
    store.record([event("push", 0, tag="v1", digest=A)])
    store.record([event("push", 0, tag="v1", digest=A, repository="other")])

    store.record([event("delete", 1)])

    assert store.times("app").tags == {} and store.times("app").digests == {}
    assert set(store.times("other").tags) == {"v1"}


def test_a_late_delete_does_not_remove_a_newer_push_or_pull(store: EventStore) -> None:
    store.record([event("push", 10, tag="v1", digest=A)])  # pushed again after the delete
    store.record([event("pull", 12, digest=B)])

    store.record([event("delete", 5, digest=A), event("delete", 6, digest=B)])
    store.record([event("delete", 7, tag="v1")])

    times = store.times("app")
    assert times.tags["v1"] == TagPush(A, at(10))
    assert set(times.digests) == {A, B}


def test_pull_history_starts_with_the_first_envelope_and_never_moves_back(
    store: EventStore,
) -> None:
    assert store.history_since() is None
    store.record([event("pull", 10, digest=A), event("pull", 8, digest=A)])

    store.record([event("pull", 1, digest=B)])  # an older event, retried late

    assert store.history_since() == at(8)


def test_the_ids_remembered_are_bounded_by_the_newest(tmp_path: Path) -> None:
    store = EventStore(tmp_path, max_ids=3)
    for minute in range(5):
        store.record([event("pull", minute, event_id=f"id-{minute}", digest=A)])

    assert store.counts() == (0, 1, 3)
    assert store.record([event("pull", 9, event_id="id-4", digest=A)]) == 0  # still known
    assert store.record([event("pull", 9, event_id="id-0", digest=A)]) == 1  # forgotten


def test_rows_beyond_the_cap_go_least_recently_active_first(tmp_path: Path) -> None:
    store = EventStore(tmp_path, max_rows=2)
    store.record([event("push", 0, tag="old", digest=A)])
    store.record([event("push", 1, tag="new", digest=B)])
    store.record([event("push", 2, tag="newest", digest=B)])
    store.record([event("pull", 3, digest="sha256:" + "c" * 64)])
    store.record([event("pull", 4, digest=A)])  # A is active again: B's push is older

    store.prune()

    times = store.times("app")
    assert set(times.tags) == {"new", "newest"}
    assert set(times.digests) == {A, "sha256:" + "c" * 64}


def test_everything_survives_reopening_and_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    first = EventStore(tmp_path)
    first.record([event("push", 0, event_id="kept", tag="v1", digest=A)])
    first.close()

    second = EventStore.existing(tmp_path)

    assert second is not None
    assert second.times("app").tags == {"v1": TagPush(A, at(0))}
    assert second.history_since() == at(0)
    assert second.record([event("push", 5, event_id="kept", tag="v1", digest=A)]) == 0
    with sqlite3.connect(second.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_reader_finds_no_store_where_none_was_written(tmp_path: Path) -> None:
    assert EventStore.existing(tmp_path) is None
    assert not (tmp_path / "events").exists()


def test_a_file_that_is_not_a_database_is_an_error_and_is_left_alone(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(b"this is not sqlite" * 100)

    with pytest.raises(EventStoreError, match="cannot write the event store"):
        store.record([event("push", 0, tag="v1", digest=A)])
    with pytest.raises(EventStoreError, match="cannot read the event store"):
        store.times("app")
    assert store.path.read_bytes().startswith(b"this is not sqlite")


def test_a_store_of_another_schema_version_is_refused_not_dropped(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    store.record([event("push", 0, tag="v1", digest=A)])
    store.close()
    with sqlite3.connect(store.path) as connection:
        connection.execute("PRAGMA user_version = 99")

    with pytest.raises(EventStoreError, match="schema version 99"):
        EventStore(tmp_path).times("app")
