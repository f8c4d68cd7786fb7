"""Which time a rule may use for a tag: pushed, created or pulled, and when none can be trusted.

Pure. The registry keeps no times of its own; the image config's ``created`` is what the
builder wrote, and reproducible builds (ko, Jib, Bazel rules_oci, Nix, ``SOURCE_DATE_EPOCH``)
write 1970-01-01 or one fixed date into every image. Ranking or ageing by such a time keeps
an arbitrary N and deletes the newest release, so a created time is not believed when:

* it is before 2000-01-01 (no registry image was built then), or
* the same instant is the created time of "most" of the repository's images: of at least
  two different images (digests), and of more than half of the images whose created time
  is not already before 2000 (two of two or of three, three of four or five, ...). Tags on
  one digest count once: ``latest`` and ``v1.2`` on one image are one build, not two; and
  a platform manifest that has its own tag does not count beside its index.

Such a time is UNKNOWN, not old: the planner keeps the tag and says why. The push time
(the filesystem's link mtime or a registry notification) is what operators mean by "new",
so it comes first wherever it is known.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from retention.core.model import Manifest, Tag

EARLIEST_BELIEVABLE = datetime(2000, 1, 1, tzinfo=UTC)
SHARED_MINIMUM = 2

TimeSource = Literal["pushed", "created"]
WORDS: dict[str, str] = {"pushed": "push time", "created": "created time", "semver": "semver"}


@dataclass(frozen=True)
class TagTimes:
    """What is known about when one tag was pushed, built and pulled.

    ``created`` is the image's created time as stored (for the report); ``doubt`` says why
    it is not believed, and then ``believable_created`` is None.
    """

    pushed: datetime | None
    created: datetime | None
    pulled: datetime | None
    doubt: str | None = None

    @property
    def believable_created(self) -> datetime | None:
        return None if self.doubt else self.created


@dataclass(frozen=True)
class Moment:
    """A time a rule uses, and which kind it is (for the reason and the report)."""

    at: datetime
    source: TimeSource


def times_by_tag(tags: Iterable[Tag], manifests: Mapping[str, Manifest]) -> dict[str, TagTimes]:
    """Every tag's times, with the created times a reproducible build wrote marked as doubtful."""
    listed = list(tags)
    created = {t.digest: _created(manifests, t.digest) for t in listed}
    children = _children(manifests)
    shared = _shared_created({d: c for d, c in created.items() if d not in children})
    return {
        t.name: TagTimes(t.pushed, created[t.digest], t.pulled, _doubt(created[t.digest], shared))
        for t in listed
    }


def pick(times: TagTimes, by: TimeSource | None) -> Moment | None:
    """The time ``order_by``/``age_by`` means for this tag; None when it is not known.

    ``None`` (the default) is the push time where known, else a believable created time;
    an explicit ``pushed`` or ``created`` uses that time only.
    """
    if by in (None, "pushed") and times.pushed is not None:
        return Moment(times.pushed, "pushed")
    if by in (None, "created") and times.believable_created is not None:
        return Moment(times.believable_created, "created")
    return None


def why_unknown(times: TagTimes, by: TimeSource | None) -> str:
    """Why ``pick`` found no time, in the words of a reason."""
    if by == "pushed":
        return "push time unknown"
    if times.doubt is not None:
        return times.doubt if by == "created" else f"{times.doubt} (no push time)"
    return "created time unknown" if by == "created" else "created time unknown (no push time)"


def last_pull(times: TagTimes) -> datetime | None:
    """The last pull of what the tag names now: a push after it starts afresh (a new image,
    or the same one pushed again, has not been seen unused for that long)."""
    if times.pulled is None or (times.pushed is not None and times.pushed > times.pulled):
        return None
    return times.pulled


def pull_history_start(times: TagTimes, since: datetime | None) -> datetime | None:
    """Since when a missing pull of this tag means "not pulled": None when nobody watched.

    Pulls are known from ``since`` on; a tag pushed later can only have been pulled since
    its push, so its history starts there. A tag pulled before its last push had a history
    even when ``since`` is unknown: from that push.
    """
    if since is None and times.pulled is None:
        return None
    starts = [moment for moment in (since, times.pushed) if moment is not None]
    return max(starts) if starts else None


# -- doubtful created times -----------------------------------------------------------------


def _created(manifests: Mapping[str, Manifest], digest: str) -> datetime | None:
    manifest = manifests.get(digest)
    return manifest.created if manifest is not None else None


def _children(manifests: Mapping[str, Manifest]) -> set[str]:
    """Platform manifests: an index's created time is its newest child's, not a second build."""
    return {child for manifest in manifests.values() for child in manifest.children}


def _shared_created(created: Mapping[str, datetime | None]) -> dict[datetime, tuple[int, int]]:
    """Instants shared by "most" images (see the module docstring): instant -> (k, of n)."""
    believable = [c for c in created.values() if c is not None and c >= EARLIEST_BELIEVABLE]
    counts = Counter(believable)
    total = len(believable)
    return {
        moment: (count, total)
        for moment, count in counts.items()
        if count >= SHARED_MINIMUM and 2 * count > total
    }


def _doubt(created: datetime | None, shared: Mapping[datetime, tuple[int, int]]) -> str | None:
    if created is None:
        return None
    if created < EARLIEST_BELIEVABLE:
        return (
            f"created time {created.astimezone(UTC):%Y-%m-%d} looks like a reproducible "
            "build: unknown age"
        )
    if created in shared:
        count, total = shared[created]
        return (
            f"created time {created.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} is shared by {count} "
            f"of {total} images here (a fixed build date): unknown age"
        )
    return None


def describe_age(age: timedelta, limit: timedelta | None = None) -> str:
    """An age as people say it: ``41d``, ``5h``, ``12m``; negative ages are clock skew.

    Beside a ``limit`` it never reads like the limit itself: an age of 14d 5h against
    ``max_age: 14d`` is ``14d 5h``, not ``older than 14d (14d)``.
    """
    seconds = int(age.total_seconds())
    if seconds < 0:
        return "in the future"
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    first = next(i for i, (_, size) in enumerate(units) if seconds >= size or size == 1)
    parts, shown = [], 0
    for unit, size in units[first:]:
        amount = (seconds - shown) // size
        parts.append(f"{amount}{unit}")
        shown += amount * size
        if limit is None or shown != int(limit.total_seconds()) or shown == seconds:
            break
    return " ".join(parts)
