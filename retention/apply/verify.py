"""After a pass, check that every kept image is still whole; reads only.

Deleting by digest or a GC can break images that were meant to stay: the classic failure
is a multi-arch index whose platform manifests were removed (``--delete-untagged`` on
Distribution 2.x does exactly that). So after deletion, and again after GC, every kept tag
must still resolve, every manifest below it must answer, and its config and layer blobs
(all, or a sample) must answer HEAD 200. Problems are returned as lines, not raised: a
broken image is a failed pass, and the report must say which.

A registry with the ``inmemory`` blob-descriptor cache keeps answering 200 for blobs GC
removed until it is restarted; the strategies that restart it make this check honest.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from retention.core.model import Action, PhaseProgress, Plan, RepositoryPlan
from retention.errors import NotFound, RegistryError
from retention.registry import RegistryClient, parse_manifest

BlobSample = Literal["all"] | int


@dataclass
class _Walk:
    """What one repository's kept tags need, gathered while walking their manifests."""

    repository: str
    problems: list[str] = field(default_factory=list)
    blobs: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)


async def verify(
    client: RegistryClient,
    plan: Plan,
    blobs: BlobSample = "all",
    progress: PhaseProgress | None = None,
) -> list[str]:
    """One line per problem with a kept tag; an empty list means every kept image is whole.

    Progress: ``verify`` counts repositories walked, then ``verify blobs`` the blobs.
    """
    checked = [r for r in plan.repositories if r.error is None]
    walked = _Counter(progress, "verify", len(checked))

    async def walk(repository: RepositoryPlan) -> _Walk:
        found = await _walk_repository(client, repository)
        walked.step()
        return found

    walks = await asyncio.gather(*(walk(r) for r in checked))
    problems = [p for walk in walks for p in walk.problems]
    pairs = _sample(sorted((w.repository, b) for w in walks for b in w.blobs), blobs)
    problems += await _check_blobs(client, pairs, _Counter(progress, "verify blobs", len(pairs)))
    return problems


@dataclass
class _Counter:
    callback: PhaseProgress | None
    phase: str
    total: int
    done: int = 0

    def step(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.phase, self.done, self.total)


async def _walk_repository(client: RegistryClient, repository: RepositoryPlan) -> _Walk:
    walk = _Walk(repository.name)
    kept = [d for d in repository.decisions if d.action is Action.KEEP and not d.is_untagged]
    await asyncio.gather(*(_walk_tag(client, walk, d.tag, d.digest) for d in kept))
    return walk


async def _walk_tag(client: RegistryClient, walk: _Walk, tag: str, planned: str) -> None:
    try:
        digest, _ = await client.resolve(walk.repository, tag)
    except NotFound:
        walk.problems.append(f"{walk.repository}:{tag}: kept tag no longer resolves")
        return
    except RegistryError as exc:
        walk.problems.append(f"{walk.repository}:{tag}: could not be checked: {exc}")
        return
    if digest == planned:
        await _walk_manifest(client, walk, digest, f"{walk.repository}:{tag}")


async def _walk_manifest(client: RegistryClient, walk: _Walk, digest: str, owner: str) -> None:
    if digest in walk.seen:
        return
    walk.seen.add(digest)
    try:
        manifest, _ = parse_manifest(await client.manifest(walk.repository, digest))
    except NotFound:
        walk.problems.append(f"{owner}: manifest {digest} is missing")
        return
    except RegistryError as exc:
        walk.problems.append(f"{owner}: manifest {digest} could not be read: {exc}")
        return
    walk.blobs.update(b.digest for b in manifest.blobs)
    await asyncio.gather(*(_walk_manifest(client, walk, c, owner) for c in manifest.children))


def _sample(pairs: Sequence[tuple[str, str]], blobs: BlobSample) -> Sequence[tuple[str, str]]:
    """All pairs, or a fixed-seed sample so two runs over the same registry check the same."""
    if blobs == "all" or blobs >= len(pairs):
        return pairs
    return sorted(random.Random(0).sample(list(pairs), blobs))


async def _check_blobs(
    client: RegistryClient, pairs: Sequence[tuple[str, str]], counter: _Counter
) -> list[str]:
    async def check(repository: str, digest: str) -> str | None:
        try:
            present = await client.blob_exists(repository, digest)
        except RegistryError as exc:
            return f"{repository}: blob {digest} could not be checked: {exc}"
        finally:
            counter.step()
        return None if present else f"{repository}: blob {digest} of a kept image is missing"

    found = await asyncio.gather(*(check(r, d) for r, d in pairs))
    return [problem for problem in found if problem is not None]
