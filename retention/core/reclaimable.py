"""Bytes a plan frees: blobs only deleted manifests reference, counted registry-wide.

Blobs are shared across repositories in the storage, so a layer counts only if no kept
manifest anywhere (or any manifest of a repository we could not read) references it, and
a blob freed in two repositories counts once. That needs every blob digest seen until the
last repository is planned: a set of digest strings costs about 200 bytes per blob (two
per tag at least, its manifest and its config), so they are kept as 32 raw bytes each (and
8 for a size: the parser accepts none below 0 or above 2**64) in bytearrays, split by the
digest's first byte. The total is then counted
one split at a time, with sets a 256th of the size. Digests that are not sha256 (rare)
stay strings.
"""

from __future__ import annotations

from array import array

from retention.core.model import Manifest, Repository, RepositoryPlan

_SHA256 = "sha256:"
_KEY_BYTES = 32
_DIGEST_LENGTH = len(_SHA256) + 2 * _KEY_BYTES
_SIZE_BYTES = 8
_SPLITS = 256


class Reclaimable:
    """``add`` each repository with its plan, in any order; ``total`` once at the end."""

    def __init__(self) -> None:
        self._kept = [bytearray() for _ in range(_SPLITS)]
        self._freed = [bytearray() for _ in range(_SPLITS)]  # key, then size
        self._kept_other: set[str] = set()
        self._freed_other: dict[str, int] = {}

    def add(self, repository: Repository, repository_plan: RepositoryPlan) -> None:
        """What this repository keeps and frees; the repository may be dropped afterwards."""
        deleted = set(repository_plan.deletions.column("digest"))
        freed: dict[str, int] = {}
        kept: set[str] = set()
        for digest, manifest in repository.manifests.items():
            if digest in deleted:
                freed.update(_stored_blobs(manifest))
            else:
                kept.update(blob for blob, _ in _stored_blobs(manifest))
        self._add_freed(freed)
        self._add_kept(kept)

    def _add_freed(self, freed: dict[str, int]) -> None:
        keys = _keys(list(freed))
        if keys is None:  # one is not lowercase sha256: each alone
            for blob, size in freed.items():
                key = _key(blob)
                if key is None:
                    self._freed_other[blob] = size
                else:
                    self._freed[key[0]] += key + size.to_bytes(_SIZE_BYTES, "little")
            return
        sizes = array("Q", freed.values()).tobytes()
        for at in range(len(freed)):
            key = keys[_KEY_BYTES * at : _KEY_BYTES * (at + 1)]
            self._freed[key[0]] += key + sizes[_SIZE_BYTES * at : _SIZE_BYTES * (at + 1)]

    def _add_kept(self, kept: set[str]) -> None:
        blobs = list(kept)
        keys = _keys(blobs)
        if keys is None:  # one is not lowercase sha256: each alone
            for blob in blobs:
                key = _key(blob)
                if key is None:
                    self._kept_other.add(blob)
                else:
                    self._kept[key[0]] += key
            return
        for at in range(0, len(keys), _KEY_BYTES):
            self._kept[keys[at]] += keys[at : at + _KEY_BYTES]

    def total(self) -> int:
        """Freed bytes no kept manifest references; a blob freed twice has one size (the
        last one seen, as a manifest may state a wrong one)."""
        other = sum(s for b, s in self._freed_other.items() if b not in self._kept_other)
        return other + sum(self._split_total(split) for split in range(_SPLITS))

    def _split_total(self, split: int) -> int:
        data = bytes(self._kept[split])
        kept = {data[at : at + _KEY_BYTES] for at in range(0, len(data), _KEY_BYTES)}
        data, width = bytes(self._freed[split]), _KEY_BYTES + _SIZE_BYTES
        freed = {  # the last size of a key wins, as in a dict updated in that order
            data[at : at + _KEY_BYTES]: data[at + _KEY_BYTES : at + width]
            for at in range(0, len(data), width)
        }
        return sum(int.from_bytes(size, "little") for key, size in freed.items() if key not in kept)


def _stored_blobs(manifest: Manifest) -> list[tuple[str, int]]:
    """The manifest's own bytes and its config and layers, as the storage holds them."""
    return [(manifest.digest, manifest.size)] + [(b.digest, b.size) for b in manifest.blobs]


def _keys(digests: list[str]) -> bytes | None:
    """The 32 bytes of every digest, one after the other, decoded as one string; None
    when one is not ``sha256:`` and 64 lowercase hex digits (the caller goes one by one)."""
    if set(map(len, digests)) - {_DIGEST_LENGTH}:
        return None
    if {digest[: len(_SHA256)] for digest in digests} - {_SHA256}:
        return None
    hexes = "".join([digest[len(_SHA256) :] for digest in digests])
    try:
        keys = bytes.fromhex(hexes)
    except ValueError:
        return None
    return keys if keys.hex() == hexes else None


def _key(digest: str) -> bytes | None:
    if len(digest) != _DIGEST_LENGTH or not digest.startswith(_SHA256):
        return None
    hexes = digest[len(_SHA256) :]
    try:
        key = bytes.fromhex(hexes)
    except ValueError:
        return None
    return key if key.hex() == hexes else None
