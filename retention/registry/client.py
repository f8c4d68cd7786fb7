"""The registry's HTTP API (Distribution v2), and the only sender of httpx requests.

It owns what every exchange needs so callers do not have to: the four manifest media types
in ``Accept`` (anything less and a tag resolves to a digest the registry never stored),
bounded concurrency, explicit timeouts, retries with backoff on overload and dropped
connections, ``Link`` pagination, digest verification, and the translation of every failure
into a ``retention.errors`` exception with method, URL, status and the registry's error code.
Authentication is an ``httpx.Auth`` flow (``auth.py``) that ``dispatch.py`` runs around
the transport (``transport.py``), credentials come from ``credentials.py``, TLS from
``tls.py``; retries and backoff are ``retry.py``, and every answer becomes a value or a
domain error in ``replies.py``. This module holds the resources (catalog, tags,
manifests, blobs, uploads) and the one request loop.

It must not decide anything: which tag to delete is the planner's business. And no httpx
type may leave this package; callers see model values, bytes, str and our exceptions.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from types import TracebackType

import httpx

from retention import __version__
from retention.core.policy import RegistrySettings
from retention.errors import (
    InvalidManifest,
    RegistryError,
)
from retention.registry import credentials, media_types
from retention.registry.auth import Clock, RegistryAuth, public_url
from retention.registry.digests import digest_matches, is_digest, sha256_digest
from retention.registry.dispatch import Dispatcher
from retention.registry.replies import (
    Reply,
    listed_names,
    next_url,
    read_limited,
    reply_error,
    status_error,
    unreachable,
    verified_manifest_digest,
)
from retention.registry.retry import RETRY_STATUSES, backoff_seconds
from retention.registry.tls import public_trust, tls_context, tls_failure
from retention.registry.transport import Http1Transport

Sleep = Callable[[float], Awaitable[None]]

# Dropped or stalled connections are worth another try; a bad URL or a proxy refusing us is not.
_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Distribution refuses manifests above 4 MiB; listings of many tags can be larger.
MANIFEST_LIMIT_BYTES = 4 * 1024 * 1024
_LISTING_LIMIT_BYTES = 64 * 1024 * 1024
_ACCEPT_MANIFESTS = {"Accept": media_types.MANIFEST_ACCEPT}

READY_POLL_S = 0.2  # between pings while a registry starts


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest body as served, with the digest it was verified against."""

    digest: str
    media_type: str
    body: bytes


