"""Push and pull times from the event store onto the scanned tags, and the policy keys.

The scan side is pure apart from the store file: an inventory built by hand, a store on
disk, and the same ``with_event_times`` the runner calls.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.config.load import load_policy
from retention.core.model import Inventory, Repository, Tag
from retention.core.policy import Notifications
from retention.errors import ConfigError, EventStoreError
from retention.scan.push_times import EventTimes, with_event_times, with_push_times
from retention.state.event_store import EventStore, RegistryEvent

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
ON = Notifications(enabled=True, secret_env="X")
GET_ONLY = Notifications(enabled=True, secret_env="X", pull_events="get")


def at(minutes: int) -> datetime:
    return NOW + timedelta(minutes=minutes)


def record(state_dir: Path, *events: tuple[str, int, dict[str, str]]) -> None:
    store = EventStore(state_dir)
    for number, (action, minutes, target) in enumerate(events):
        store.record(
            [RegistryEvent(f"e{number}", at(minutes), action, "app", **target)]  # type: ignore[arg-type]
        )
    store.close()


def inventory(*tags: Tag) -> Inventory:
    return Inventory("http://registry", (Repository("app", tags),))


def tags_of(result: Inventory) -> dict[str, Tag]:
    return {t.name: t for t in result.repositories[0].tags}


def test_push_and_pull_times_come_from_the_events_with_the_history_start(tmp_path: Path) -> None:
    record(
        tmp_path,
        ("push", 0, {"tag": "v1", "digest": A}),
        ("pull", 5, {"tag": "v1", "digest": A, "method": "GET"}),
    )

    result = with_event_times(inventory(Tag("v1", A)), tmp_path, ON)

    assert tags_of(result)["v1"] == Tag("v1", A, pushed=at(0), pulled=at(5))
    assert result.pull_history_since == at(0)


def test_a_pull_by_digest_counts_for_every_tag_on_that_digest(tmp_path: Path) -> None:
    record(tmp_path, ("pull", 9, {"digest": A}))

    result = with_event_times(inventory(Tag("v1", A), Tag("latest", A), Tag("v2", B)), tmp_path, ON)

    pulled = {name: tag.pulled for name, tag in tags_of(result).items()}
    assert pulled == {"v1": at(9), "latest": at(9), "v2": None}


def test_head_pulls_count_only_with_get_and_head(tmp_path: Path) -> None:
    record(tmp_path, ("pull", 3, {"tag": "v1", "digest": A, "method": "HEAD"}))

    counted = with_event_times(inventory(Tag("v1", A)), tmp_path, ON)
    not_counted = with_event_times(inventory(Tag("v1", A)), tmp_path, GET_ONLY)

    assert tags_of(counted)["v1"].pulled == at(3)
    assert tags_of(not_counted)["v1"].pulled is None


def test_a_push_time_is_believed_only_for_the_digest_the_tag_still_names(tmp_path: Path) -> None:
    """The tag moved to B and that push was lost (a registry restart drops its queue)."""
    record(tmp_path, ("push", 0, {"tag": "v1", "digest": A}))

    result = with_event_times(inventory(Tag("v1", B)), tmp_path, ON)

    assert tags_of(result)["v1"].pushed is None


def test_the_link_file_mtime_fills_only_push_times_the_events_do_not_know(
    tmp_path: Path,
) -> None:
    root = tmp_path / "storage"
    for name in ("v1", "v2"):
        link = root / f"docker/registry/v2/repositories/app/_manifests/tags/{name}/current/link"
        link.parent.mkdir(parents=True)
        link.write_text(A)
        os.utime(link, (at(60).timestamp(), at(60).timestamp()))
    record(tmp_path, ("push", 0, {"tag": "v1", "digest": A}))

    timed = with_event_times(inventory(Tag("v1", A), Tag("v2", A)), tmp_path, ON)
    result = with_push_times(timed, root)

    assert {n: t.pushed for n, t in tags_of(result).items()} == {"v1": at(0), "v2": at(60)}


def test_no_store_or_notifications_off_leaves_the_inventory_as_it_was(tmp_path: Path) -> None:
    scanned = inventory(Tag("v1", A))
    assert with_event_times(scanned, tmp_path, ON) == scanned
    record(tmp_path, ("push", 0, {"tag": "v1", "digest": A}))
    assert with_event_times(scanned, tmp_path, Notifications()) == scanned


def test_an_unreadable_store_is_left_out_of_the_pass(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "events.sqlite3").write_bytes(b"garbage" * 200)
    scanned = inventory(Tag("v1", A))

    assert with_event_times(scanned, tmp_path, ON) == scanned


def test_a_pass_planning_as_it_scans_gets_the_same_times_and_history_start(
    tmp_path: Path,
) -> None:
    record(tmp_path, ("push", 0, {"tag": "v1", "digest": A}))
    scanned = inventory(Tag("v1", A))

    with EventTimes(tmp_path, ON) as events:
        timed = events.timed(scanned.repositories[0])

    whole = with_event_times(scanned, tmp_path, ON)
    assert (timed, events.history_since) == (whole.repositories[0], whole.pull_history_since)


def test_a_store_failing_mid_pass_fails_every_repository_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner was told since when pulls are known: a pull it could not read would
    count as no pull, so those repositories delete nothing."""
    record(tmp_path, ("push", 0, {"tag": "v1", "digest": A}))

    def unreadable(self: EventStore, repository: str) -> None:
        raise EventStoreError("the event store is unreadable: disk I/O error")

    with EventTimes(tmp_path, ON) as events:
        first = events.timed(Repository("app", (Tag("v1", A),)))
        monkeypatch.setattr(EventStore, "times", unreadable)
        later = [events.timed(Repository(name, (Tag("v1", B),))) for name in ("api", "web")]

    assert first.error is None and first.tags[0].pushed == at(0)
    why = "the notification event store failed: the event store is unreadable: disk I/O error"
    assert [r.error for r in later] == [why, why]


