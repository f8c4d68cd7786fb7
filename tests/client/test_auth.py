"""Registry authentication against in-memory fakes: Basic, and the Bearer token dance.

``TokenGate`` puts ``FakeRegistry`` behind token auth the way Distribution's ``auth.token``
does: a request without a token granting the scope it needs gets ``401`` with a Bearer
challenge; the token service on another origin hands out opaque tokens for the scopes it
allows. Everything goes through one ``httpx.MockTransport``, so every request, token
requests included, is recorded and counted. Time is injected, so expiry is tested without
waiting. The real registry and a real token issuer are in
``tests/integration/test_auth_tls.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from registry_server import FAKE_URL, FakeRegistry, Seeder

from retention.core.policy import RegistrySettings
from retention.errors import AuthenticationError, ConfigError, RegistryError
from retention.registry import RegistryClient
from retention.registry.auth import parse_challenges, required_scope

REALM = "http://127.0.0.1:8/token"
SERVICE = "fake-registry"
PASSWORD = "pw-7f3c-distinctive"
CREATED = datetime(2024, 5, 1, tzinfo=UTC)


class Clock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def needed_scope(request: httpx.Request) -> str | None:
    """What Distribution demands, written out here again so the code cannot grade itself."""
    path = request.url.path
    if path == "/v2/_catalog":
        return "registry:catalog:*"
    match = re.fullmatch(r"/v2/(.+)/(manifests|tags|blobs)/.*", path)
    if match is None:
        return None
    action = {"GET": "pull", "HEAD": "pull", "DELETE": "delete"}.get(request.method, "pull,push")
    return f"repository:{match.group(1)}:{action}"


def snapshot(request: httpx.Request) -> httpx.Request:
    """A copy as sent: auth flows set headers on the request object they then send again."""
    return httpx.Request(request.method, request.url, headers=request.headers.copy())


class Chunks(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data


class TokenGate:
    """A token service (at ``REALM``) in front of a ``FakeRegistry``.

    ``allow(scope)`` decides what the service grants (all by default); ``expires_in`` is
    what it says about lifetimes (left out when None); ``users`` maps the accepted Basic
    credentials (None: anonymous only, and any credentials are refused).
    """

    def __init__(
        self,
        fake: FakeRegistry,
        *,
        allow: Callable[[str], bool] = lambda scope: True,
        expires_in: float | None = 300,
        users: dict[str, str] | None = None,
        demand: Callable[[httpx.Request], str | None] = needed_scope,
    ) -> None:
        self.fake = fake
        self.allow = allow
        self.expires_in = expires_in
        self.users = users
        self.demand = demand
        self.grants: dict[str, set[str]] = {}
        self.token_requests: list[httpx.Request] = []
        self.registry_requests: list[httpx.Request] = []
        self.script: list[httpx.Response] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if str(request.url.copy_with(query=None)) == REALM:
            self.token_requests.append(snapshot(request))
            return self.script.pop(0) if self.script else self._issue(request)
        self.registry_requests.append(snapshot(request))
        needed = self.demand(request)
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        granted = self.grants.get(token)
        if granted is None:
            return self._challenge(needed, "invalid_token" if token else None)
        if needed is not None and needed not in granted:
            return self._challenge(needed, "insufficient_scope")
        return self.fake.handler(request)

    def revoke_all(self) -> None:
        """As a registry whose signing certificate changed would: old tokens stop working."""
        self.grants.clear()

    def scopes_asked(self) -> list[list[str]]:
        return [r.url.params.get_list("scope") for r in self.token_requests]

    def _issue(self, request: httpx.Request) -> httpx.Response:
        if not self._authenticated(request.headers.get("authorization")):
            return httpx.Response(401, json={"details": "incorrect username or password"})
        token = f"tok-{len(self.grants)}-c0ffee-distinctive"
        scopes = request.url.params.get_list("scope")
        self.grants[token] = {scope for scope in scopes if self.allow(scope)}
        body: dict[str, Any] = {"token": token}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        # Streamed, as from a socket: a body can then be read only once, and httpx reads
        # the token answer again after the flow has, so the flow must read it httpx's way.
        data = json.dumps(body).encode()
        return httpx.Response(200, headers={"Content-Length": str(len(data))}, stream=Chunks(data))

    def _authenticated(self, header: str | None) -> bool:
        if header is None:
            return True
        if self.users is None or not header.startswith("Basic "):
            return False
        username, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return self.users.get(username) == password

    def _challenge(self, scope: str | None, error: str | None) -> httpx.Response:
        params = f'realm="{REALM}",service="{SERVICE}"'
        if scope:
            params += f',scope="{scope}"'
        if error:
            params += f',error="{error}"'
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        return httpx.Response(401, json=body, headers={"WWW-Authenticate": f"Bearer {params}"})


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def seeder(fake: FakeRegistry) -> Iterator[Seeder]:
    """Seeds the fake directly, past the gate, so seeding costs no tokens."""
    seeder = Seeder(FAKE_URL, transport=httpx.MockTransport(fake.handler))
    yield seeder
    seeder.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_client(
    handler: Callable[[httpx.Request], Any],
    clock: Clock | None = None,
    sleeps: Sleeps | None = None,
    **settings: Any,
) -> RegistryClient:
    return RegistryClient(
        RegistrySettings(**{"url": FAKE_URL, "retries": 2, **settings}),
        transport=httpx.MockTransport(handler),
        sleep=sleeps if sleeps is not None else Sleeps(),
        clock=clock or Clock(),
    )


def alice(gate: TokenGate) -> dict[str, Any]:
    gate.users = {"alice": PASSWORD}
    return {"username": "alice", "password": PASSWORD}


# The Bearer challenge


async def test_a_bearer_challenge_is_answered_with_a_token_and_the_request_repeated(
    fake: FakeRegistry, seeder: Seeder, clock: Clock
) -> None:
    seeder.image("app", ["v1"], CREATED, unique="a")
    gate = TokenGate(fake)

    async with make_client(gate.handler, clock) as client:
        assert await client.tags("app") == ["v1"]

    first, retried = gate.registry_requests
    assert "authorization" not in first.headers
    assert retried.headers["authorization"] == "Bearer tok-0-c0ffee-distinctive"
    (token_request,) = gate.token_requests
    assert token_request.url.params.get_list("scope") == ["repository:app:pull"]
    assert token_request.url.params["service"] == SERVICE


async def test_anonymous_tokens_are_asked_for_without_credentials_or_account(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    seeder.image("app", ["v1"], CREATED, unique="a")
    gate = TokenGate(fake)

    async with make_client(gate.handler) as client:
        await client.tags("app")

    (token_request,) = gate.token_requests
    assert "authorization" not in token_request.headers
    assert "account" not in token_request.url.params


async def test_credentials_go_to_the_token_service_and_only_tokens_to_the_registry(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    seeder.image("app", ["v1"], CREATED, unique="a")
    gate = TokenGate(fake)
    credentials = alice(gate)

    async with make_client(gate.handler, **credentials) as client:
        await client.ping()
        await client.tags("app")
        await client.catalog()

    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert [r.headers.get("authorization") for r in gate.token_requests] == [expected] * 3
    assert {r.url.params["account"] for r in gate.token_requests} == {"alice"}
    # Basic goes out up front only until the registry shows it wants Bearer (the first
    # request, as an htpasswd registry needs); after that, the registry sees tokens alone.
    after_challenge = gate.registry_requests[1:]
    assert all(r.headers["authorization"].startswith("Bearer ") for r in after_challenge)
    encoded = expected.removeprefix("Basic ")
    assert not [v for r in after_challenge for v in r.headers.values() if encoded in v]


async def test_basic_credentials_are_never_sent_up_front_to_another_origin(
    fake: FakeRegistry,
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(snapshot(request))
        if request.url.host == "127.0.0.2":
            return httpx.Response(201, headers={"Docker-Content-Digest": "sha256:" + "0" * 64})
        return httpx.Response(
            202, headers={"Location": "http://127.0.0.2:9/v2/app/blobs/uploads/u?_state=s"}
        )

    async with make_client(handler, username="alice", password=PASSWORD) as client:
        await client.upload_blob("app", b"data")

    assert seen[0].headers["authorization"].startswith("Basic ")
    assert "authorization" not in seen[1].headers


# Scopes and caching


async def test_one_token_per_scope_serves_every_request_that_needs_it(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    digest = seeder.image("app", ["v1", "v2"], CREATED, unique="a")
    seeder.image("lib", ["v1"], CREATED, unique="b")
    gate = TokenGate(fake)

    async with make_client(gate.handler) as client:
        await client.tags("app")
        await client.resolve("app", "v1")
        await client.manifest("app", digest)
        await client.tags("app")
        await client.tags("lib")
        await client.catalog()
        await client.catalog()

    assert gate.scopes_asked() == [
        ["repository:app:pull"],
        ["repository:lib:pull"],
        ["registry:catalog:*"],
    ]


async def test_once_bearer_is_known_new_scopes_are_fetched_up_front_without_a_401(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    seeder.image("app", ["v1"], CREATED, unique="a")
    seeder.image("lib", ["v1"], CREATED, unique="b")
    gate = TokenGate(fake)

    async with make_client(gate.handler) as client:
        await client.tags("app")
        await client.tags("lib")

    statuses = [r.url.path for r in gate.registry_requests]
    assert statuses == ["/v2/app/tags/list", "/v2/app/tags/list", "/v2/lib/tags/list"]


async def test_concurrent_requests_for_one_scope_share_a_single_token_request(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    seeder.image("app", [f"v{i}" for i in range(8)], CREATED, unique="a")
    gate = TokenGate(fake)

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # every request yields, so the eight really overlap
        return gate.handler(request)

    async with make_client(slow, concurrency=8) as client:
        await client.ping()
        await asyncio.gather(*(client.resolve("app", f"v{i}") for i in range(8)))

    assert gate.scopes_asked() == [[], ["repository:app:pull"]]


async def test_deleting_asks_for_the_delete_scope_and_nothing_more(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    digest = seeder.image("app", ["v1"], CREATED, unique="a")
    gate = TokenGate(fake)

    async with make_client(gate.handler) as client:
        assert await client.delete_manifest("app", digest) is True

    assert gate.scopes_asked() == [["repository:app:delete"]]


async def test_a_challenge_asking_for_another_scope_is_followed_as_given_and_remembered(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    first = seeder.image("app", ["v1"], CREATED, unique="a")
    second = seeder.image("app", ["v2"], CREATED, unique="b")

    def old_registry(request: httpx.Request) -> str | None:  # Distribution < 2.3 wanted `*`
        needed = needed_scope(request)
        return needed.replace(":delete", ":*") if needed else None

    gate = TokenGate(fake, demand=old_registry)

    async with make_client(gate.handler) as client:
        await client.ping()
        await client.delete_manifest("app", first)
        await client.delete_manifest("app", second)

    assert gate.scopes_asked() == [[], ["repository:app:delete"], ["repository:app:*"]]


# Expiry


async def test_a_token_is_reused_until_shortly_before_it_expires(
    fake: FakeRegistry, seeder: Seeder, clock: Clock
) -> None:
    seeder.image("app", ["v1"], CREATED, unique="a")
    gate = TokenGate(fake, expires_in=120)

    async with make_client(gate.handler, clock) as client:
        await client.tags("app")
        clock.now += 109  # a 10 s margin: usable until 110 s after it was asked for
        await client.tags("app")
        assert len(gate.token_requests) == 1
        clock.now += 2
        await client.tags("app")

    assert len(gate.token_requests) == 2


async def test_a_token_without_expires_in_lives_the_specs_default_of_60_seconds(
    fake: FakeRegistry, seeder: Seeder, clock: Clock
) -> None:
    seeder.image("app", ["v1"], CREATED, unique="a")
    gate = TokenGate(fake, expires_in=None)

    async with make_client(gate.handler, clock) as client:
        await client.tags("app")
        clock.now += 49
        await client.tags("app")
        assert len(gate.token_requests) == 1
        clock.now += 2
        await client.tags("app")

    assert len(gate.token_requests) == 2


async def test_a_short_lived_token_keeps_most_of_its_life(
    fake: FakeRegistry, seeder: Seeder, clock: Clock
) -> None:
    seeder.image("app", ["v1"], CREATED, unique="a")
    gate = TokenGate(fake, expires_in=4)

    async with make_client(gate.handler, clock) as client:
        await client.tags("app")
        clock.now += 2.9  # the margin is a quarter of a short life, not 10 s
        await client.tags("app")
        assert len(gate.token_requests) == 1
        clock.now += 0.2
        await client.tags("app")

    assert len(gate.token_requests) == 2


async def test_a_cached_token_the_registry_no_longer_accepts_is_replaced_once(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    seeder.image("app", ["v1"], CREATED, unique="a")
    gate = TokenGate(fake)

    async with make_client(gate.handler) as client:
        await client.tags("app")
        gate.revoke_all()
        assert await client.tags("app") == ["v1"]

    assert len(gate.token_requests) == 2


# Refusals


async def test_a_fresh_token_without_delete_rights_names_the_repository_and_scope(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    digest = seeder.image("team/app", ["v1"], CREATED, unique="a")
    gate = TokenGate(fake, allow=lambda scope: not scope.endswith(":delete"))
    credentials = alice(gate)

    async with make_client(gate.handler, **credentials) as client:
        with pytest.raises(AuthenticationError) as raised:
            await client.delete_manifest("team/app", digest)

    error = raised.value
    assert str(error).startswith(
        "not allowed to DELETE on repository 'team/app': the token service did not grant "
        "'repository:team/app:delete' to user 'alice'"
    )
    assert (error.method, error.status, error.code) == ("DELETE", 401, "insufficient_scope")
    assert digest in fake.repositories["team/app"].manifests
    assert len(gate.token_requests) == 1  # a fresh token that falls short is not retried
    assert "c0ffee" not in str(error) and PASSWORD not in str(error)


async def test_a_second_refused_delete_costs_one_token_request_not_two(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    first = seeder.image("app", ["v1"], CREATED, unique="a")
    second = seeder.image("app", ["v2"], CREATED, unique="b")
    gate = TokenGate(fake, allow=lambda scope: not scope.endswith(":delete"))

    async with make_client(gate.handler) as client:
        for digest in (first, second):
            with pytest.raises(AuthenticationError, match="to anonymous requests"):
                await client.delete_manifest("app", digest)

    assert len(gate.token_requests) == 2


async def test_a_403_to_a_fresh_token_also_names_the_scope(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    digest = seeder.image("app", ["v1"], CREATED, unique="a")
    gate = TokenGate(fake)

    def forbidding(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE" and "authorization" in request.headers:
            gate.registry_requests.append(snapshot(request))
            return httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "no"}]})
        return gate.handler(request)

    async with make_client(forbidding) as client:
        with pytest.raises(AuthenticationError, match="'repository:app:delete'") as raised:
            await client.delete_manifest("app", digest)

    assert raised.value.status == 403


async def test_a_registry_rejecting_its_own_services_tokens_says_what_to_check(
    fake: FakeRegistry,
) -> None:
    gate = TokenGate(fake)

    def handler(request: httpx.Request) -> httpx.Response:
        response = gate.handler(request)
        gate.revoke_all()  # as a registry with the wrong rootcertbundle would
        return response

    async with make_client(handler) as client:
        with pytest.raises(AuthenticationError, match="agree on issuer, service and signing"):
            await client.ping()


async def test_wrong_credentials_at_the_token_service_are_one_clear_error(
    fake: FakeRegistry,
) -> None:
    gate = TokenGate(fake, users={"alice": "another"})

    async with make_client(gate.handler, username="alice", password=PASSWORD) as client:
        with pytest.raises(AuthenticationError) as raised:
            await client.ping()

    assert str(raised.value) == (
        f"the token service refused the credentials of user 'alice' (GET {REALM}?"
        f"service={SERVICE}&account=alice: 401)"
    )
    assert len(gate.token_requests) == 1


async def test_a_token_service_that_wants_credentials_says_which_keys_to_set(
    fake: FakeRegistry,
) -> None:
    gate = TokenGate(fake)
    gate.script.append(httpx.Response(401))

    async with make_client(gate.handler) as client:
        with pytest.raises(AuthenticationError, match="refuses anonymous requests; set registry"):
            await client.ping()


async def test_a_token_service_answering_503_is_retried_like_the_registry(
    fake: FakeRegistry,
) -> None:
    gate = TokenGate(fake)
    gate.script.append(httpx.Response(503))
    sleeps = Sleeps()

    async with make_client(gate.handler, sleeps=sleeps) as client:
        await client.ping()

    assert len(gate.token_requests) == 2
    assert len(sleeps) == 1


async def test_a_token_answer_without_a_token_is_a_registry_error(fake: FakeRegistry) -> None:
    gate = TokenGate(fake)
    gate.script.append(httpx.Response(200, json={"expires_in": 60}))

    async with make_client(gate.handler) as client:
        with pytest.raises(RegistryError, match="answered without a token"):
            await client.ping()


async def test_tokens_and_passwords_never_reach_the_logs(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    seeder.image("app", ["v1"], CREATED, unique="a")
    gate = TokenGate(fake)
    credentials = alice(gate)

    with structlog.testing.capture_logs() as logs:
        async with make_client(gate.handler, **credentials) as client:
            await client.tags("app")

    assert logs  # the token fetch is logged (at debug), without the token
    assert "c0ffee" not in repr(logs) and PASSWORD not in repr(logs)


# Basic auth, as htpasswd registries want it


def basic_gate(fake: FakeRegistry, requests: list[httpx.Request]) -> Any:
    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(snapshot(request))
        if request.headers.get("authorization") != expected:
            challenge = {"WWW-Authenticate": 'Basic realm="Registry Realm"'}
            return httpx.Response(
                401, json={"errors": [{"code": "UNAUTHORIZED"}]}, headers=challenge
            )
        return fake.handler(request)

    return handler


async def test_basic_credentials_are_sent_on_every_request_to_an_htpasswd_registry(
    fake: FakeRegistry, seeder: Seeder
) -> None:
    seeder.image("app", ["v1"], CREATED, unique="a")
    requests: list[httpx.Request] = []

    async with make_client(
        basic_gate(fake, requests), username="alice", password=PASSWORD
    ) as client:
        assert await client.tags("app") == ["v1"]
        await client.catalog()

    assert len(requests) == 2  # up front, so no request costs a 401 first


async def test_no_credentials_for_a_basic_challenge_is_an_authentication_error(
    fake: FakeRegistry,
) -> None:
    async with make_client(basic_gate(fake, [])) as client:
        with pytest.raises(AuthenticationError) as raised:
            await client.ping()

    assert raised.value.status == 401


# The pieces


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/v2/", None),
        ("GET", "/v2/_catalog", "registry:catalog:*"),
        ("GET", "/v2/team/app/tags/list", "repository:team/app:pull"),
        ("HEAD", "/v2/app/manifests/v1", "repository:app:pull"),
        ("GET", "/v2/app/blobs/sha256:ab", "repository:app:pull"),
        ("DELETE", "/v2/a/manifests/sha256:ab", "repository:a:delete"),
        ("POST", "/v2/app/blobs/uploads/", "repository:app:pull,push"),
        ("PUT", "/v2/x/blobs/y/manifests/v1", "repository:x/blobs/y:pull,push"),
    ],
)
def test_each_request_asks_for_the_scope_distribution_checks(
    method: str, path: str, scope: str | None
) -> None:
    assert required_scope(method, path) == scope


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            ['Bearer realm="https://auth/token",service="reg",scope="repository:a:pull"'],
            [
                (
                    "bearer",
                    {"realm": "https://auth/token", "service": "reg", "scope": "repository:a:pull"},
                )
            ],
        ),
        (
            ['Basic realm="Registry, \\"R\\"", Bearer realm=x'],
            [("basic", {"realm": 'Registry, "R"'}), ("bearer", {"realm": "x"})],
        ),
        (
            ['Basic realm="a"', 'bearer Realm="b"'],
            [("basic", {"realm": "a"}), ("bearer", {"realm": "b"})],
        ),
        ([], []),
    ],
)
def test_challenges_are_parsed_with_quoted_commas_and_several_per_header(
    headers: list[str], expected: list[tuple[str, dict[str, str]]]
) -> None:
    parsed = parse_challenges(httpx.Headers([("WWW-Authenticate", h) for h in headers]))
    assert [(c.scheme, c.params) for c in parsed] == expected


def test_several_scopes_in_one_challenge_are_split_on_spaces() -> None:
    headers = httpx.Headers({"WWW-Authenticate": 'Bearer realm="r",scope="a:b:pull c:d:push"'})
    assert parse_challenges(headers)[0].scopes == ("a:b:pull", "c:d:push")


# TLS settings, read when the client is built


def https_settings(**settings: Any) -> RegistrySettings:
    return RegistrySettings(url="https://127.0.0.1:9", **settings)


def test_a_missing_ca_certificate_fails_at_construction_naming_key_and_file(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(ConfigError) as raised:
        RegistryClient(https_settings(ca_cert=missing))
    assert (
        str(raised.value) == f"registry.ca_cert: cannot read {missing}: No such file or directory"
    )


def test_a_ca_file_that_is_not_pem_is_one_line_naming_it(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"^registry.ca_cert: cannot use {garbage}: ") as raised:
        RegistryClient(https_settings(ca_cert=garbage))
    assert "\n" not in str(raised.value)


def test_a_missing_client_key_is_named_before_tls_tries_it(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match=r"^registry\.client_key: cannot read .*key\.pem"):
        RegistryClient(https_settings(client_cert=cert, client_key=tmp_path / "key.pem"))


async def test_insecure_warns_each_time_a_client_is_built() -> None:
    with structlog.testing.capture_logs() as logs:
        async with RegistryClient(https_settings(insecure=True)):
            pass
        async with RegistryClient(https_settings(insecure=True)):
            pass

    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["tls verification disabled"] * 2
    assert warnings[0]["setting"] == "registry.insecure"
