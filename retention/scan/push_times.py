"""When was each tag last pushed? Read from the filesystem backend, where that is possible.

The registry API has no push time. On Distribution's filesystem driver every push of a tag
rewrites ``repositories/<name>/_manifests/tags/<tag>/current/link``, so its mtime is the
last push. Used only for ``safety.grace_period``: a tag pushed minutes ago must survive even
if its image was built years ago. Reads only; when the storage is not on this host the
times stay unknown and the grace period falls back to the image's created time.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from retention.core.model import Inventory, Repository, Tag

REPOSITORIES = Path("docker/registry/v2/repositories")


def with_push_times(inventory: Inventory, root: Path) -> Inventory:
    """The inventory with ``Tag.pushed`` filled in where the link file can be read."""
    base = root / REPOSITORIES
    if not base.is_dir():
        return inventory
    return replace(
        inventory, repositories=tuple(_repository(base, r) for r in inventory.repositories)
    )


def _repository(base: Path, repository: Repository) -> Repository:
    tags_dir = base / repository.name / "_manifests" / "tags"
    return replace(repository, tags=tuple(_tag(tags_dir, t) for t in repository.tags))


def _tag(tags_dir: Path, tag: Tag) -> Tag:
    try:
        mtime = (tags_dir / tag.name / "current" / "link").stat().st_mtime
    except OSError:
        return tag
    return replace(tag, pushed=datetime.fromtimestamp(mtime, UTC))
