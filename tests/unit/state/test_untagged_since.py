"""``state_dir/untagged-since.json``: the first time each manifest was seen untagged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from retention.state.untagged_since import UntaggedSince

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=3)


def test_a_digest_keeps_the_time_it_was_first_seen_untagged(tmp_path: Path) -> None:
    store = UntaggedSince(tmp_path)
    store.record({"app": ["sha256:a"]}, NOW)
    seen = store.record({"app": ["sha256:a", "sha256:b"]}, LATER)
    assert seen == {"app": {"sha256:a": NOW, "sha256:b": LATER}}
    assert UntaggedSince(tmp_path).load() == seen


def test_a_digest_tagged_again_is_forgotten_and_starts_afresh(tmp_path: Path) -> None:
    store = UntaggedSince(tmp_path)
    store.record({"app": ["sha256:a"]}, NOW)
    store.record({"app": []}, NOW + timedelta(days=1))
    assert store.record({"app": ["sha256:a"]}, LATER) == {"app": {"sha256:a": LATER}}


def test_repositories_not_scanned_this_pass_are_left_alone(tmp_path: Path) -> None:
    store = UntaggedSince(tmp_path)
    store.record({"app": ["sha256:a"], "web": ["sha256:w"]}, NOW)
    seen = store.record({"app": ["sha256:a"]}, LATER)
    assert seen["web"] == {"sha256:w": NOW}


def test_a_damaged_file_restarts_every_age_at_zero(tmp_path: Path) -> None:
    """Later deletions, never earlier ones: nothing is older than the pass that sees it."""
    store = UntaggedSince(tmp_path)
    store.path.write_text("{not json")
    assert store.record({"app": ["sha256:a"]}, LATER) == {"app": {"sha256:a": LATER}}
    store.path.write_text('{"app": {"sha256:a": "2026-01-01T00:00:00"}}')  # no time zone
    assert store.load() == {}