class RegistryClient:
    """One registry, spoken to through a bounded pool; use as ``async with``."""

    def __init__(
        self,
        settings: RegistrySettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        """Read credentials and TLS files now: a missing one is a ``ConfigError`` naming its key.

        ``clock`` (monotonic seconds) decides when cached tokens expire; tests inject it.
        """
        self._settings = settings
        self._sleep = sleep
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        found = credentials.resolve(settings)
        self._has_credentials = found is not None
        verify = tls_context(settings)
        self._auth = RegistryAuth(found, registry_url=settings.base_url, clock=clock)
        self._dispatcher = Dispatcher(transport or Http1Transport(_trust(verify)), self._auth)
        self._base = public_url(httpx.URL(settings.base_url)).rstrip("/") + "/"
        timeout = httpx.Timeout(settings.timeout.total_seconds())
        self._extensions = {"timeout": timeout.as_dict()}
        self._default_headers = httpx.Headers(
            {
                "Accept": "*/*",
                "Accept-Encoding": "gzip, deflate",  # what httpx sends, and decodes
                "Connection": "keep-alive",
                "User-Agent": f"retention/{__version__}",
            }
        )
        self._header_sets: dict[frozenset[tuple[str, str]], httpx.Headers] = {}

    def _headers(self, extra: dict[str, str] | None) -> httpx.Headers:
        """The client's headers with ``extra``, merged once per distinct set, not per request.

        With ``_base`` and ``_extensions``, this is what ``build_request`` would redo for every
        request (parse and join the URL twice, merge headers and timeouts): a few percent of a
        request's client CPU. ``httpx.Request`` copies the headers it is given, so the auth
        flow's ``Authorization`` never lands in these shared sets.
        """
        key = frozenset(extra.items()) if extra else frozenset()
        merged = self._header_sets.get(key)
        if merged is None:
            merged = self._default_headers.copy()
            merged.update(extra or {})
            self._header_sets[key] = merged
        return merged

    @property
    def url(self) -> str:
        """The registry's base URL without credentials, for reports and inventories."""
        return public_url(httpx.URL(self._settings.base_url))

    @property
    def concurrency(self) -> int:
        """How many requests may be in flight; callers size their own fan-out by it."""
        return self._settings.concurrency

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._dispatcher.aclose()

    async def ping(self) -> None:
        """Fail early, and clearly, on a wrong URL or wrong credentials."""
        await self._request("GET", "/v2/", expect={200})

    async def wait_until_up(
        self, timeout_s: float, *, alive: Callable[[], bool] = lambda: True
    ) -> None:
        """Ping until ``/v2/`` answers: after a registry (re)starts, nothing may go sooner.

        The one such loop, shared by GC restarts and the demo. Raises the last
        ``RegistryError`` once ``timeout_s`` has passed, or at once when ``alive()`` says
        the process being waited for has gone.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.ping()
                return
            except RegistryError:
                if time.monotonic() >= deadline or not alive():
                    raise
            await asyncio.sleep(READY_POLL_S)

    async def catalog(self) -> list[str]:
        """Every repository name, page after page (Distribution serves 100 per page)."""
        return await self._paged("/v2/_catalog", "repositories")

    async def tags(self, repository: str) -> list[str]:
        """Every tag of a repository; an emptied repository answers ``"tags": null``."""
        return await self._paged(f"/v2/{repository}/tags/list", "tags")

    async def resolve(self, repository: str, reference: str) -> tuple[str, str]:
        """The (digest, media type) a tag or digest points at, by a cheap HEAD."""
        reply = await self._request(
            "HEAD", _manifest_path(repository, reference), expect={200}, headers=_ACCEPT_MANIFESTS
        )
        digest = reply.headers.get("docker-content-digest")
        if digest is None:
            fetched = await self.manifest(repository, reference)
            return fetched.digest, fetched.media_type
        if not is_digest(digest):
            raise reply_error(InvalidManifest, reply, f"malformed digest header {digest!r}")
        return digest, media_types.bare(reply.headers.get("content-type", ""))

    async def manifest(self, repository: str, reference: str) -> FetchedManifest:
        """The manifest body, refused unless it hashes to the digest we were told."""
        reply = await self._request(
            "GET",
            _manifest_path(repository, reference),
            expect={200},
            headers=_ACCEPT_MANIFESTS,
            limit=MANIFEST_LIMIT_BYTES,
        )
        digest = verified_manifest_digest(reply, reference)
        return FetchedManifest(
            digest=digest,
            media_type=media_types.bare(reply.headers.get("content-type", "")),
            body=reply.body,
        )

    async def blob(
        self, repository: str, digest: str, *, max_bytes: int = 4 * 1024 * 1024
    ) -> bytes:
        """A small blob (an image config); storage backends may redirect to S3 and the like."""
        reply = await self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            expect={200},
            limit=max_bytes,
            follow_redirects=True,
        )
        if not digest_matches(digest, reply.body):
            raise reply_error(RegistryError, reply, f"blob does not match its digest {digest}")
        return reply.body

    async def blob_exists(self, repository: str, digest: str) -> bool:
        reply = await self._request("HEAD", f"/v2/{repository}/blobs/{digest}", expect={200, 404})
        return reply.status == 200

    async def delete_manifest(self, repository: str, digest: str) -> bool:
        """Delete a manifest and every tag on it: True if deleted, False if already gone.

        Only digests are accepted: Distribution 3 would take a tag and merely untag it.
        """
        if not is_digest(digest):
            raise ValueError(f"delete_manifest needs a digest, not {digest!r}")
        reply = await self._request("DELETE", _manifest_path(repository, digest), expect={202, 404})
        return reply.status == 202

    async def put_manifest(
        self, repository: str, reference: str, body: bytes, media_type: str
    ) -> str:
        """Store a manifest under a tag or digest; returns its digest."""
        reply = await self._request(
            "PUT",
            _manifest_path(repository, reference),
            expect={201},
            headers={"Content-Type": media_type},
            content=body,
        )
        return reply.headers.get("docker-content-digest") or sha256_digest(body)

    async def upload_blob(self, repository: str, data: bytes) -> str:
        """Monolithic upload (POST, then PUT with the digest); returns the digest."""
        digest = sha256_digest(data)
        started = await self._request("POST", f"/v2/{repository}/blobs/uploads/", expect={202})
        location = started.headers.get("location")
        if not location:
            raise reply_error(RegistryError, started, "upload started without a Location")
        # The Location carries _state=...; httpx 0.28's params= would replace it, so merge.
        target = started.url.join(location).copy_merge_params({"digest": digest})
        await self._request(
            "PUT",
            target,
            expect={201},
            headers={"Content-Type": "application/octet-stream"},
            content=data,
        )
        return digest

    async def _paged(self, path: str, key: str) -> list[str]:
        """Follow ``Link: <...>; rel="next"`` until it is absent, refusing to loop."""
        names: dict[str, None] = {}
        seen: set[httpx.URL] = set()
        url: str | httpx.URL | None = path
        while url is not None:
            reply = await self._request("GET", url, expect={200}, limit=_LISTING_LIMIT_BYTES)
            names.update(dict.fromkeys(listed_names(reply, key)))
            seen.add(reply.url)
            url = reply.next_url
            if url in seen:
                raise reply_error(RegistryError, reply, f"pagination loops back to {url}")
        return list(names)

    async def _request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        expect: Collection[int],
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        limit: int = MANIFEST_LIMIT_BYTES,
        follow_redirects: bool = False,
    ) -> Reply:
        """One logical exchange: retried, and raised as our error unless ``expect``-ed."""

        target = url if isinstance(url, httpx.URL) else httpx.URL(self._base + url.lstrip("/"))
        merged = self._headers(headers)

        def build() -> httpx.Request:
            return httpx.Request(
                method, target, headers=merged, content=content, extensions=self._extensions
            )

        try:
            reply = await self._with_retries(build, limit, follow_redirects)
        except (httpx.RequestError, httpx.InvalidURL) as exc:  # redirect loops, bad Link URLs
            raise RegistryError(f"the exchange failed: {exc}", method=method, url=str(url)) from exc
        if reply.status not in expect:
            raise status_error(reply, self._has_credentials)
        return reply

    async def _with_retries(
        self, build: Callable[[], httpx.Request], limit: int, follow_redirects: bool
    ) -> Reply:
        """Send, and again after a backoff on overload or a dropped connection."""
        for attempt in range(self._settings.retries + 1):
            request = build()
            final = attempt == self._settings.retries
            try:
                reply = await self._send_once(request, limit, follow_redirects)
            except _RETRYABLE_ERRORS as exc:
                if final or tls_failure(exc) is not None:  # a certificate does not heal
                    raise unreachable(request, exc, attempt + 1) from exc
                await self._sleep(backoff_seconds(attempt))
                continue
            except (httpx.TransportError, ssl.SSLError) as exc:
                # httpcore maps TLS errors of the handshake but not a TLS 1.3 alert that
                # arrives with the first read, such as a refused client certificate.
                raise unreachable(request, exc, attempt + 1) from exc
            if reply.status not in RETRY_STATUSES or final:
                return reply
            await self._sleep(backoff_seconds(attempt, reply.headers.get("retry-after")))
        raise AssertionError("unreachable: the last attempt always returns or raises")

    async def _send_once(self, request: httpx.Request, limit: int, follow_redirects: bool) -> Reply:
        """One HTTP request inside the concurrency bound, body read in full (up to ``limit``)."""
        async with self._semaphore:
            response = await self._dispatcher.send(request, follow_redirects=follow_redirects)
            try:
                body = await read_limited(response, limit)
            finally:
                await response.aclose()
        return Reply(
            method=request.method,
            url=response.url,
            status=response.status_code,
            headers=response.headers,
            body=body,
            next_url=next_url(response),
        )


def _trust(verify: ssl.SSLContext | bool) -> ssl.SSLContext:
    """The policy's TLS context, else certifi's public CAs, shared per process (``tls.py``)."""
    return verify if isinstance(verify, ssl.SSLContext) else public_trust()


def _manifest_path(repository: str, reference: str) -> str:
    return f"/v2/{repository}/manifests/{reference}"
