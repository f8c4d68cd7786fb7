"""The manifest cache on its own: what goes in comes out, and a bad file never fails a pass.

Time is injected (``clock=``), so pruning is tested on fixed days instead of by waiting.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from retention.core.model import Blob, Manifest
from retention.state import manifest_cache as cache_module
from retention.state.manifest_cache import MAX_AGE, MAX_ENTRIES, ManifestCache

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
IMAGE = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def image(n: int, created: datetime | None = NOW, subject: str | None = None) -> Manifest:
    return Manifest(
        digest=digest(n),
        media_type=IMAGE,
        size=500 + n,
        created=created,
        blobs=(Blob(digest(1000 + n), 120), Blob(digest(2000), 31_000_000)),
        subject=subject,
    )


def cache_at(
    state_dir: Path,
    day: int = 0,
    *,
    max_age: timedelta = MAX_AGE,
    max_entries: int = MAX_ENTRIES,
) -> ManifestCache:
    """A cache whose clock says NOW plus ``day`` days."""
    moment = NOW + timedelta(days=day)
    return ManifestCache(state_dir, max_age=max_age, max_entries=max_entries, clock=lambda: moment)


def saved(
    state_dir: Path,
    *manifests: Manifest,
    day: int = 0,
    max_age: timedelta = MAX_AGE,
    max_entries: int = MAX_ENTRIES,
) -> None:
    cache = cache_at(state_dir, day, max_age=max_age, max_entries=max_entries)
    for manifest in manifests:
        cache.put(manifest)
    cache.save()


def stored_digests(state_dir: Path) -> set[str]:
    with sqlite3.connect(state_dir / "cache" / "manifests.sqlite3") as connection:
        return {row[0] for row in connection.execute("SELECT digest FROM manifests")}


# What goes in comes out.


@pytest.mark.parametrize(
    "manifest",
    [
        image(1),
        image(2, created=None),
        image(3, created=datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC)),
        image(4, subject=digest(1)),
        Manifest(digest(5), INDEX, 900, NOW, children=(digest(1), digest(2))),
    ],
    ids=["image", "age unknown", "microseconds", "with subject", "index"],
)
def test_a_saved_manifest_comes_back_equal_in_the_next_pass(
    tmp_path: Path, manifest: Manifest
) -> None:
    saved(tmp_path, manifest)

    assert ManifestCache(tmp_path).get(manifest.digest) == manifest


def test_an_unknown_digest_is_a_miss(tmp_path: Path) -> None:
    saved(tmp_path, image(1))

    assert ManifestCache(tmp_path).get(digest(2)) is None


def test_nothing_is_written_before_save(tmp_path: Path) -> None:
    cache = ManifestCache(tmp_path)
    cache.put(image(1))

    assert ManifestCache(tmp_path).get(digest(1)) is None


def test_the_cache_lives_in_its_own_directory_under_state_dir(tmp_path: Path) -> None:
    saved(tmp_path / "state", image(1))

    assert (tmp_path / "state" / "cache" / "manifests.sqlite3").is_file()


# A bad cache costs speed, never a pass.


def test_a_corrupt_file_is_logged_once_ignored_and_rebuilt_in_the_same_pass(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cache" / "manifests.sqlite3"
    path.parent.mkdir()
    path.write_bytes(b"this is not an SQLite database, just garbage " * 100)
    cache = ManifestCache(tmp_path)

    with capture_logs() as logs:
        misses = [cache.get(digest(n)) for n in range(3)]
        cache.put(image(1))
        cache.save()

    assert misses == [None, None, None]
    assert [entry["log_level"] for entry in logs] == ["warning"]
    assert "rebuilt" in logs[0]["event"]
    assert ManifestCache(tmp_path).get(digest(1)) == image(1)


def test_a_file_corrupted_between_passes_is_rebuilt_when_saving(tmp_path: Path) -> None:
    cache = ManifestCache(tmp_path)
    cache.put(image(1))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "manifests.sqlite3").write_bytes(b"\0garbage" * 1000)

    with capture_logs() as logs:
        cache.save()

    assert len(logs) == 1
    assert ManifestCache(tmp_path).get(digest(1)) == image(1)


def test_an_unreadable_entry_is_a_miss_and_is_replaced_by_the_refetched_manifest(
    tmp_path: Path,
) -> None:
    saved(tmp_path, image(1), image(2))
    with sqlite3.connect(tmp_path / "cache" / "manifests.sqlite3") as connection:
        connection.execute('UPDATE manifests SET entry = \'{"size": "big"}\'')
    cache = ManifestCache(tmp_path)

    with capture_logs() as logs:
        misses = [cache.get(digest(1)), cache.get(digest(2))]
        cache.put(image(1))
        cache.save()

    assert misses == [None, None]
    assert len(logs) == 1
    assert ManifestCache(tmp_path).get(digest(1)) == image(1)


def test_a_state_dir_that_cannot_hold_the_cache_disables_it_without_failing(
    tmp_path: Path,
) -> None:
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    cache = ManifestCache(tmp_path)

    with capture_logs() as logs:
        assert cache.get(digest(1)) is None
        cache.put(image(1))
        cache.save()

    assert len(logs) == 1
    assert "not used this pass" in logs[0]["event"]
    assert (tmp_path / "cache").read_text() == "a file where the cache directory should be"


def test_a_cache_locked_by_another_pass_is_skipped_and_left_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved(tmp_path, image(1))
    monkeypatch.setattr(cache_module, "LOCK_WAIT_SECONDS", 0.01)
    other = sqlite3.connect(tmp_path / "cache" / "manifests.sqlite3", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        cache = ManifestCache(tmp_path)
        with capture_logs() as logs:
            assert cache.get(digest(1)) is None
            cache.put(image(2))
            cache.save()
    finally:
        other.execute("ROLLBACK")
        other.close()

    assert len(logs) == 1
    assert ManifestCache(tmp_path).get(digest(1)) == image(1)


def test_a_cache_of_another_schema_version_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "manifests.sqlite3"
    path.parent.mkdir()
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE manifests (digest TEXT, body BLOB)")
        connection.execute("INSERT INTO manifests VALUES (?, 'old')", (digest(1),))
        connection.execute("PRAGMA user_version = 99")

    assert ManifestCache(tmp_path).get(digest(1)) is None
    saved(tmp_path, image(1))
    assert ManifestCache(tmp_path).get(digest(1)) == image(1)


def test_a_cache_that_failed_is_tried_again_after_save(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("in the way")
    cache = ManifestCache(tmp_path)
    cache.get(digest(1))
    cache.save()
    (tmp_path / "cache").unlink()

    cache.put(image(1))
    cache.save()

    assert ManifestCache(tmp_path).get(digest(1)) == image(1)


# Bounded size.


def test_entries_not_seen_for_max_age_are_pruned_and_seen_ones_are_kept(tmp_path: Path) -> None:
    saved(tmp_path, image(1), image(2), day=0)
    reader = cache_at(tmp_path, day=20)
    assert reader.get(digest(1)) == image(1)
    reader.save()

    saved(tmp_path, image(3), day=40, max_age=timedelta(days=30))

    assert stored_digests(tmp_path) == {digest(1), digest(3)}


def test_beyond_max_entries_the_least_recently_seen_are_pruned(tmp_path: Path) -> None:
    saved(tmp_path, image(1), day=0)
    saved(tmp_path, image(2), day=1)
    saved(tmp_path, image(3), image(4), day=2, max_entries=3)

    assert stored_digests(tmp_path) == {digest(2), digest(3), digest(4)}


def test_a_miss_is_not_marked_seen(tmp_path: Path) -> None:
    saved(tmp_path, image(1), day=0)
    reader = cache_at(tmp_path, day=20)
    assert reader.get(digest(2)) is None
    reader.save()

    saved(tmp_path, day=31, max_age=timedelta(days=30))

    assert stored_digests(tmp_path) == set()


def test_every_field_of_a_manifest_is_cached() -> None:
    # A field added to Manifest or Blob must be cached too (and SCHEMA_VERSION bumped), or
    # a cached manifest would quietly differ from a fetched one.
    manifest_fields = {field.name for field in dataclasses.fields(Manifest)}
    assert manifest_fields - {"digest"} == set(json.loads(cache_module._encode(image(1))))
    assert [field.name for field in dataclasses.fields(Blob)] == ["digest", "size"]


# Whether a scan is cold.


def test_a_new_cache_is_empty_and_one_with_an_entry_is_not(tmp_path: Path) -> None:
    assert cache_at(tmp_path).empty()
    saved(tmp_path, image(1))
    assert not cache_at(tmp_path).empty()


def test_a_corrupt_cache_file_counts_as_empty(tmp_path: Path) -> None:
    saved(tmp_path, image(1))
    (tmp_path / "cache" / "manifests.sqlite3").write_bytes(b"garbage" * 4096)

    with capture_logs():
        assert cache_at(tmp_path).empty()


def test_a_layer_shared_by_cached_manifests_is_one_object_in_memory(tmp_path: Path) -> None:
    saved(tmp_path, image(1), image(2))
    cache = cache_at(tmp_path)

    first, second = cache.get(digest(1)), cache.get(digest(2))

    assert first is not None and second is not None
    assert first.blobs[1] == second.blobs[1]
    assert first.blobs[1] is second.blobs[1]  # digest(2000): the layer both images use
