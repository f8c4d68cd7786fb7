"""The registry's HTTP API (Distribution v2), and the only holder of an httpx client.

It owns what every exchange needs so callers do not have to: the four manifest media types
in ``Accept`` (anything less and a tag resolves to a digest the registry never stored),
bounded concurrency, explicit timeouts, retries with backoff on overload and dropped
connections, ``Link`` pagination, digest verification, and the translation of every failure
into a ``retention.errors`` exception with method, URL, status and the registry's error code.
Authentication is an ``httpx.Auth`` flow (``auth.py``), credentials come from
``credentials.py``, and TLS is one ``ssl.SSLContext`` built here when the client starts, so
a missing CA or key file fails the pass at once with the key that names it.

It must not decide anything: which tag to delete is the planner's business. And no httpx
type may leave this package; callers see model values, bytes, str and our exceptions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import structlog
from httpx_aiohttp import AiohttpTransport

from retention import __version__
from retention.clock import utc_now
from retention.core.policy import RegistrySettings
from retention.errors import (
    AuthenticationError,
    ConfigError,
    DeleteDisabled,
    InvalidManifest,
    NotFound,
    RegistryError,
    RegistryUnreachable,
    WriteRefused,
)
from retention.registry import credentials, media_types
from retention.registry.auth import Clock, RegistryAuth, public_url

Sleep = Callable[[float], Awaitable[None]]
# retention.logs sits above this package in .importlinter's layers; structlog is the same.
log = structlog.get_logger(__name__)

BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 5.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Dropped or stalled connections are worth another try; a bad URL or a proxy refusing us is not.
_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Distribution refuses manifests above 4 MiB; listings of many tags can be larger.
MANIFEST_LIMIT_BYTES = 4 * 1024 * 1024
_LISTING_LIMIT_BYTES = 64 * 1024 * 1024
_ACCEPT_MANIFESTS = {"Accept": media_types.MANIFEST_ACCEPT}
_DIGEST = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
# TLS alerts a server sends about the client's certificate: missing (TLS 1.3 says
# "certificate required", Go's server says "bad certificate") or from an untrusted CA.
_CLIENT_CERTIFICATE_ALERTS = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    }
)
_DELETE_DISABLED_HINT = (
    "the registry refuses deletes; set storage.delete.enabled: true "
    "(or REGISTRY_STORAGE_DELETE_ENABLED=true) in the registry's config"
)

READY_POLL_S = 0.2  # between pings while a registry starts


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest body as served, with the digest it was verified against."""

    digest: str
    media_type: str
    body: bytes


@dataclass(frozen=True)
class _Reply:
    """A fully read response, so nothing streaming or httpx-shaped outlives the exchange."""

    method: str
    url: httpx.URL
    status: int
    headers: httpx.Headers
    body: bytes
    next_url: httpx.URL | None


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
        limits = httpx.Limits(
            max_connections=settings.concurrency,
            max_keepalive_connections=settings.concurrency,
        )
        verify = _tls(settings)
        self._http = httpx.AsyncClient(
            base_url=public_url(httpx.URL(settings.base_url)),
            auth=RegistryAuth(found, registry_url=settings.base_url, clock=clock),
            verify=verify,
            timeout=httpx.Timeout(settings.timeout.total_seconds()),
            limits=limits,
            headers={"User-Agent": f"retention/{__version__}"},
            transport=transport or _aiohttp(verify, limits),
        )
        self._base = str(self._http.base_url).rstrip("/") + "/"  # "http://h:5000" has none
        self._extensions = {"timeout": self._http.timeout.as_dict()}
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
            merged = self._http.headers.copy()
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
        await self._http.aclose()

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
            raise _reply_error(InvalidManifest, reply, f"malformed digest header {digest!r}")
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
        digest = _verified_manifest_digest(reply, reference)
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
            raise _reply_error(RegistryError, reply, f"blob does not match its digest {digest}")
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
            raise _reply_error(RegistryError, started, "upload started without a Location")
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
            names.update(dict.fromkeys(_names(reply, key)))
            seen.add(reply.url)
            url = reply.next_url
            if url in seen:
                raise _reply_error(RegistryError, reply, f"pagination loops back to {url}")
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
    ) -> _Reply:
        """One logical exchange: retried, and raised as our error unless ``expect``-ed."""

        target = url if isinstance(url, httpx.URL) else httpx.URL(self._base + url.lstrip("/"))
        merged = self._headers(headers)

        def build() -> httpx.Request:
            if self._http.cookies:  # a registry behind a cookie-setting proxy: httpx's way
                return self._http.build_request(method, target, headers=headers, content=content)
            return httpx.Request(
                method, target, headers=merged, content=content, extensions=self._extensions
            )

        try:
            reply = await self._with_retries(build, limit, follow_redirects)
        except (httpx.RequestError, httpx.InvalidURL) as exc:  # redirect loops, bad Link URLs
            raise RegistryError(f"the exchange failed: {exc}", method=method, url=str(url)) from exc
        if reply.status not in expect:
            raise _status_error(reply, self._has_credentials)
        return reply

    async def _with_retries(
        self, build: Callable[[], httpx.Request], limit: int, follow_redirects: bool
    ) -> _Reply:
        """Send, and again after a backoff on overload or a dropped connection."""
        for attempt in range(self._settings.retries + 1):
            request = build()
            final = attempt == self._settings.retries
            try:
                reply = await self._send_once(request, limit, follow_redirects)
            except _RETRYABLE_ERRORS as exc:
                if final or _tls_failure(exc) is not None:  # a certificate does not heal
                    raise _unreachable(request, exc, attempt + 1) from exc
                await self._sleep(backoff_seconds(attempt))
                continue
            except (httpx.TransportError, ssl.SSLError) as exc:
                # httpcore maps TLS errors of the handshake but not a TLS 1.3 alert that
                # arrives with the first read, such as a refused client certificate.
                raise _unreachable(request, exc, attempt + 1) from exc
            if reply.status not in RETRY_STATUSES or final:
                return reply
            await self._sleep(backoff_seconds(attempt, reply.headers.get("retry-after")))
        raise AssertionError("unreachable: the last attempt always returns or raises")

    async def _send_once(
        self, request: httpx.Request, limit: int, follow_redirects: bool
    ) -> _Reply:
        """One HTTP request inside the concurrency bound, body read in full (up to ``limit``)."""
        async with self._semaphore:
            response = await self._http.send(
                request, stream=True, follow_redirects=follow_redirects
            )
            try:
                body = await _read_limited(response, limit)
            finally:
                await response.aclose()
        return _Reply(
            method=request.method,
            url=response.url,
            status=response.status_code,
            headers=response.headers,
            body=body,
            next_url=_next_url(response),
        )


