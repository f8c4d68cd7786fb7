"""When was each tag last pushed, and its image last pulled? From events, else from files.

The registry API has neither time. Two sources, in order:

1. The registry's notification events, stored by ``retention serve`` in ``state_dir``
   (``state/event_store.py``), on every storage backend: a tag's last push (believed only
   while the tag still names the digest that push wrote), and its digest's last pull, by
   any tag or by digest (HEADs counted as ``notifications.pull_events`` says). The CLI's
   ``plan`` and ``run`` read the same file when it exists; only the daemon writes it.
2. On Distribution's filesystem driver, every push of a tag rewrites
   ``repositories/<name>/_manifests/tags/<tag>/current/link``, so its mtime is the last
   push: the fallback for tags the events say nothing about.

Reads only. A store that cannot be read is logged and left out: push times then come from
the files, and pull times stay unknown (the planner treats unknown as "keep").
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from retention.core.model import Inventory, Repository, Tag
from retention.core.policy import Notifications
from retention.errors import EventStoreError
from retention.logs import get_logger
from retention.state.event_store import EventStore, RepositoryTimes

REPOSITORIES = Path("docker/registry/v2/repositories")
log = get_logger(__name__)


def with_event_times(inventory: Inventory, state_dir: Path, settings: Notifications) -> Inventory:
    """``Tag.pushed``/``Tag.pulled`` and ``pull_history_since`` from the stored events."""
    store = EventStore.existing(state_dir) if settings.enabled else None
    if store is None:
        return inventory
    try:
        return _from_store(inventory, store, count_head=settings.counts_head)
    except EventStoreError as exc:
        log.warning("event times not used", error=str(exc))
        return inventory
    finally:
        store.close()


def _from_store(inventory: Inventory, store: EventStore, *, count_head: bool) -> Inventory:
    repositories = tuple(_timed(r, store, count_head) for r in inventory.repositories)
    return replace(inventory, repositories=repositories, pull_history_since=store.history_since())


def _timed(repository: Repository, store: EventStore, count_head: bool) -> Repository:
    times = store.times(repository.name)
    return replace(repository, tags=_timed_tags(repository, times, count_head))


def _timed_tags(
    repository: Repository, times: RepositoryTimes, count_head: bool
) -> tuple[Tag, ...]:
    return tuple(_timed_tag(tag, times, count_head) for tag in repository.tags)


def _timed_tag(tag: Tag, times: RepositoryTimes, count_head: bool) -> Tag:
    push = times.tags.get(tag.name)
    digest = times.digests.get(tag.digest)
    pushed = push.pushed if push is not None and push.digest == tag.digest else None
    pulled = digest.pulled(count_head=count_head) if digest is not None else None
    return replace(tag, pushed=pushed or tag.pushed, pulled=pulled or tag.pulled)


class EventTimes:
    """``with_event_times`` one repository at a time, for a pass that plans each as it is
    scanned: the store stays open for the pass (``with``), and is read once per repository.

    ``history_since`` is known before the first repository, as the planner needs it. A store
    that cannot be read at the start is logged and left out, as ``with_event_times`` does.
    One that fails mid-pass, once the planner was told since when pulls are known, fails
    every repository from there on (they delete nothing): a pull it could not read would
    otherwise count as no pull.
    """

    def __init__(self, state_dir: Path, settings: Notifications) -> None:
        self._store = EventStore.existing(state_dir) if settings.enabled else None
        self._count_head = settings.counts_head
        self._broken: str | None = None
        self.history_since: datetime | None = None
        if self._store is not None:
            try:
                self.history_since = self._store.history_since()
            except EventStoreError as exc:
                log.warning("event times not used", error=str(exc))
                self.close()

    def __enter__(self) -> EventTimes:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def timed(self, repository: Repository) -> Repository:
        if self._broken is not None:
            return replace(repository, error=repository.error or self._broken)
        if self._store is None:
            return repository
        try:
            return _timed(repository, self._store, self._count_head)
        except EventStoreError as exc:
            log.error("event times failed mid-pass", error=str(exc))
            self._broken = f"the notification event store failed: {exc}"
            self.close()
            return self.timed(repository)


def with_push_times(inventory: Inventory, root: Path) -> Inventory:
    """``Tag.pushed`` from the link file, for tags whose push time is still unknown."""
    base = root / REPOSITORIES
    if not base.is_dir():
        return inventory
    return replace(
        inventory, repositories=tuple(_repository(base, r) for r in inventory.repositories)
    )


def with_link_times(repository: Repository, root: Path) -> Repository:
    """``with_push_times`` for one repository, for a pass that plans each as it is scanned."""
    base = root / REPOSITORIES
    return _repository(base, repository) if base.is_dir() else repository


def _repository(base: Path, repository: Repository) -> Repository:
    tags_dir = base / repository.name / "_manifests" / "tags"
    return replace(repository, tags=tuple(_tag(tags_dir, t) for t in repository.tags))


def _tag(tags_dir: Path, tag: Tag) -> Tag:
    if tag.pushed is not None:
        return tag
    try:
        mtime = (tags_dir / tag.name / "current" / "link").stat().st_mtime
    except OSError:
        return tag
    return replace(tag, pushed=datetime.fromtimestamp(mtime, UTC))
