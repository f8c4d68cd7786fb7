"""Look up the subjects of artifact tags that no tag names, before calling anything an orphan.

A signature's image may be untagged yet present (pushed by digest, or the platform of an
index): the scan only reaches manifests through tags, so without this check such a
signature would look orphaned and ``artifacts.delete_orphans`` would delete it. Reads only.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from retention.core.artifacts import attachments
from retention.core.model import Inventory, Manifest, Repository
from retention.errors import NotFound, RegistryError
from retention.registry import RegistryClient, parse_manifest


async def confirm_subjects(client: RegistryClient, inventory: Inventory) -> Inventory:
    """The inventory with every present-but-untagged subject added to its repository."""
    found = await asyncio.gather(*(confirm_repository(client, r) for r in inventory.repositories))
    return replace(inventory, repositories=tuple(found))


async def confirm_repository(client: RegistryClient, repository: Repository) -> Repository:
    """One repository with its present-but-untagged subjects added: for a pass that plans
    each repository as it is scanned."""
    if repository.error is not None:
        return repository
    unknown = sorted(
        {a.subject for a in attachments(repository).values()} - set(repository.manifests)
    )
    if not unknown:
        return repository
    try:
        found = await asyncio.gather(*(_lookup(client, repository.name, d) for d in unknown))
    except RegistryError as exc:
        return replace(repository, error=f"could not look up a signed image: {exc}")
    extra = {m.digest: m for m in found if m is not None}
    return replace(repository, manifests={**repository.manifests, **extra})


async def _lookup(client: RegistryClient, repository: str, digest: str) -> Manifest | None:
    try:
        fetched = await client.manifest(repository, digest)
    except NotFound:
        return None
    manifest, _config = parse_manifest(fetched)
    return manifest
