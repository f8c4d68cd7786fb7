"""Reclaimable bytes counted from packed digests equal the count over sets of strings."""

from __future__ import annotations

import hashlib
import random

from retention.core.model import (
    Blob,
    DeletionKind,
    Manifest,
    ManifestDeletion,
    Repository,
    RepositoryPlan,
)
from retention.core.reclaimable import Reclaimable

IMAGE = "application/vnd.oci.image.manifest.v1+json"


def sha256(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def repository(name: str, *manifests: Manifest, deleted: tuple[str, ...] = ()) -> tuple:
    """A repository and a plan deleting the manifests named by digest in ``deleted``."""
    scanned = Repository(name, manifests={m.digest: m for m in manifests})
    deletions = tuple(ManifestDeletion(d, DeletionKind.TAGGED, tags=("t",)) for d in deleted)
    return scanned, RepositoryPlan(name, deletions=deletions)


def manifest(name: str, size: int, *blobs: tuple[str, int]) -> Manifest:
    return Manifest(sha256(name), IMAGE, size, blobs=tuple(Blob(d, s) for d, s in blobs))


def total(*repositories: tuple) -> int:
    counted = Reclaimable()
    for scanned, planned in repositories:
        counted.add(scanned, planned)
    return counted.total()


def test_a_blob_kept_in_a_later_repository_is_not_reclaimable() -> None:
    layer = (sha256("layer"), 1000)
    first = manifest("first", 10, layer, (sha256("config-1"), 5))
    second = manifest("second", 20, layer, (sha256("config-2"), 7))

    assert total(repository("a", first, deleted=(first.digest,)), repository("b", second)) == (
        10 + 5
    )


def test_a_blob_freed_in_two_repositories_counts_once() -> None:
    layer = (sha256("layer"), 1000)
    first = manifest("first", 10, layer)
    second = manifest("second", 20, layer)

    assert total(
        repository("a", first, deleted=(first.digest,)),
        repository("b", second, deleted=(second.digest,)),
    ) == (10 + 20 + 1000)


def test_digests_that_are_not_lowercase_sha256_are_counted_as_strings() -> None:
    upper = "sha256:" + hashlib.sha256(b"u").hexdigest().upper()
    sha512 = "sha512:" + hashlib.sha512(b"x").hexdigest()
    short = "sha256:layer"  # as hand-written tests name them
    kept = manifest("kept", 1, (short, 100))
    going = manifest("going", 2, (upper, 30), (sha512, 40), (short, 100))

    assert total(repository("a", kept, going, deleted=(going.digest,))) == 2 + 30 + 40


def test_a_size_stated_twice_for_one_blob_counts_as_last_stated() -> None:
    first = manifest("first", 10, (sha256("layer"), 1000))
    second = manifest("second", 20, (sha256("layer"), 999))

    assert total(
        repository("a", first, deleted=(first.digest,)),
        repository("b", second, deleted=(second.digest,)),
    ) == (10 + 20 + 999)


def test_random_registries_give_the_total_sets_of_strings_give() -> None:
    """Blobs shared at random between repositories, some deleted, some kept."""
    chooser = random.Random(13)
    blobs = [(sha256(f"blob-{n}"), chooser.randrange(1, 10**9)) for n in range(300)]
    repositories, freed, kept = [], {}, set()
    for number in range(40):
        manifests = [
            manifest(f"{number}-{m}", 100 + m, *chooser.sample(blobs, 3)) for m in range(5)
        ]
        deleted = tuple(m.digest for m in manifests if chooser.random() < 0.6)
        repositories.append(repository(f"r{number}", *manifests, deleted=deleted))
        for m in manifests:
            stored = [(m.digest, m.size), *((b.digest, b.size) for b in m.blobs)]
            if m.digest in deleted:
                freed.update(stored)
            else:
                kept.update(digest for digest, _ in stored)

    expected = sum(size for digest, size in freed.items() if digest not in kept)
    assert expected > 0 and total(*repositories) == expected
