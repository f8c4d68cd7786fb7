"""Manifests no tag reaches, listed from the filesystem storage, for ``untagged:``.

The registry API cannot list them; Distribution's filesystem driver keeps a link per stored
manifest at ``repositories/<name>/_manifests/revisions/sha256/<hex>/link`` (its mtime is
rewritten by every push of that manifest, by tag or by digest). A revision that no tag
reaches, directly or as a child of a tagged index, is untagged. Their bodies are read as
``scan: storage`` reads manifests (``storage_reader.read_manifests``): one that cannot be
read, or fails its digest, fails its repository, where nothing is then deleted.

When each was first seen untagged is recorded in ``state_dir`` (``state/untagged_since``)
by every pass, plan or run, since a manifest's age as untagged can only be observed.
Reads the storage; writes only that state file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from retention.core.model import Manifest, Repository, UntaggedManifest
from retention.core.policy import Policy
from retention.errors import InvalidManifest, StorageReadError
from retention.logs import get_logger
from retention.scan.storage_reader import V2, read_manifests, storage_root_problem
from retention.state.untagged_since import UntaggedSince

log = get_logger(__name__)
_ALGORITHM = "sha256"  # the only digest Distribution 2.8 stores revisions under


class UntaggedListing:
    """One pass's listing, a repository at a time (a pass that plans each repository as it
    reads it calls ``add`` for each, then ``save`` once).

    The first-seen times are read once; ``save`` records what this pass saw, so a pass
    that stops early records nothing and every age stays where it was.
    """

    def __init__(self, policy: Policy, now: datetime) -> None:
        self._settings, self._root = policy.untagged, policy.storage.path
        self._now = now
        self._store = UntaggedSince(policy.state_dir)
        self._seen = self._store.load() if self.enabled else {}
        self._problem = storage_root_problem(self._root) if self._root is not None else None
        self._listed: dict[str, list[str]] = {}

    @property
    def enabled(self) -> bool:
        """Whether ``add`` can change anything (else a caller need not hand it over)."""
        return self._settings is not None and self._root is not None

    def add(self, repository: Repository) -> Repository:
        """The repository with its untagged manifests, when the policy covers it."""
        if self._settings is None or self._root is None or repository.error is not None:
            return repository
        if not self._settings.covers(repository.name):
            return repository
        listed, linked = _listed(self._root, repository, self._problem)
        if listed.error is None:  # a failed read forgets nothing
            self._listed[repository.name] = sorted(linked)
        seen = self._seen.get(repository.name, {})
        return _dated(listed, linked, seen, self._now)

    def save(self) -> None:
        if self.enabled:
            self._store.record(self._listed, self._now)


def _listed(
    root: Path, repository: Repository, problem: str | None
) -> tuple[Repository, dict[str, datetime]]:
    """The repository with its untagged manifests read, and each one's link mtime."""
    try:
        if problem is not None:
            raise StorageReadError(f"cannot list untagged manifests: {problem}")
        linked = _revisions(root, repository.name)
        for digest in _reachable(repository):
            linked.pop(digest, None)
        wanted = sorted(d for d in linked if d not in repository.manifests)
        found = read_manifests(root, repository.name, wanted)
    except (StorageReadError, InvalidManifest) as exc:
        error = " ".join(f"{repository.name}: untagged manifests: {exc}".split())
        log.warning("repository not fully read", repository=repository.name, error=error)
        return replace(repository, error=error), {}
    manifests = {**repository.manifests, **found}
    return replace(repository, manifests=manifests), linked


def _dated(
    repository: Repository,
    linked: Mapping[str, datetime],
    seen: Mapping[str, datetime],
    now: datetime,
) -> Repository:
    untagged = tuple(
        UntaggedManifest(digest, linked=linked[digest], since=seen.get(digest, now))
        for digest in sorted(linked)
    )
    return replace(repository, untagged=untagged)


def _revisions(root: Path, repository: str) -> dict[str, datetime]:
    """digest -> its revision link's mtime, for every manifest stored in ``repository``.

    A directory without a link is a manifest deleted through the API (2.8 removes the link
    and leaves the directory): not stored any more. A link that is not its digest fails the
    repository, as the storage scan does.
    """
    base = root / V2 / "repositories" / repository / "_manifests" / "revisions" / _ALGORITHM
    try:
        names = sorted(entry.name for entry in os.scandir(base) if entry.is_dir())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StorageReadError(f"cannot list {base}: {exc.strerror}") from exc
    found: dict[str, datetime] = {}
    for name in names:
        digest = f"{_ALGORITHM}:{name}"
        moment = _link_time(base / name / "link", digest)
        if moment is not None:
            found[digest] = moment
    return found


def _link_time(path: Path, digest: str) -> datetime | None:
    try:
        content = path.read_bytes()[: len(digest) + 1]
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageReadError(f"manifest {digest}: cannot read {path}: {exc.strerror}") from exc
    if content != digest.encode():
        raise StorageReadError(f"manifest {digest}: {path} holds {content[:80]!r}, not its digest")
    return datetime.fromtimestamp(mtime, UTC)


def _reachable(repository: Repository) -> set[str]:
    """Every digest a tag names, and every manifest below those (children of indexes)."""
    reached: set[str] = set()
    stack = [tag.digest for tag in repository.tags]
    while stack:
        digest = stack.pop()
        if digest in reached:
            continue
        reached.add(digest)
        manifest: Manifest | None = repository.manifests.get(digest)
        if manifest is not None:
            stack.extend(manifest.children)
    return reached
