"""Digests: how a body is named and checked (``sha256:<hex>``), nothing else."""

from __future__ import annotations

import hashlib
import re

_DIGEST = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def is_digest(reference: str) -> bool:
    """True for ``algorithm:hex`` references; tags cannot contain a colon."""
    return _DIGEST.fullmatch(reference) is not None


# The constructors themselves: ``hashlib.new(name)`` looks the name up on every call.
_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


def digest_matches(digest: str, data: bytes) -> bool:
    """Whether ``data`` hashes to ``digest``; unknown algorithms never match (fail closed)."""
    algorithm, _, expected = digest.partition(":")
    hash_function = _HASHES.get(algorithm)
    return hash_function is not None and hash_function(data).hexdigest() == expected
