"""Registry answers turned into values or domain errors: the one translation point.

Every httpx response and transport failure ends here: bodies are read with a size limit,
listings and manifests are checked (a digest that does not match is ``InvalidManifest``),
and every unexpected status or dropped connection becomes a ``retention.errors`` exception
with method, URL (never with credentials), status and the registry's own error code.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from retention.errors import (
    AuthenticationError,
    DeleteDisabled,
    InvalidManifest,
    NotFound,
    RegistryError,
    RegistryUnreachable,
    WriteRefused,
)
from retention.registry.auth import public_url
from retention.registry.digests import digest_matches, is_digest, sha256_digest
from retention.registry.retry import RETRY_STATUSES
from retention.registry.tls import tls_failure, tls_message

_DELETE_DISABLED_HINT = (
    "the registry refuses deletes; set storage.delete.enabled: true "
    "(or REGISTRY_STORAGE_DELETE_ENABLED=true) in the registry's config"
)


@dataclass(frozen=True)
class Reply:
    """A fully read response, so nothing streaming or httpx-shaped outlives the exchange."""

    method: str
    url: httpx.URL
    status: int
    headers: httpx.Headers
    body: bytes
    next_url: httpx.URL | None


async def read_limited(response: httpx.Response, limit: int) -> bytes:
    """Read a body, refusing one larger than ``limit`` before and while it arrives.

    A HEAD answer has no body: its Content-Length is the size of what a GET would send
    (a multi-GB layer, say), which is no reason to refuse it.
    """
    if response.request.method == "HEAD":
        return b""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(response, limit)
    if response.is_stream_consumed:  # read by the transport already (transport.py)
        if len(response.content) > limit:
            raise _too_large(response, limit)
        return response.content
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > limit:
            raise _too_large(response, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(response: httpx.Response, limit: int) -> RegistryError:
    return RegistryError(
        f"response larger than {limit} bytes",
        method=response.request.method,
        url=public_url(response.url),
        status=response.status_code,
    )


def next_url(response: httpx.Response) -> httpx.URL | None:
    """The ``rel="next"`` link, resolved against the request (Distribution sends it relative)."""
    link = response.links.get("next", {}).get("url")
    return None if not link else response.url.join(link)


def listed_names(reply: Reply, key: str) -> list[str]:
    """The list under ``key`` in a catalog or tag listing; ``null`` means empty."""
    try:
        value = json.loads(reply.body).get(key)
    except (ValueError, AttributeError) as exc:
        raise reply_error(RegistryError, reply, f"answer is not a JSON object: {exc}") from exc
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise reply_error(RegistryError, reply, f"{key!r} is not a list of names")
    return value


def verified_manifest_digest(reply: Reply, reference: str) -> str:
    """The digest the body must hash to: the server's header, else the digest we asked for.

    A tag fetched from a registry that sends no header leaves nothing to check against; then
    the digest is the body's own hash, which is what the registry stores it under.
    """
    served = reply.headers.get("docker-content-digest")
    requested = reference if is_digest(reference) else None
    if served and requested and served != requested:
        raise reply_error(InvalidManifest, reply, f"asked for {requested}, served {served}")
    expected = served or requested or sha256_digest(reply.body)
    if not digest_matches(expected, reply.body):
        raise reply_error(InvalidManifest, reply, f"manifest body does not match {expected}")
    return expected


def reply_error(kind: type[RegistryError], reply: Reply, message: str) -> RegistryError:
    return kind(message, method=reply.method, url=public_url(reply.url), status=reply.status)


def unreachable(
    request: httpx.Request, exc: httpx.TransportError | ssl.SSLError, attempts: int
) -> RegistryError:
    tls = tls_failure(exc)
    if tls is not None:
        return RegistryUnreachable(
            tls_message(tls), method=request.method, url=public_url(request.url)
        )
    cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return RegistryUnreachable(
        f"no answer from the registry after {attempts} attempt(s): {cause}",
        method=request.method,
        url=public_url(request.url),
    )


def status_error(reply: Reply, has_credentials: bool = True) -> RegistryError:
    """The domain error for an unexpected status, with the registry's own code and message."""
    code, detail = _registry_error_code(reply.body)
    kind, summary = _classify(reply.method, reply.status, code)
    if reply.status == 401 and not has_credentials:
        summary = NO_CREDENTIALS
    message = f"{summary}: {detail}" if detail else summary
    url = public_url(reply.url)
    return kind(message, method=reply.method, url=url, status=reply.status, code=code)


NO_CREDENTIALS = (
    "the registry requires authentication and no credentials are configured: set "
    "registry.username with registry.password (or password_file), or credentials: docker"
)


def _classify(method: str, status: int, code: str | None) -> tuple[type[RegistryError], str]:
    if status == 401:
        return AuthenticationError, "the registry refused our credentials"
    if status == 403:
        return AuthenticationError, "the registry denied access"
    if status == 404:
        return NotFound, "not found"
    if status == 405 and method == "DELETE":
        if code is None:  # read-only maintenance mode answers 405 in plain text
            return DeleteDisabled, _DELETE_DISABLED_HINT + ", and that it is not read-only"
        return DeleteDisabled, _DELETE_DISABLED_HINT
    if status == 405 and method in {"POST", "PUT", "PATCH"}:
        return WriteRefused, "the registry refuses writes (read-only maintenance mode?)"
    if status in RETRY_STATUSES:
        return RegistryError, f"the registry answered {status} on every attempt"
    return RegistryError, f"unexpected answer {status}"


def _registry_error_code(body: bytes) -> tuple[str | None, str | None]:
    """The first ``{"errors": [{"code", "message"}]}`` entry, if the body has one."""
    try:
        first: Any = json.loads(body)["errors"][0]
        code, message = first.get("code"), first.get("message")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else None,
    )
