"""Collect what the planner needs to know about a registry; reads only, never writes.

For every repository: its tags, the digest each tag points at, and every manifest those
digests reach (children of indexes included) with a creation time. Each distinct manifest
and config is fetched once, however many tags share it, and bodies are dropped as soon as
they are parsed so memory grows with the number of manifests, not with their size.

Requests per tag: a cold scan sends a GET of the manifest by tag (the answer carries the
digest and the body, checked against each other) and a GET of its config, once per
distinct config. With a ``ManifestCache`` that knows digests, a tag costs one HEAD (its
digest), and a digest seen in an earlier pass is not fetched again (a digest names
immutable bytes), so an unchanged registry costs its tag listings and one HEAD per tag.
Which of the two a tag gets is decided as the scan goes (``_Odds``): HEAD while the cache
answers at least as often as it misses, GET by tag otherwise, so a mostly new registry
with an old cache still costs two requests per tag, not three. Existence is checked in
every repository, every pass: by the request for the tag, and for the children of an
index that came from the cache, by a HEAD of each child.

Fail closed: anything that goes wrong inside a repository is recorded on that repository
(the planner deletes nothing there) and the others carry on. Only a registry we cannot
reach or list at all raises, because then there is nothing to plan.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from retention.core.model import Inventory, Manifest, Repository, Tag
from retention.errors import NotFound, RegistryError, first_in
from retention.registry import FetchedManifest, RegistryClient, parse_created
from retention.registry.manifests import BlobTable, parse_parts
from retention.state.manifest_cache import ManifestCache

TAG_WORKERS_PER_CONNECTION = 2
ProgressCallback = Callable[[int, int], None]
"""Called with (repositories scanned, repositories listed): the catalog is listed first, so
the total is known before the first call and never grows."""


async def collect(
    client: RegistryClient,
    *,
    repositories: Callable[[str], bool] = lambda _: True,
    progress: ProgressCallback | None = None,
    cache: ManifestCache | None = None,
) -> Inventory:
    """Scan every repository ``repositories`` accepts, at most ``client.concurrency`` at once.

    Repositories are bounded as well as requests, and tags within a repository go to a few
    workers, so work in progress stays proportional to the concurrency, not to the size of
    the registry; requests stay bounded by the client, and the repositories in flight
    always have enough tags under way to keep every connection busy (the benchmark shows
    the pool full on average). ``cache`` is saved at the end, whatever happened, since
    everything in it was verified against its digest.
    """
    found = each_repository(client, repositories=repositories, progress=progress, cache=cache)
    return Inventory(registry=client.url, repositories=tuple([r async for r in found]))


async def each_repository(
    client: RegistryClient,
    *,
    repositories: Callable[[str], bool] = lambda _: True,
    progress: ProgressCallback | None = None,
    cache: ManifestCache | None = None,
) -> AsyncGenerator[Repository, None]:
    """``collect`` one repository at a time, in catalog order, as each is scanned: for a
    pass that plans each as it comes and so never holds the whole registry's manifests.

    The next repositories are scanned while the caller works on one; a repository done
    early waits for those before it (the scan starts them in order, so few wait).
    """
    try:
        await client.ping()
        names = [name for name in await client.catalog() if repositories(name)]
        tally = _Tally(progress, total=len(names))
        odds = _Odds(cold=cache is None or cache.empty())
        bound = asyncio.Semaphore(client.concurrency)

        async def scan(name: str) -> Repository:
            async with bound:
                scanned = await _RepositoryScan(client, name, cache, odds).run()
            tally.repository_done()
            return scanned

        tasks = [asyncio.ensure_future(scan(name)) for name in names]
        try:
            for task in tasks:
                yield await task
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if cache is not None:
            cache.save()


@dataclass
class _Tally:
    """Progress over all repositories: scanned of listed (the catalog comes first)."""

    callback: ProgressCallback | None
    total: int
    done: int = 0

    def repository_done(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


@dataclass
class _Odds:
    """Whether the next tag should be fetched whole (GET by tag) or only resolved (HEAD).

    On a hit, a HEAD is a lighter answer than a GET whose body would be thrown away; on a
    miss, it costs a third request (the GET by digest). So: GET while the cache is empty or
    misses more often than it hits, counted over all repositories of this pass.
    """

    cold: bool
    hits: int = 0
    misses: int = 0

    def fetch_whole(self) -> bool:
        return self.cold or self.misses > self.hits

    def count(self, *, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1


class _RepositoryScan:
    """One repository's scan, keeping what it learnt so a failure can still report it.

    Manifests and configs are loaded through per-digest tasks, so tags sharing a digest
    (and indexes sharing children) wait for one request instead of sending their own.
    """

    def __init__(
        self,
        client: RegistryClient,
        name: str,
        cache: ManifestCache | None,
        odds: _Odds,
    ) -> None:
        self._client = client
        self._odds = odds
        # Equal layers as one object in the repository; not registry-wide, or a pass that
        # drops each repository once planned would still keep every config ever read.
        self._shared: BlobTable = {}
        self._name = name
        self._cache = cache
        self._tags: list[Tag] = []
        self._manifests: dict[str, Manifest] = {}
        self._manifest_tasks: dict[str, asyncio.Task[Manifest]] = {}
        self._created_tasks: dict[str, asyncio.Task[datetime | None]] = {}
        self._group = asyncio.TaskGroup()

    async def run(self) -> Repository:
        try:
            await self._scan()
        except RegistryError as exc:
            return self._result(error=_one_line(f"{self._name}: {exc}"))
        return self._result()

    async def _scan(self) -> None:
        """Tags go to a few workers, not a task each: memory stays flat in a huge repository.

        A task per tag cost about 13 KB per tag until the repository was done (a 10,000-tag
        repository peaked near 200 MB). Two workers per connection still keep every
        connection busy while a worker waits for its manifest and config.
        """
        tags = await self._tag_names()
        queue = iter(tags)
        workers = min(len(tags), TAG_WORKERS_PER_CONNECTION * self._client.concurrency)
        await _all_or_first_error(self._group, (self._scan_tags(queue) for _ in range(workers)))

    async def _tag_names(self) -> list[str]:
        """The tags; none for a repository that has layers but never got a manifest.

        Distribution 2.8 lists such a repository (an interrupted first push) in the catalog
        and answers its tag listing with 404 NAME_UNKNOWN. There is nothing in it to delete,
        and flagging it as failed would fail every pass until someone cleans storage by hand.
        """
        try:
            return await self._client.tags(self._name)
        except NotFound as exc:
            if exc.code == "NAME_UNKNOWN":
                return []
            raise

    async def _scan_tags(self, queue: Iterator[str]) -> None:
        """One worker: takes the next tag from the shared queue until none is left."""
        for tag in queue:
            await self._scan_tag(tag)

    async def _scan_tag(self, tag: str) -> None:
        """One request for the tag: a GET that brings the body along, or a HEAD."""
        fetched: FetchedManifest | None = None
        if self._odds.fetch_whole():
            fetched = await self._client.manifest(self._name, tag)
            digest = fetched.digest
        else:
            digest, _ = await self._client.resolve(self._name, tag)
        # Interned: the plan keeps every tag's name, and names like ``latest`` repeat.
        self._tags.append(Tag(name=sys.intern(tag), digest=digest))
        await self._manifest(digest, present=True, fetched=fetched)

    def _manifest(
        self, digest: str, *, present: bool = False, fetched: FetchedManifest | None = None
    ) -> Awaitable[Manifest]:
        """The manifest, loaded once; ``present`` when a request for a tag just found it here.

        ``fetched`` is its body when the tag's GET brought it; a digest already loading (a
        shared digest, a child of an index) drops it: the body is the same.
        """
        if digest not in self._manifest_tasks:
            task = self._group.create_task(self._load_manifest(digest, present, fetched))
            self._manifest_tasks[digest] = task
        return self._manifest_tasks[digest]

    def _created(self, config: str) -> Awaitable[datetime | None]:
        if config not in self._created_tasks:
            task = self._group.create_task(self._fetch_created(config))
            self._created_tasks[config] = task
        return self._created_tasks[config]

    async def _load_manifest(
        self, digest: str, present: bool, fetched: FetchedManifest | None
    ) -> Manifest:
        """From the cache if it knows the digest, else from the registry (and then cached)."""
        # An empty cache stays empty until save(): a cold scan need not ask it per digest.
        cache = None if self._odds.cold else self._cache
        cached = cache.get(digest) if cache is not None else None
        if present:
            self._odds.count(hit=cached is not None)
        if cached is not None:
            manifest = await self._confirm(cached, present)
        else:
            manifest = await self._fetch_manifest(digest, fetched)
            if self._cache is not None:
                self._cache.put(manifest)
        self._manifests[digest] = manifest
        return manifest

    async def _confirm(self, cached: Manifest, present: bool) -> Manifest:
        """A cached manifest, once a HEAD has found it in this repository, with its children.

        A tag's HEAD already did; a child needs its own, or an index whose child was deleted
        would pass with a cache and fail without one.
        """
        if not present:
            await self._client.resolve(self._name, cached.digest)
        await asyncio.gather(*(self._manifest(child) for child in cached.children))
        return cached

    async def _fetch_manifest(self, digest: str, fetched: FetchedManifest | None) -> Manifest:
        """Parse, then date it: an image by its config, an index by its newest child."""
        if fetched is None:
            fetched = await self._client.manifest(self._name, digest)
        parsed = parse_parts(fetched, self._shared)
        if parsed.config is not None:
            created = await self._created(parsed.config)
        else:
            children = await asyncio.gather(*(self._manifest(c) for c in parsed.children))
            created = _newest(child.created for child in children)
        return parsed.built(created)

    async def _fetch_created(self, config: str) -> datetime | None:
        return parse_created(await self._client.blob(self._name, config))

    def _result(self, error: str | None = None) -> Repository:
        return Repository(
            name=self._name,
            tags=tuple(sorted(self._tags, key=lambda tag: tag.name)),
            manifests=dict(self._manifests),
            error=error,
        )


async def _all_or_first_error(
    group: asyncio.TaskGroup, calls: Iterable[Coroutine[Any, Any, None]]
) -> None:
    """Run ``calls`` in ``group``; on the first failure cancel the rest and raise it alone.

    A repository fails as a whole, so one cause is enough, and the caller can catch a plain
    ``RegistryError`` instead of an exception group. Not ``except*``: on Python before
    3.11.4 (Debian 12 has 3.11.2) an exception raised inside ``except*`` comes out wrapped
    in a new ExceptionGroup (CPython gh-103590).
    """
    try:
        async with group:
            for call in calls:
                group.create_task(call)
    except BaseExceptionGroup as failures:
        first = first_in(failures, RegistryError)
        if first is None:
            raise
        raise first from None


def _newest(times: Iterable[datetime | None]) -> datetime | None:
    """An index is as new as its newest platform; unknown if no child knows its age."""
    return max((time for time in times if time is not None), default=None)


def _one_line(message: str) -> str:
    return " ".join(message.split())