def test_a_store_unreadable_from_the_start_is_left_out_of_a_pass_planning_as_it_scans(
    tmp_path: Path,
) -> None:
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "events.sqlite3").write_bytes(b"garbage" * 200)
    repository = Repository("app", (Tag("v1", A),))

    with EventTimes(tmp_path, ON) as events:
        assert (events.timed(repository), events.history_since) == (repository, None)


REGISTRY = "registry:\n  url: http://127.0.0.1:5000\n"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "notifications:\n  enabled: true\n",
            "policies.yml:5 notifications: enabled needs secret_file or secret_env: "
            "the registry must authenticate",
        ),
        (
            "notifications:\n  secret_file: /run/s\n  secret_env: S\n",
            "policies.yml:6 notifications.secret_env: set secret_file or secret_env, not both",
        ),
        (
            "notifications:\n  header: 'X Token'\n",
            "policies.yml:5 notifications.header: 'X Token' is not an HTTP header name",
        ),
        (
            "notifications:\n  pull_events: head\n",
            "policies.yml:5 notifications.pull_events: expected 'get' or 'get_and_head', "
            "got 'head'",
        ),
        (
            "notifications:\n  secret: hunter2\n",
            "policies.yml:5 notifications: unknown key 'secret' (did you mean 'secret_env'?)",
        ),
    ],
)
def test_notification_settings_are_checked_with_their_line(
    tmp_path: Path, section: str, expected: str
) -> None:
    path = tmp_path / "policies.yml"
    path.write_text(REGISTRY + "rules: []\n" + section)

    with pytest.raises(ConfigError) as caught:
        load_policy(path, {})

    assert caught.value.problems == [f"{tmp_path}/{expected}"]


def test_notifications_are_off_by_default_and_count_heads_when_on() -> None:
    assert Notifications().enabled is False
    assert Notifications().counts_head is True
    assert GET_ONLY.counts_head is False
