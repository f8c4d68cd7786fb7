"""Turn manifest and config bytes into model values; no I/O.

This is where registry JSON meets the model, so that the inventory never touches a manifest
body and can drop it as soon as it is parsed. Anything we cannot read with certainty is an
``InvalidManifest``: a repository holding one is skipped rather than guessed at.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from retention.core.model import Blob, Manifest
from retention.errors import InvalidManifest
from retention.registry import media_types
from retention.registry.client import FetchedManifest

_SUPPORTED = {name: name for name in media_types.IMAGE_MANIFESTS | media_types.INDEXES}

BlobTable = dict[tuple[str, int], Blob]
"""Equal blobs as one object, keyed by digest and size: a base layer referenced by 100,000
images is one ``Blob``, not 100,000. The key is a plain tuple so that a layer already seen
costs a dict lookup, not a ``Blob`` built and hashed in Python to find its twin."""


class ParsedManifest(NamedTuple):
    """A manifest parsed once, not yet a ``Manifest``: its created time lives in its config
    (or its children), read after it, so the one ``Manifest`` is built with it (``built``)
    rather than built empty and copied with the time (what a frozen value would need)."""

    digest: str
    media_type: str
    size: int
    blobs: tuple[Blob, ...]
    children: tuple[str, ...]
    subject: str | None
    config: str | None

    def built(self, created: datetime | None) -> Manifest:
        return Manifest(
            digest=self.digest,
            media_type=self.media_type,
            size=self.size,
            created=created,
            blobs=self.blobs,
            children=self.children,
            subject=self.subject,
        )


def parse_manifest(
    fetched: FetchedManifest, shared: BlobTable | None = None
) -> tuple[Manifest, str | None]:
    """The manifest as the planner sees it, and its config digest if it is an image.

    ``created`` is left empty: for callers that need the manifest's structure only (its
    children, its subject). A scan, which dates every manifest, uses ``parse_parts``.
    """
    parsed = parse_parts(fetched, shared)
    return parsed.built(None), parsed.config


def parse_parts(fetched: FetchedManifest, shared: BlobTable | None = None) -> ParsedManifest:
    """The manifest's parts and its config digest (None for an index), the bytes parsed once.

    The caller reads the config (or the children of an index) once per distinct digest and
    builds the ``Manifest`` with that created time. ``shared`` interns equal blobs across
    the manifests it is passed with.
    """
    document = _document(fetched)
    media_type = _media_type(fetched, document)
    subject = _subject(fetched, document)
    size = len(fetched.body)
    if media_type in media_types.INDEXES:
        children = tuple(_digest(fetched, entry) for entry in _list(fetched, document, "manifests"))
        return ParsedManifest(fetched.digest, media_type, size, (), children, subject, None)
    table: BlobTable = {} if shared is None else shared
    config = _blob(fetched, document.get("config"), table)
    layers = [_blob(fetched, entry, table) for entry in _list(fetched, document, "layers")]
    blobs = (config, *layers)
    return ParsedManifest(fetched.digest, media_type, size, blobs, (), subject, config.digest)


def parse_created(config: bytes) -> datetime | None:
    """The image config's ``created`` as an aware UTC time, or None when it cannot be trusted.

    Docker writes RFC 3339 with nanoseconds and ``Z``; Python keeps microseconds. A missing,
    unparseable or Go zero (``0001-01-01``, meaning "unset") value gives None, so the planner
    treats the age as unknown instead of as two thousand years.
    """
    try:
        value = orjson.loads(config).get("created")
        created = datetime.fromisoformat(value)
    except (ValueError, TypeError, AttributeError):
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)  # RFC 3339 needs an offset; Docker's is UTC
    if created.year <= 1:
        return None
    return created.astimezone(UTC)


def _invalid(fetched: FetchedManifest, why: str) -> InvalidManifest:
    return InvalidManifest(f"manifest {fetched.digest} {why}")


def _document(fetched: FetchedManifest) -> dict[str, Any]:
    try:
        document = orjson.loads(fetched.body)
    except (ValueError, UnicodeDecodeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise _invalid(fetched, f"is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise _invalid(fetched, "is not a JSON object")
    if document.get("schemaVersion") == 1:
        raise _invalid(fetched, "is a Docker schema 1 manifest, which is not supported")
    return document


def _media_type(fetched: FetchedManifest, document: dict[str, Any]) -> str:
    """The served Content-Type, or the body's ``mediaType`` when the header was generic.

    Bytes read from storage come with no Content-Type (``""``); without a ``mediaType``
    either, they are what Distribution would serve them as (``manifeststore.go``): an OCI
    index when they list ``manifests``, else an OCI image manifest. The constant itself is
    returned, so 100,000 manifests share one string.
    """
    for candidate in (fetched.media_type, document.get("mediaType")):
        if isinstance(candidate, str):
            media_type = media_types.bare(candidate)
            if media_type in media_types.SCHEMA1:
                raise _invalid(fetched, "is a Docker schema 1 manifest, which is not supported")
            if media_type in _SUPPORTED:
                return _SUPPORTED[media_type]
    if not fetched.media_type and "mediaType" not in document:
        if document.get("manifests") is not None:
            return media_types.OCI_INDEX
        return media_types.OCI_MANIFEST
    raise _invalid(fetched, f"has an unsupported media type {fetched.media_type!r}")


def _list(fetched: FetchedManifest, document: dict[str, Any], key: str) -> list[Any]:
    value = document.get(key)
    if not isinstance(value, list):
        raise _invalid(fetched, f"has no {key!r} list")
    return value


def _digest(fetched: FetchedManifest, descriptor: Any) -> str:
    digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
    if not isinstance(digest, str) or ":" not in digest:
        raise _invalid(fetched, f"has a descriptor without a digest: {descriptor!r}")
    return digest


def _blob(fetched: FetchedManifest, descriptor: Any, shared: BlobTable) -> Blob:
    digest = _digest(fetched, descriptor)
    size = descriptor.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(fetched, f"has a descriptor without a valid size: {descriptor!r}")
    blob = shared.get((digest, size))
    if blob is None:
        blob = shared[digest, size] = Blob(digest=digest, size=size)
    return blob


def _subject(fetched: FetchedManifest, document: dict[str, Any]) -> str | None:
    """The OCI 1.1 ``subject`` a signature or SBOM points at; Distribution 2.8 ignores it."""
    subject = document.get("subject")
    return None if subject is None else _digest(fetched, subject)