def backoff_seconds(attempt: int, retry_after: str | None = None) -> float:
    """Exponential backoff with jitter, or the server's Retry-After; never above the cap.

    Jitter spreads the retries of many concurrent requests so they do not return as one
    burst to a registry that just told us it is overloaded.
    """
    requested = _retry_after_seconds(retry_after)
    if requested is not None:
        return min(BACKOFF_CAP_SECONDS, requested)
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)
    return random.uniform(ceiling / 2, ceiling)


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds, from either its delta-seconds or its HTTP-date form."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - utc_now()).total_seconds())


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def is_digest(reference: str) -> bool:
    """True for ``algorithm:hex`` references; tags cannot contain a colon."""
    return _DIGEST.fullmatch(reference) is not None


def digest_matches(digest: str, data: bytes) -> bool:
    """Whether ``data`` hashes to ``digest``; unknown algorithms never match (fail closed)."""
    algorithm, _, expected = digest.partition(":")
    if algorithm not in ("sha256", "sha384", "sha512"):
        return False
    return hashlib.new(algorithm, data).hexdigest() == expected


def _aiohttp(verify: ssl.SSLContext | bool, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """httpx's API over aiohttp's connection pool: a third of httpcore's CPU per request.

    Measured with ``benchmarks/transports.py`` on one registry (client CPU per request for a
    cold scan's GETs): httpcore 1.5 ms (sniffio installed), sync httpx on threads 0.9 ms,
    this 0.7 ms, raw aiohttp 0.3 ms. httpcore spends it in its pool bookkeeping (anyio
    wrappers, ``is_idle`` over every connection, socket readability checks per request).
    Requests, auth flows, redirects and exceptions stay httpx's; proxies from the
    environment still go through httpx's own transports.
    """
    return AiohttpTransport(verify=verify, limits=limits, trust_env=False)


def _tls(settings: RegistrySettings) -> ssl.SSLContext | bool:
    """httpx's default unless a TLS key is set; then one context for registry and realm.

    An in-house ``ca_cert`` is trusted in addition to the public CAs httpx trusts by default,
    because the token service may well have a public certificate. ``verify=<path>`` and
    ``cert=`` are deprecated in httpx 0.28: everything goes through the context.
    """
    if settings.ca_cert is None and not settings.insecure and settings.client_cert is None:
        return True
    if settings.insecure:
        log.warning(
            "tls verification disabled",
            registry=public_url(httpx.URL(settings.base_url)),
            setting="registry.insecure",
        )
    # httpx's own default (certifi, or SSL_CERT_FILE/SSL_CERT_DIR), to which we add.
    context = httpx.create_ssl_context(verify=not settings.insecure)
    if settings.ca_cert is not None:
        _readable("registry.ca_cert", settings.ca_cert)
        with _unusable("registry.ca_cert", settings.ca_cert):
            context.load_verify_locations(cafile=settings.ca_cert)
    if settings.client_cert is not None:
        _load_client_certificate(context, settings.client_cert, settings.client_key)
    return context


def _load_client_certificate(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    """The client certificate (and its key, unless both are in one PEM file) for mTLS.

    The password callback answers any passphrase prompt with nothing, so an encrypted key
    fails here instead of OpenSSL asking on the terminal of an unattended pass.
    """
    _readable("registry.client_cert", cert)
    if key is not None:
        _readable("registry.client_key", key)
    with _unusable("registry.client_cert", cert, key):
        context.load_cert_chain(cert, key, password=lambda: "")


def _readable(key: str, path: Path) -> None:
    """Fail with the key and file named; ssl reports a missing file without its name."""
    try:
        path.open("rb").close()
    except OSError as exc:
        raise ConfigError([f"{key}: cannot read {path}: {exc.strerror or exc}"]) from exc


@contextmanager
def _unusable(key: str, *paths: Path | None) -> Iterator[None]:
    """A file that is there but is not a PEM certificate or key, or a key of another cert."""
    try:
        yield
    except ssl.SSLError as exc:
        files = " and ".join(str(path) for path in paths if path is not None)
        reason = exc.reason or str(exc)
        raise ConfigError([f"{key}: cannot use {files}: {reason}"]) from exc


def _manifest_path(repository: str, reference: str) -> str:
    return f"/v2/{repository}/manifests/{reference}"


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    """Read a body, refusing one larger than ``limit`` before and while it arrives.

    A HEAD answer has no body: its Content-Length is the size of what a GET would send
    (a multi-GB layer, say), which is no reason to refuse it.
    """
    if response.request.method == "HEAD":
        return b""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(response, limit)
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


def _next_url(response: httpx.Response) -> httpx.URL | None:
    """The ``rel="next"`` link, resolved against the request (Distribution sends it relative)."""
    link = response.links.get("next", {}).get("url")
    return None if not link else response.url.join(link)


def _names(reply: _Reply, key: str) -> list[str]:
    """The list under ``key`` in a catalog or tag listing; ``null`` means empty."""
    try:
        value = json.loads(reply.body).get(key)
    except (ValueError, AttributeError) as exc:
        raise _reply_error(RegistryError, reply, f"answer is not a JSON object: {exc}") from exc
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise _reply_error(RegistryError, reply, f"{key!r} is not a list of names")
    return value


def _verified_manifest_digest(reply: _Reply, reference: str) -> str:
    """The digest the body must hash to: the server's header, else the digest we asked for.

    A tag fetched from a registry that sends no header leaves nothing to check against; then
    the digest is the body's own hash, which is what the registry stores it under.
    """
    served = reply.headers.get("docker-content-digest")
    requested = reference if is_digest(reference) else None
    if served and requested and served != requested:
        raise _reply_error(InvalidManifest, reply, f"asked for {requested}, served {served}")
    expected = served or requested or sha256_digest(reply.body)
    if not digest_matches(expected, reply.body):
        raise _reply_error(InvalidManifest, reply, f"manifest body does not match {expected}")
    return expected


def _reply_error(kind: type[RegistryError], reply: _Reply, message: str) -> RegistryError:
    return kind(message, method=reply.method, url=public_url(reply.url), status=reply.status)


def _unreachable(
    request: httpx.Request, exc: httpx.TransportError | ssl.SSLError, attempts: int
) -> RegistryError:
    tls = _tls_failure(exc)
    if tls is not None:
        return RegistryUnreachable(
            _tls_message(tls), method=request.method, url=public_url(request.url)
        )
    cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return RegistryUnreachable(
        f"no answer from the registry after {attempts} attempt(s): {cause}",
        method=request.method,
        url=public_url(request.url),
    )


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The ssl error under the transport's wrappers, if TLS is what failed.

    The innermost one: aiohttp's own certificate errors subclass ``ssl.SSLError`` without
    its fields (``reason``, ``verify_message``) and carry the real one as their cause.
    """
    found: ssl.SSLError | None = None
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            found = seen
        seen = seen.__cause__ or seen.__context__
    return found


def _tls_message(error: ssl.SSLError) -> str:
    """One line that says which setting would help, instead of OpenSSL's words alone."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"the registry's TLS certificate is not trusted ({error.verify_message}); set "
            "registry.ca_cert to the CA that signed it, or registry.insecure: true to skip checks"
        )
    reason = error.reason or str(error)
    if reason.upper() in _CLIENT_CERTIFICATE_ALERTS:
        return (
            f"the registry refused the TLS connection ({reason}): it wants a client "
            "certificate its http.tls.clientcas trust; set registry.client_cert and "
            "registry.client_key"
        )
    return f"TLS with the registry failed: {reason}"


def _status_error(reply: _Reply, has_credentials: bool = True) -> RegistryError:
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
