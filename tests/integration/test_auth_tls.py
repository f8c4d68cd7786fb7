"""Authentication and TLS against the real registry, driven through the real CLI.

Everything a registry can be made to demand is set up here for real: ``auth.htpasswd``
users made with ``htpasswd -Bbn``; ``auth.token`` with a small token issuer in a thread on
127.0.0.1 that signs RS256 JWTs whose ``x5c`` certificate is the registry's
``rootcertbundle``, so the registry verifies every token itself; ``http.tls`` with a
certificate from a CA made in the test; and ``http.tls.clientcas`` for mutual TLS.
The seeder goes around nothing: it presents the same credentials, minted tokens or
client certificates, so the data it writes is read back through the same checks.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cli_support import CliResult, log_events, no_traceback, retention, write_policy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from registry_server import RegistryServer, Seeder, registry_binary

from retention.core.policy import RegistrySettings
from retention.registry import RegistryClient

NOW = dt.datetime.now(dt.UTC)
BUILDS = {"name": "builds", "match": r"build-\d+", "keep_last": 1}
SERVICE = "retention-test-registry"
ISSUER = "retention-test-issuer"
PASSWORD = "pw-REDACT-9c1e7d"  # distinctive, so a leak anywhere can be grepped for


def binary() -> str:
    found = registry_binary()
    if found is None:
        pytest.fail("docker-registry (CNCF Distribution) is not installed; the tests need it")
    return found


def seed_builds(seeder: Seeder, repository: str = "app") -> list[str]:
    """Three builds (two beyond keep_last=1) and a latest on the newest."""
    digests = [
        seeder.image(repository, [f"build-{n}"], NOW - dt.timedelta(days=10 - n), unique=f"{n}")
        for n in (1, 2, 3)
    ]
    seeder.tag(repository, "latest", digests[-1])
    return digests


def assert_one_clean_error(result: CliResult, *fragments: str, code: int = 1) -> str:
    """Exit ``code`` (1 by default), no traceback, and the cause in a single ``error:`` line."""
    assert result.code == code, result.stderr
    no_traceback(result)
    lines = [line for line in result.error_lines if all(f in line for f in fragments)]
    assert lines, result.stderr
    return lines[0]


# --- certificates ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    """A certificate and its key, written to files for the registry and the client."""

    cert: Path
    key: Path
    certificate: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, certificate: x509.Certificate, key: Any) -> Pem:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pem(cert_path, key_path, certificate)


def _builder(
    subject: str, issuer: str, public_key: Any, issuer_key: Any
) -> x509.CertificateBuilder:
    issuer_public = issuer_key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=2))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
        )
    )


def make_ca(directory: Path, stem: str) -> tuple[Pem, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        _builder(f"{stem} CA", f"{stem} CA", key.public_key(), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _write(directory, stem, certificate, key), key


def issue(
    directory: Path, stem: str, ca: Pem, ca_key: ec.EllipticCurvePrivateKey, *, server: bool
) -> Pem:
    """A leaf signed by ``ca``: for 127.0.0.1 (IP SAN) as a server, or a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(stem, ca.certificate.subject.rfc4514_string()[3:], key.public_key(), ca_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return _write(directory, stem, builder.sign(ca_key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Tls:
    ca: Pem
    server: Pem
    client_ca: Pem
    client: Pem

    def context(self, *, client: bool = False) -> ssl.SSLContext:
        """What the seeder and the readiness probe use to reach the https registry."""
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        if client:
            context.load_cert_chain(self.client.cert, self.client.key)
        return context


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    directory = tmp_path_factory.mktemp("tls")
    ca, ca_key = make_ca(directory, "registry")
    client_ca, client_ca_key = make_ca(directory, "clients")
    return Tls(
        ca=ca,
        server=issue(directory, "server", ca, ca_key, server=True),
        client_ca=client_ca,
        client=issue(directory, "client", client_ca, client_ca_key, server=False),
    )


class HttpsRegistry(RegistryServer):
    """The same registry with ``http.tls``; ready when /v2/ answers over verified TLS."""

    def __init__(self, workdir: Path, tls: Tls, *, mutual: bool = False, **config: Any) -> None:
        settings: dict[str, Any] = {
            "certificate": str(tls.server.cert),
            "key": str(tls.server.key),
        }
        if mutual:
            settings["clientcas"] = [str(tls.client_ca.cert)]
        super().__init__(workdir, binary=binary(), config={"http": {"tls": settings}, **config})
        self.url = f"https://127.0.0.1:{self.port}"
        self.context = tls.context(client=mutual)

    def _answers(self) -> bool:
        try:
            httpx.get(f"{self.url}/v2/", timeout=1, verify=self.context, trust_env=False)
        except httpx.TransportError:
            return False
        return True

    def seeder(self) -> Seeder:
        return Seeder(self.url, transport=httpx.HTTPTransport(verify=self.context))


@pytest.fixture
def https_registry(tmp_path: Path, tls: Tls) -> Iterator[HttpsRegistry]:
    server = HttpsRegistry(tmp_path / "registry", tls)
    server.start()
    yield server
    server.stop()


# --- a token issuer ---------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenIssuer:
    """A Docker token service: Basic-authenticated users, JWTs the registry can verify.

    ``grant(scope_type, name, actions)`` returns the actions to put in the token (the
    intersection the spec asks for); every request is counted per scope.
    """

    workdir: Path
    users: dict[str, str] = field(default_factory=lambda: {"ci": PASSWORD})
    grant: Callable[[str, str, list[str]], list[str]] = lambda kind, name, actions: actions
    expires_in: int = 300
    requests: Counter[str] = field(default_factory=Counter)
    issued: list[str] = field(default_factory=list)
    refused: int = 0

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        certificate = (
            _builder("token signer", "token signer", self.key.public_key(), self.key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = self.workdir / "token-signer.pem"
        self.bundle.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TokenIssuer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def registry_config(self) -> dict[str, Any]:
        token = {"realm": self.realm, "service": SERVICE, "issuer": ISSUER}
        return {"auth": {"token": {**token, "rootcertbundle": str(self.bundle)}}}

    def mint(self, scopes: list[str], subject: str = "seeder") -> str:
        """A signed JWT with the access the scopes ask for (filtered by ``grant``)."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = self.grant(kind, name, actions.split(","))
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c.decode()]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + self.expires_in,
            "nbf": now - 5,
            "iat": now,
            "jti": f"{now}-{len(self.issued)}",
            "access": access,
        }
        signing_input = ".".join(_b64url(json.dumps(part).encode()) for part in (header, claims))
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = f"{signing_input}.{_b64url(signature)}"
        self.issued.append(token)
        return token

    def _answer(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        query = parse_qs(urlsplit(path).query)
        scopes = query.get("scope", [])
        self.requests[" ".join(scopes)] += 1
        if not self._known(authorization):
            self.refused += 1
            return 401, {"details": "incorrect username or password"}
        return 200, {"token": self.mint(scopes, "ci"), "expires_in": self.expires_in}

    def _known(self, authorization: str | None) -> bool:
        if authorization is None or not authorization.startswith("Basic "):
            return False
        username, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        return self.users.get(username) == password

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = issuer._answer(self.path, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:  # quiet: pytest shows stderr on failure
                pass

        return Handler


class BearerTransport(httpx.BaseTransport):
    """The seeder's way through token auth: a minted token with push rights, per request."""

    def __init__(self, issuer: TokenIssuer) -> None:
        self._issuer = issuer
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        name = request.url.path.removeprefix("/v2/").rsplit("/", 2)[0]
        if "/blobs/uploads" in request.url.path:
            name = request.url.path.removeprefix("/v2/").split("/blobs/uploads")[0]
        token = self._issuer.mint([f"repository:{name}:pull,push,delete"])
        request.headers["Authorization"] = f"Bearer {token}"
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class BasicTransport(httpx.BaseTransport):
    """The seeder's way through htpasswd: Basic on every request, Locations included."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self._header = "Basic " + base64.b64encode(f"ci:{PASSWORD}".encode()).decode()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Authorization"] = self._header
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[TokenIssuer]:
    with TokenIssuer(tmp_path) as running:
        yield running


def token_registry(tmp_path: Path, issuer: TokenIssuer) -> RegistryServer:
    server = RegistryServer(tmp_path / "registry", binary=binary(), config=issuer.registry_config)
    server.start()
    return server


def token_policy(tmp_path: Path, server: RegistryServer, **registry: Any) -> Path:
    settings = {"url": server.url, "username": "ci", "password": "${REGISTRY_PASSWORD}"}
    return write_policy(
        tmp_path / "policy.yml", server.url, BUILDS, registry={**settings, **registry}
    )


ENV = {"REGISTRY_PASSWORD": PASSWORD}


# --- (a) htpasswd -----------------------------------------------------------------------


@pytest.fixture
def htpasswd_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    line = subprocess.run(
        ["htpasswd", "-Bbn", "ci", PASSWORD], capture_output=True, text=True, check=True
    ).stdout
    (tmp_path / "htpasswd").write_text(line)
    auth = {"auth": {"htpasswd": {"realm": "test", "path": str(tmp_path / "htpasswd")}}}
    server = RegistryServer(tmp_path / "registry", binary=binary(), config=auth)
    server.start()
    yield server
    server.stop()


def test_htpasswd_the_right_password_from_a_file_plans(
    tmp_path: Path, htpasswd_registry: RegistryServer
) -> None:
    seeder = Seeder(htpasswd_registry.url, transport=BasicTransport())
    try:
        seed_builds(seeder)
    finally:
        seeder.close()
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")  # as `kubectl create secret` from a file leaves it
    registry = {"url": htpasswd_registry.url, "username": "ci", "password_file": str(password_file)}
    policy = write_policy(tmp_path / "p.yml", htpasswd_registry.url, BUILDS, registry=registry)

    result = retention("plan", "-c", str(policy), "-o", "json")

    assert result.code == 0, result.stderr
    assert result.json()["summary"]["manifests_to_delete"] == 2


def test_htpasswd_a_missing_password_file_is_a_config_error_exit_2_at_run_time(
    tmp_path: Path, htpasswd_registry: RegistryServer
) -> None:
    missing = tmp_path / "secrets" / "password"
    registry = {"url": htpasswd_registry.url, "username": "ci", "password_file": str(missing)}
    policy = write_policy(tmp_path / "p.yml", htpasswd_registry.url, BUILDS, registry=registry)

    result = retention("run", "-c", str(policy))

    assert_one_clean_error(result, "registry.password_file", str(missing), code=2)


def test_htpasswd_a_wrong_password_is_exit_1_with_one_line(
    tmp_path: Path, htpasswd_registry: RegistryServer
) -> None:
    registry = {"url": htpasswd_registry.url, "username": "ci", "password": "${REGISTRY_PASSWORD}"}
    policy = write_policy(tmp_path / "p.yml", htpasswd_registry.url, BUILDS, registry=registry)

    result = retention("plan", "-c", str(policy), env={"REGISTRY_PASSWORD": "wrong-c4f2"})

    line = assert_one_clean_error(result, "refused our credentials", "401")
    assert "wrong-c4f2" not in result.stderr + result.stdout
    assert line.count("\n") == 0


def test_htpasswd_without_credentials_configured_says_so_and_how_to_configure_them(
    tmp_path: Path, htpasswd_registry: RegistryServer
) -> None:
    policy = write_policy(tmp_path / "p.yml", htpasswd_registry.url, BUILDS)

    result = retention("plan", "-c", str(policy))

    line = assert_one_clean_error(result, "requires authentication", "401")
    assert "no credentials are configured" in line and "registry.username" in line
    assert "refused our credentials" not in result.stderr


# --- (b) token auth ---------------------------------------------------------------------


def test_token_auth_plan_and_run_work_with_one_token_request_per_scope(
    tmp_path: Path, issuer: TokenIssuer
) -> None:
    server = token_registry(tmp_path, issuer)
    seeder = Seeder(server.url, transport=BearerTransport(issuer))
    try:
        builds = seed_builds(seeder)
        seed_builds(seeder, "team/lib")
        issuer.requests.clear()
        policy = token_policy(tmp_path, server)

        planned = retention("plan", "-c", str(policy), "-o", "json", env=ENV)
        assert planned.code == 0, planned.stderr
        assert planned.json()["summary"]["manifests_to_delete"] == 4
        assert set(issuer.requests) == {
            "",
            "registry:catalog:*",
            "repository:app:pull",
            "repository:team/lib:pull",
        }
        assert set(issuer.requests.values()) == {1}  # cached per scope, shared by concurrency

        issuer.requests.clear()
        ran = retention("run", "-c", str(policy), "-o", "json", env=ENV)
        assert ran.code == 0, ran.stderr
        assert [seeder.manifest_status("app", d) for d in builds] == [404, 404, 200]
        assert issuer.requests["repository:app:delete"] == 1
        assert issuer.requests["repository:team/lib:delete"] == 1
        assert issuer.refused == 0
    finally:
        seeder.close()
        server.stop()


async def test_token_auth_a_short_lived_token_is_fetched_again(
    tmp_path: Path, issuer: TokenIssuer
) -> None:
    issuer.expires_in = 60
    server = token_registry(tmp_path, issuer)
    seeder = Seeder(server.url, transport=BearerTransport(issuer))
    seconds = [0.0]
    settings = RegistrySettings(url=server.url, username="ci", password=PASSWORD)
    try:
        seed_builds(seeder)
        issuer.requests.clear()
        async with RegistryClient(settings, clock=lambda: seconds[0]) as client:
            await client.tags("app")
            seconds[0] = 49.0  # 60 s less a 10 s margin: still good
            await client.tags("app")
            assert issuer.requests["repository:app:pull"] == 1
            seconds[0] = 51.0
            assert sorted(await client.tags("app")) == ["build-1", "build-2", "build-3", "latest"]
        assert issuer.requests["repository:app:pull"] == 2
    finally:
        seeder.close()
        server.stop()


def test_token_auth_a_token_without_delete_rights_fails_clearly_and_deletes_nothing(
    tmp_path: Path, issuer: TokenIssuer
) -> None:
    issuer.grant = lambda kind, name, actions: [a for a in actions if a != "delete"]
    server = token_registry(tmp_path, issuer)
    seeder = Seeder(server.url, transport=BearerTransport(issuer))
    try:
        builds = seed_builds(seeder)
        policy = token_policy(tmp_path, server)

        result = retention("run", "-c", str(policy), "-o", "json", env=ENV)

        line = assert_one_clean_error(result, "repository 'app'", "'repository:app:delete'")
        assert "user 'ci'" in line and "insufficient_scope" in line
        assert [seeder.manifest_status("app", d) for d in builds] == [200, 200, 200]
    finally:
        seeder.close()
        server.stop()


def test_token_auth_a_wrong_password_is_refused_by_the_token_service_in_one_line(
    tmp_path: Path, issuer: TokenIssuer
) -> None:
    server = token_registry(tmp_path, issuer)
    try:
        policy = token_policy(tmp_path, server)
        result = retention("plan", "-c", str(policy), env={"REGISTRY_PASSWORD": "nope-81d2"})
    finally:
        server.stop()

    assert_one_clean_error(result, "the token service refused the credentials of user 'ci'")
    assert "nope-81d2" not in result.stderr + result.stdout


def test_token_auth_credentials_from_the_docker_config(tmp_path: Path, issuer: TokenIssuer) -> None:
    server = token_registry(tmp_path, issuer)
    docker = tmp_path / "docker"
    docker.mkdir()
    host = server.url.removeprefix("http://")
    auth = base64.b64encode(f"ci:{PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {f"http://{host}": {"auth": auth}}}))
    registry = {"url": server.url, "credentials": "docker"}
    policy = write_policy(tmp_path / "p.yml", server.url, BUILDS, registry=registry)
    try:
        result = retention("plan", "-c", str(policy), env={"DOCKER_CONFIG": str(docker)})
    finally:
        server.stop()

    assert result.code == 0, result.stderr
    assert issuer.refused == 0


# --- (c) TLS with an in-house CA ---------------------------------------------------------


def tls_policy(tmp_path: Path, server: HttpsRegistry, **registry: Any) -> Path:
    return write_policy(
        tmp_path / "p.yml", server.url, BUILDS, registry={"url": server.url, **registry}
    )


def test_tls_the_ca_certificate_makes_the_registry_trusted(
    tmp_path: Path, https_registry: HttpsRegistry, tls: Tls
) -> None:
    seeder = https_registry.seeder()
    try:
        seed_builds(seeder)
    finally:
        seeder.close()
    policy = tls_policy(tmp_path, https_registry, ca_cert=str(tls.ca.cert))

    result = retention("plan", "-c", str(policy), "-o", "json")

    assert result.code == 0, result.stderr
    assert result.json()["summary"]["manifests_to_delete"] == 2


def test_tls_default_verification_refuses_an_unknown_ca_in_one_line(
    tmp_path: Path, https_registry: HttpsRegistry
) -> None:
    result = retention("plan", "-c", str(tls_policy(tmp_path, https_registry)))

    line = assert_one_clean_error(result, "TLS certificate is not trusted", "registry.ca_cert")
    assert "registry.insecure" in line


def test_tls_insecure_works_and_warns(tmp_path: Path, https_registry: HttpsRegistry) -> None:
    result = retention("plan", "-c", str(tls_policy(tmp_path, https_registry, insecure=True)))

    assert result.code == 0, result.stderr
    warnings = [e for e in log_events(result.stderr) if e["event"] == "tls verification disabled"]
    assert len(warnings) == 1
    assert (warnings[0]["level"], warnings[0]["setting"]) == ("warning", "registry.insecure")


def test_tls_a_missing_ca_file_is_one_line_naming_key_and_file_and_exits_2(
    tmp_path: Path, https_registry: HttpsRegistry
) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    result = retention(
        "plan", "-c", str(tls_policy(tmp_path, https_registry, ca_cert=str(missing)))
    )

    # A file the policy names is part of the configuration: exit 2, as for the policy itself.
    assert_one_clean_error(result, f"registry.ca_cert: cannot read {missing}", code=2)


# --- (d) mutual TLS ------------------------------------------------------------------------


@pytest.fixture
def mtls_registry(tmp_path: Path, tls: Tls) -> Iterator[HttpsRegistry]:
    server = HttpsRegistry(tmp_path / "registry", tls, mutual=True)
    server.start()
    yield server
    server.stop()


def test_mtls_the_client_certificate_is_presented(
    tmp_path: Path, mtls_registry: HttpsRegistry, tls: Tls
) -> None:
    seeder = mtls_registry.seeder()
    try:
        seed_builds(seeder)
    finally:
        seeder.close()
    policy = tls_policy(
        tmp_path,
        mtls_registry,
        ca_cert=str(tls.ca.cert),
        client_cert=str(tls.client.cert),
        client_key=str(tls.client.key),
    )

    result = retention("plan", "-c", str(policy), "-o", "json")

    assert result.code == 0, result.stderr
    assert result.json()["summary"]["manifests_to_delete"] == 2


def test_mtls_without_a_client_certificate_is_one_clear_line(
    tmp_path: Path, mtls_registry: HttpsRegistry, tls: Tls
) -> None:
    policy = tls_policy(tmp_path, mtls_registry, ca_cert=str(tls.ca.cert))

    result = retention("plan", "-c", str(policy))

    assert_one_clean_error(result, "client certificate", "registry.client_cert")


def test_mtls_a_key_that_does_not_match_the_certificate_is_one_line_and_exits_2(
    tmp_path: Path, mtls_registry: HttpsRegistry, tls: Tls
) -> None:
    policy = tls_policy(
        tmp_path,
        mtls_registry,
        ca_cert=str(tls.ca.cert),
        client_cert=str(tls.client.cert),
        client_key=str(tls.server.key),
    )

    result = retention("plan", "-c", str(policy))

    assert_one_clean_error(
        result, "registry.client_cert: cannot use", "KEY_VALUES_MISMATCH", code=2
    )


# --- (e) secrets stay secret ---------------------------------------------------------------


def test_no_password_or_token_appears_in_any_output_or_report(
    tmp_path: Path, issuer: TokenIssuer
) -> None:
    server = token_registry(tmp_path, issuer)
    seeder = Seeder(server.url, transport=BearerTransport(issuer))
    report = tmp_path / "report.json"
    try:
        seed_builds(seeder)
        issuer.issued.clear()
        policy = token_policy(tmp_path, server)
        outputs = [
            retention("check", "-c", str(policy), env=ENV),
            retention("--log-level", "debug", "plan", "-c", str(policy), "-o", "json", env=ENV),
            retention(
                "--log-level",
                "debug",
                "run",
                "-c",
                str(policy),
                "-o",
                "json",
                "-f",
                str(report),
                env=ENV,
            ),
            retention("plan", "-c", str(policy), env={"REGISTRY_PASSWORD": PASSWORD + "-wrong"}),
        ]
        inline = token_policy(tmp_path, server, password=PASSWORD)  # check quotes the file
        outputs.append(retention("check", "-c", str(inline)))
    finally:
        seeder.close()
        server.stop()

    assert [o.code for o in outputs] == [0, 0, 0, 1, 0], [o.stderr for o in outputs]
    assert len(issuer.issued) >= 4  # tokens were really handed out to the CLI
    everything = "".join(o.stdout + o.stderr for o in outputs) + report.read_text()
    assert PASSWORD not in everything
    assert base64.b64encode(f"ci:{PASSWORD}".encode()).decode() not in everything
    for token in issuer.issued:
        assert token.split(".")[2] not in everything  # the signature is what makes it a secret
