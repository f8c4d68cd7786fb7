"""Turn manifest and config bytes into model values; no I/O.

This is where registry JSON meets the model, so that the inventory never touches a manifest
body and can drop it as soon as it is parsed. Anything we cannot read with certainty is an
``InvalidManifest``: a repository holding one is skipped rather than guessed at.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from retention.core.model import Blob, Manifest
from retention.errors import InvalidManifest
from retention.registry import media_types
from retention.registry.client import FetchedManifest

_SUPPORTED = {name: name for name in media_types.IMAGE_MANIFESTS | media_types.INDEXES}


def parse_manifest(
    fetched: FetchedManifest, shared: dict[Blob, Blob] | None = None
) -> tuple[Manifest, str | None]:
    """The manifest as the planner sees it, and its config digest if it is an image.

    ``created`` is left empty: it lives in the config blob (or in the children of an index),
    which the caller fetches once per distinct digest. ``shared`` interns equal blobs across
    manifests (a base layer referenced by 100,000 images is one object, not 100,000).
    """
    document = _document(fetched)
    media_type = _media_type(fetched, document)
    subject = _subject(fetched, document)
    if media_type in media_types.INDEXES:
        children = tuple(_digest(fetched, entry) for entry in _list(fetched, document, "manifests"))
        return _manifest(fetched, media_type, subject, children=children), None
    config = _blob(fetched, document.get("config"))
    layers = tuple(_blob(fetched, entry) for entry in _list(fetched, document, "layers"))
    if shared is not None:
        config = shared.setdefault(config, config)
        layers = tuple(shared.setdefault(layer, layer) for layer in layers)
    return _manifest(fetched, media_type, subject, blobs=(config, *layers)), config.digest


def dated(manifest: Manifest, created: datetime | None) -> Manifest:
    """The manifest with its created time: ``dataclasses.replace`` costs five times this."""
    return Manifest(
        digest=manifest.digest,
        media_type=manifest.media_type,
        size=manifest.size,
        created=created,
        blobs=manifest.blobs,
        children=manifest.children,
        subject=manifest.subject,
    )


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


def _manifest(
    fetched: FetchedManifest,
    media_type: str,
    subject: str | None,
    *,
    blobs: tuple[Blob, ...] = (),
    children: tuple[str, ...] = (),
) -> Manifest:
    return Manifest(
        digest=fetched.digest,
        media_type=media_type,
        size=len(fetched.body),
        blobs=blobs,
        children=children,
        subject=subject,
    )


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


def _blob(fetched: FetchedManifest, descriptor: Any) -> Blob:
    digest = _digest(fetched, descriptor)
    size = descriptor.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(fetched, f"has a descriptor without a valid size: {descriptor!r}")
    return Blob(digest=digest, size=size)


def _subject(fetched: FetchedManifest, document: dict[str, Any]) -> str | None:
    """The OCI 1.1 ``subject`` a signature or SBOM points at; Distribution 2.8 ignores it."""
    subject = document.get("subject")
    return None if subject is None else _digest(fetched, subject)
