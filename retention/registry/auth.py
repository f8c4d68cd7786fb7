"""Registry authentication as an ``httpx.Auth`` flow: Basic, and Bearer tokens.

Distribution with ``auth.htpasswd`` wants Basic credentials on every request. Registries
with token auth (``auth.token``, Harbor, GitLab, Docker Hub) answer ``401`` with
``WWW-Authenticate: Bearer realm=...,service=...,scope=...``; the client then asks the realm
for a token (with Basic credentials if it has any, anonymously otherwise) and repeats the
request with ``Authorization: Bearer <token>``. That exchange is a generator that yields
requests and receives responses, as in httpx's own ``_auth.py``, so token requests travel
through the same client: the same timeouts, the same transport (and so the same request
counts in tests), and a token service answering 503 is retried like the registry would be.

Tokens are cached per scope until shortly before they expire; once a registry has shown it
wants Bearer, later requests fetch their token up front instead of collecting a 401 first.
Scopes are what Distribution checks (``registry/handlers/app.go``): ``pull`` to read,
``delete`` to delete, ``registry:catalog:*`` for the catalog; a challenge naming another
scope (old registries demanded ``*`` to delete) is followed as given and remembered.

It must never let a secret out: no token, password or ``Authorization`` header goes into a
message or a log line, and URLs lose their ``user:password@`` before they are quoted.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass

import httpx
import structlog

from retention.errors import AuthenticationError, RegistryError
from retention.registry.credentials import Credentials

Clock = Callable[[], float]

DEFAULT_TOKEN_SECONDS = 60.0  # the token spec's default when expires_in is absent
EXPIRY_MARGIN_SECONDS = 10.0
CATALOG_SCOPE = "registry:catalog:*"
_TOKEN_LIMIT_BYTES = 1024 * 1024
_REPOSITORY_PATH = re.compile(
    r"/v2/(?P<name>.+)/(?:manifests/[^/]+|tags/list|blobs/uploads/[^/]*|blobs/[^/]+)"
)
_ACTIONS = {"GET": "pull", "HEAD": "pull", "DELETE": "delete"}
# A parameter (name=value, the value quoted or not) or a bare word (a scheme).
_CHALLENGE_PART = re.compile(
    r'([A-Za-z_][\w.-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))|([A-Za-z][\w.-]*)'
)
_REFUSED = frozenset({401, 403})

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: its scheme (lower case) and parameters."""

    scheme: str
    params: dict[str, str]

    @property
    def scopes(self) -> tuple[str, ...]:
        """Distribution joins several scopes with spaces in one ``scope`` parameter."""
        return tuple(self.params.get("scope", "").split())


@dataclass(frozen=True)
class _TokenService:
    """Where tokens come from, as the registry's Bearer challenge named it."""

    realm: httpx.URL
    service: str | None


@dataclass(frozen=True)
class _Token:
    value: str
    usable_until: float


def parse_challenges(headers: httpx.Headers) -> list[Challenge]:
    """Every challenge in the response's ``WWW-Authenticate`` headers, in order.

    RFC 9110 lets one header hold several challenges: a bare word starts a challenge,
    ``name=value`` pairs (values quoted or not) belong to the challenge before them.
    """
    challenges: list[Challenge] = []
    for value in headers.get_list("www-authenticate"):
        for match in _CHALLENGE_PART.finditer(value):
            name, quoted, plain, scheme = match.groups()
            if scheme:
                challenges.append(Challenge(scheme.lower(), {}))
            elif name and challenges:
                text = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain
                challenges[-1].params[name.lower()] = text
    return challenges


def required_scope(method: str, path: str) -> str | None:
    """The token scope Distribution checks for this request; None for ``/v2/`` itself."""
    if path == "/v2/_catalog":
        return CATALOG_SCOPE
    match = _REPOSITORY_PATH.fullmatch(path)
    if match is None:
        return None
    return f"repository:{match['name']}:{_ACTIONS.get(method, 'pull,push')}"


def public_url(url: httpx.URL | str) -> str:
    """The URL as it may appear in messages, logs and reports: never with user:password@."""
    return str(httpx.URL(url).copy_with(username=None, password=None))


class RegistryAuth(httpx.Auth):
    """Basic or Bearer, whichever the registry asks for; one instance per client.

    Basic credentials go to the registry's own origin up front (an htpasswd registry needs
    them on every request) until the registry shows a Bearer challenge; from then on the
    registry sees only tokens, and the credentials go to the token service alone.
    """

    def __init__(
        self,
        credentials: Credentials | None,
        *,
        registry_url: str,
        clock: Clock = time.monotonic,
    ) -> None:
        self._credentials = credentials
        self._origin = httpx.URL(registry_url).copy_with(path="/", query=None)
        self._clock = clock
        self._service: _TokenService | None = None
        self._tokens: dict[str, _Token] = {}
        self._scopes: dict[str, tuple[str, ...]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._basic: str | None = None

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """The client is async only; a sync client must not silently send no credentials."""
        raise RuntimeError("RegistryAuth works with async senders only")
        yield request  # pragma: no cover - makes this a generator, as httpx expects

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Send with what we know; answer one challenge; after that, refuse clearly.

        A ``yield`` sends a request (the registry's or the token service's) and receives
        its response, so every step stays in this one generator: helpers cannot yield.
        """
        key = required_scope(request.method, request.url.path) or ""
        asked: tuple[str, ...] | None = None  # scopes of a token fetched by this very flow
        if self._service is not None:
            async with self._lock(key):
                token = self._cached(key)
                if token is None:
                    asked = self._scopes_for(key)
                    token = await self._accept((yield self._token_request(request, asked)), key)
            if token is None:
                return  # the caller sees the token service's answer (a 503 is retried)
            request.headers["Authorization"] = f"Bearer {token}"
        elif self._credentials is not None and self._same_origin(request):
            request.headers["Authorization"] = self._basic_header()
        response = yield request

        challenge = self._challenge(response)
        if challenge is None:
            if asked is not None and response.status_code in _REFUSED:
                raise self._refused(request, response, None, key)
            return  # a 403 to an older token is the registry's to explain (Harbor does)
        if challenge.scheme == "basic":
            if self._credentials is not None and "Authorization" not in request.headers:
                request.headers["Authorization"] = self._basic_header()
                yield request
            return  # otherwise: nothing to offer, or the credentials sent were refused
        if asked is not None and set(challenge.scopes) <= set(asked):
            raise self._refused(request, response, challenge, key)
        self._learn(challenge, request, key)
        async with self._lock(key):
            self._tokens.pop(key, None)
            asked = self._scopes_for(key)
            token = await self._accept((yield self._token_request(request, asked)), key)
        if token is None:
            return
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code in _REFUSED:
            raise self._refused(request, response, self._challenge(response), key)

    # -- what a response says ---------------------------------------------------------

    def _challenge(self, response: httpx.Response) -> Challenge | None:
        """The Bearer (preferred) or Basic challenge of a 401; None for anything else."""
        if response.status_code != 401:
            return None
        challenges = parse_challenges(response.headers)
        for scheme in ("bearer", "basic"):
            found = next((c for c in challenges if c.scheme == scheme), None)
            if found is not None and (scheme == "basic" or found.params.get("realm")):
                return found
        return None

    def _learn(self, challenge: Challenge, request: httpx.Request, key: str) -> None:
        """Remember the token service, and the scopes this kind of request needs."""
        realm = request.url.join(challenge.params["realm"])
        if realm.scheme not in ("http", "https"):
            raise RegistryError(
                f"the registry names a token service that is not an http(s) URL: {realm.scheme}",
                method=request.method,
                url=public_url(request.url),
                status=401,
            )
        self._service = _TokenService(realm, challenge.params.get("service"))
        if challenge.scopes:
            self._scopes[key] = challenge.scopes

    def _scopes_for(self, key: str) -> tuple[str, ...]:
        """What the registry asked for last time, else what Distribution checks."""
        return self._scopes.get(key) or ((key,) if key else ())

    # -- tokens -----------------------------------------------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        """One token fetch per scope at a time, so concurrent requests share one token."""
        return self._locks.setdefault(key, asyncio.Lock())

    def _cached(self, key: str) -> str | None:
        token = self._tokens.get(key)
        if token is None or self._clock() >= token.usable_until:
            return None
        return token.value

    def _token_request(self, request: httpx.Request, scopes: tuple[str, ...]) -> httpx.Request:
        """GET realm?service=...&scope=... with Basic credentials, or anonymously."""
        assert self._service is not None  # only called once a challenge named the service
        params: dict[str, str | list[str]] = {}
        if self._service.service:
            params["service"] = self._service.service
        if scopes:
            params["scope"] = list(scopes)
        headers = {"User-Agent": request.headers.get("user-agent", "retention")}
        if self._credentials is not None:
            params["account"] = self._credentials.username
            headers["Authorization"] = self._basic_header()
        return httpx.Request(
            "GET",
            self._service.realm.copy_merge_params(params),
            headers=headers,
            extensions={"timeout": request.extensions.get("timeout", {})},
        )

    async def _accept(self, reply: httpx.Response, key: str) -> str | None:
        """The token from a 200, cached; None hands a 429/5xx back for the client to retry."""
        if reply.status_code in _REFUSED:
            raise self._service_refused(reply)
        if reply.status_code != 200:
            return None
        asked_at = self._clock()
        value, lifetime = _token_fields(await _read_small(reply), reply)
        margin = min(EXPIRY_MARGIN_SECONDS, lifetime / 4)
        self._tokens[key] = _Token(value, asked_at + lifetime - margin)
        log.debug("registry token fetched", scope=key or None, expires_in=lifetime)
        return value

    # -- credentials ------------------------------------------------------------------

    def _same_origin(self, request: httpx.Request) -> bool:
        url = request.url
        return (url.scheme, url.host, url.port) == (
            self._origin.scheme,
            self._origin.host,
            self._origin.port,
        )

    def _basic_header(self) -> str:
        """Built once: an htpasswd registry needs it on every request."""
        assert self._credentials is not None
        if self._basic is None:
            pair = f"{self._credentials.username}:{self._credentials.password}".encode()
            self._basic = "Basic " + base64.b64encode(pair).decode("ascii")
        return self._basic

    def _who(self) -> str:
        return f"user {self._credentials.username!r}" if self._credentials else "anonymous requests"

    # -- errors -----------------------------------------------------------------------

    def _service_refused(self, reply: httpx.Response) -> AuthenticationError:
        """The token service itself said no: wrong password, or no anonymous access."""
        if self._credentials is None:
            message = (
                "the token service refuses anonymous requests; set registry.username with "
                "password or password_file, or registry.credentials: docker"
            )
        else:
            message = f"the token service refused the credentials of {self._who()}"
        return AuthenticationError(
            message, method="GET", url=public_url(reply.request.url), status=reply.status_code
        )

    def _refused(
        self,
        request: httpx.Request,
        response: httpx.Response,
        challenge: Challenge | None,
        key: str,
    ) -> AuthenticationError:
        """A fresh token was not enough: name what was missing, and for whom."""
        self._tokens.pop(key, None)  # a token that cannot do the job is not worth keeping
        needed = challenge.scopes if challenge and challenge.scopes else self._scopes_for(key)
        error = challenge.params.get("error") if challenge else None
        message = _refusal_message(needed, self._who(), request.method)
        return AuthenticationError(
            message,
            method=request.method,
            url=public_url(request.url),
            status=response.status_code,
            code=error,
        )


def _refusal_message(scopes: tuple[str, ...], who: str, method: str) -> str:
    """Say which repository and which scope, in the words of the token spec."""
    if not scopes:
        return (
            "the registry rejects the tokens of its own token service: check that both "
            "agree on issuer, service and signing certificate, and that their clocks agree"
        )
    scope = scopes[0]
    kind, _, rest = scope.partition(":")
    name = rest.rpartition(":")[0]
    target = f"repository {name!r}" if kind == "repository" else f"the {name or kind}"
    listed = " ".join(repr(s) for s in scopes)
    return f"not allowed to {method} on {target}: the token service did not grant {listed} to {who}"


def _token_fields(body: bytes, reply: httpx.Response) -> tuple[str, float]:
    """``token`` (or OAuth's ``access_token``) and its lifetime in seconds."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    token = None
    lifetime: object = None
    if isinstance(document, dict):
        token = document.get("token") or document.get("access_token")
        lifetime = document.get("expires_in")
    if not isinstance(token, str) or not token.isprintable():
        raise RegistryError(
            "the token service answered without a token",
            method="GET",
            url=public_url(reply.request.url),
            status=reply.status_code,
        )
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
        return token, DEFAULT_TOKEN_SECONDS
    return token, float(lifetime)


async def _read_small(reply: httpx.Response) -> bytes:
    """A token answer is small; refuse one that declares otherwise before buffering it.

    Read with ``aread`` (not chunk by chunk) because httpx reads the same response again
    once the flow moves on; a service streaming without a length is trusted as far as the
    registry that named it.
    """
    declared = reply.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _TOKEN_LIMIT_BYTES:
        raise RegistryError(
            f"token answer larger than {_TOKEN_LIMIT_BYTES} bytes",
            method="GET",
            url=public_url(reply.request.url),
            status=reply.status_code,
        )
    return await reply.aread()
