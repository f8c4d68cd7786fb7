"""The registry client against an in-memory fake, for what a real registry cannot easily do.

429 storms, 503s that never end, dropped connections, lying digests and odd pagination are
produced by ``FakeRegistry`` (``tests/registry_server.py``) through ``httpx.MockTransport``;
the sleep is injected, so no test waits. The contract shared with the real registry is in
``tests/integration/test_registry_client.py``, which runs it against this fake too.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from registry_server import FAKE_URL, FakeRegistry, Seeder

from retention.core.policy import RegistrySettings
from retention.errors import (
    AuthenticationError,
    DeleteDisabled,
    InvalidManifest,
    NotFound,
    RegistryError,
    RegistryUnreachable,
    WriteRefused,
)
from retention.registry import FetchedManifest, RegistryClient, parse_created, parse_manifest
from retention.registry.retry import backoff_seconds

ACCEPT = (
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.oci.image.index.v1+json"
)
CREATED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RETRIES = 3


class Sleeps(list[float]):
    """Stands in for asyncio.sleep: records the delays instead of waiting them."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(
    fake: FakeRegistry, sleeps: Sleeps | None = None, handler: Any = None, **settings: Any
) -> RegistryClient:
    options: dict[str, Any] = {"url": FAKE_URL, "retries": RETRIES, **settings}
    return RegistryClient(
        RegistrySettings(**options),
        transport=httpx.MockTransport(handler or fake.handler),
        sleep=sleeps if sleeps is not None else Sleeps(),
    )


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(fake: FakeRegistry, sleeps: Sleeps) -> AsyncIterator[RegistryClient]:
    async with make_client(fake, sleeps) as client:
        yield client


@pytest.fixture
def fake_seeder(fake: FakeRegistry) -> Iterator[Seeder]:
    seeder = Seeder(FAKE_URL, transport=httpx.MockTransport(fake.handler))
    yield seeder
    seeder.close()


def error_response(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, json={"errors": [{"code": code, "message": code}]}, headers=headers
    )


def requests_to(fake: FakeRegistry, path: str) -> list[httpx.Request]:
    return [request for request in fake.requests if request.url.path == path]


# Retries and backoff


async def test_a_429_storm_is_retried_waiting_as_long_as_retry_after_says(
    client: RegistryClient, fake: FakeRegistry, fake_seeder: Seeder, sleeps: Sleeps
) -> None:
    fake_seeder.blob("app", b"layer")
    storm = [error_response(429, "TOOMANYREQUESTS", **{"Retry-After": "2"}) for _ in range(3)]
    fake.script("GET", "/v2/_catalog", *storm)

    assert await client.catalog() == ["app"]
    assert sleeps == [2.0, 2.0, 2.0]
    assert len(requests_to(fake, "/v2/_catalog")) == 4


async def test_a_retry_after_longer_than_the_cap_waits_only_the_cap(
    client: RegistryClient, fake: FakeRegistry, sleeps: Sleeps
) -> None:
    fake.script("GET", "/v2/", error_response(429, "TOOMANYREQUESTS", **{"Retry-After": "600"}))

    await client.ping()

    assert sleeps == [5.0]


async def test_503_on_every_attempt_raises_a_registry_error_after_all_retries(
    client: RegistryClient, fake: FakeRegistry, sleeps: Sleeps
) -> None:
    fake.script("GET", "/v2/", *[error_response(503, "UNAVAILABLE") for _ in range(RETRIES + 1)])

    with pytest.raises(RegistryError) as raised:
        await client.ping()

    assert type(raised.value) is RegistryError
    assert (raised.value.method, raised.value.status, raised.value.code) == (
        "GET",
        503,
        "UNAVAILABLE",
    )
    assert raised.value.url == f"{FAKE_URL}/v2/"
    assert len(requests_to(fake, "/v2/")) == RETRIES + 1
    assert len(sleeps) == RETRIES


async def test_backoff_between_retries_grows_exponentially_from_a_tenth_of_a_second(
    client: RegistryClient, fake: FakeRegistry, sleeps: Sleeps
) -> None:
    fake.script("GET", "/v2/", *[httpx.Response(502) for _ in range(RETRIES)])

    await client.ping()

    for attempt, slept in enumerate(sleeps):
        ceiling = 0.1 * 2**attempt
        assert ceiling / 2 <= slept <= ceiling


def test_backoff_never_exceeds_five_seconds_however_many_attempts() -> None:
    delays = [backoff_seconds(attempt) for attempt in range(20)]

    assert max(delays) <= 5.0
    assert min(delays[10:]) >= 2.5


def test_a_retry_after_date_in_the_past_means_retry_at_once() -> None:
    assert backoff_seconds(0, "Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


async def test_connection_refused_on_every_attempt_raises_registry_unreachable(
    client: RegistryClient, fake: FakeRegistry, sleeps: Sleeps
) -> None:
    refused = [httpx.ConnectError("Connection refused") for _ in range(RETRIES + 1)]
    fake.script("GET", "/v2/", *refused)

    with pytest.raises(RegistryUnreachable, match="Connection refused") as raised:
        await client.ping()

    assert raised.value.method == "GET"
    assert raised.value.status is None
    assert len(requests_to(fake, "/v2/")) == RETRIES + 1


async def test_a_dropped_connection_and_a_read_timeout_are_retried(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    fake.script("GET", "/v2/", httpx.RemoteProtocolError("peer closed"), httpx.ReadTimeout("slow"))

    await client.ping()

    assert len(requests_to(fake, "/v2/")) == 3


async def test_a_transport_error_that_cannot_heal_is_not_retried(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    fake.script("GET", "/v2/", httpx.UnsupportedProtocol("no such scheme"))

    with pytest.raises(RegistryUnreachable):
        await client.ping()

    assert len(requests_to(fake, "/v2/")) == 1


async def test_a_404_is_raised_at_once_with_the_registry_code(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    with pytest.raises(NotFound) as raised:
        await client.manifest("app", "missing")

    assert (raised.value.method, raised.value.status, raised.value.code) == (
        "GET",
        404,
        "MANIFEST_UNKNOWN",
    )
    assert raised.value.url == f"{FAKE_URL}/v2/app/manifests/missing"
    assert "MANIFEST_UNKNOWN" in str(raised.value)
    assert len(fake.requests) == 1


# Authentication


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refusal_raises_authentication_error_without_showing_the_password(
    fake: FakeRegistry, status: int
) -> None:
    fake.script("GET", "/v2/", error_response(status, "UNAUTHORIZED"))

    async with make_client(fake, username="alice", password="hunter2-secret") as client:
        with pytest.raises(AuthenticationError) as raised:
            await client.ping()

    assert (raised.value.status, raised.value.code) == (status, "UNAUTHORIZED")
    assert "hunter2" not in str(raised.value)
    assert "hunter2" not in raised.value.url


async def test_basic_credentials_are_sent_when_configured(fake: FakeRegistry) -> None:
    async with make_client(fake, username="alice", password="hunter2-secret") as client:
        await client.ping()

    expected = base64.b64encode(b"alice:hunter2-secret").decode()
    assert fake.requests[0].headers["authorization"] == f"Basic {expected}"


async def test_credentials_in_the_registry_url_never_appear_in_errors(fake: FakeRegistry) -> None:
    async with make_client(fake, url="http://alice:s3cret@127.0.0.1:9") as client:
        with pytest.raises(NotFound) as raised:
            await client.tags("nothing")

    assert "s3cret" not in str(raised.value)
    assert "s3cret" not in client.url


# Deleting


async def test_delete_answers_true_when_deleted_and_false_when_already_gone(
    client: RegistryClient, fake_seeder: Seeder
) -> None:
    digest = fake_seeder.image("app", ["v1"], CREATED)

    assert await client.delete_manifest("app", digest) is True
    assert await client.delete_manifest("app", digest) is False


async def test_405_unsupported_on_delete_raises_delete_disabled_saying_how_to_enable_it() -> None:
    fake = FakeRegistry(delete_enabled=False)
    seeder = Seeder(FAKE_URL, transport=httpx.MockTransport(fake.handler))
    digest = seeder.image("app", ["v1"], CREATED)
    seeder.close()

    async with make_client(fake) as client:
        with pytest.raises(DeleteDisabled) as raised:
            await client.delete_manifest("app", digest)

    assert (raised.value.method, raised.value.status, raised.value.code) == (
        "DELETE",
        405,
        "UNSUPPORTED",
    )
    assert "storage.delete.enabled: true" in str(raised.value)
    assert "REGISTRY_STORAGE_DELETE_ENABLED=true" in str(raised.value)


async def test_a_plain_text_405_on_delete_also_mentions_read_only_mode(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    digest = "sha256:" + "a" * 64
    fake.script("DELETE", f"/v2/app/manifests/{digest}", httpx.Response(405, text="read-only"))

    with pytest.raises(DeleteDisabled, match="read-only"):
        await client.delete_manifest("app", digest)


async def test_delete_refuses_a_tag_because_distribution_3_would_only_untag_it(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    with pytest.raises(ValueError, match="digest"):
        await client.delete_manifest("app", "latest")

    assert fake.requests == []


# Manifests and digests


async def test_every_manifest_request_accepts_exactly_the_four_manifest_types(
    client: RegistryClient, fake: FakeRegistry, fake_seeder: Seeder
) -> None:
    fake_seeder.image("app", ["v1"], CREATED)
    fake.requests.clear()

    digest, _ = await client.resolve("app", "v1")
    await client.manifest("app", digest)

    assert [r.method for r in fake.requests] == ["HEAD", "GET"]
    assert all(r.headers["accept"] == ACCEPT for r in fake.requests)


async def test_a_body_that_does_not_hash_to_its_digest_raises_invalid_manifest(
    client: RegistryClient, fake: FakeRegistry, fake_seeder: Seeder
) -> None:
    digest = fake_seeder.image("app", ["v1"], CREATED)
    fake.corrupt("app", digest, b'{"schemaVersion": 2, "tampered": true}')

    for reference in ("v1", digest):
        with pytest.raises(InvalidManifest, match=digest):
            await client.manifest("app", reference)


async def test_a_manifest_served_under_another_digest_than_asked_for_is_refused(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    body = b'{"schemaVersion": 2}'
    asked = "sha256:" + "b" * 64
    served = {"Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()}
    fake.script(
        "GET", f"/v2/app/manifests/{asked}", httpx.Response(200, content=body, headers=served)
    )

    with pytest.raises(InvalidManifest, match="asked for"):
        await client.manifest("app", asked)


async def test_resolve_without_a_digest_header_gets_the_body_and_hashes_it(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}'
    oci_index = {"Content-Type": "application/vnd.oci.image.index.v1+json"}
    fake.script("HEAD", "/v2/app/manifests/v1", httpx.Response(200, headers=oci_index))
    fake.script("GET", "/v2/app/manifests/v1", httpx.Response(200, content=body, headers=oci_index))

    digest, media_type = await client.resolve("app", "v1")

    assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert media_type == "application/vnd.oci.image.index.v1+json"


async def test_put_manifest_returns_the_digest_the_registry_stored_it_under(
    client: RegistryClient, fake_seeder: Seeder
) -> None:
    digest = fake_seeder.image("app", ["v1"], CREATED)
    fetched = await client.manifest("app", digest)

    assert await client.put_manifest("app", "v2", fetched.body, fetched.media_type) == digest
    assert (await client.resolve("app", "v2"))[0] == digest


# Blobs


async def test_upload_keeps_the_upload_state_and_adds_the_digest(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    digest = await client.upload_blob("app", b"config bytes")

    put = next(r for r in fake.requests if r.method == "PUT")
    assert put.url.params["_state"] == "state-upload-0"
    assert put.url.params["digest"] == digest
    assert await client.blob("app", digest) == b"config bytes"
    assert await client.blob_exists("app", digest) is True
    assert await client.blob_exists("app", "sha256:" + "0" * 64) is False


async def test_a_405_on_an_upload_or_manifest_put_raises_write_refused(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    """Read-only maintenance mode answers pushes 405 in plain text (measured on 2.8.2)."""
    fake.script("POST", "/v2/app/blobs/uploads/", httpx.Response(405, text="read-only"))
    fake.script("PUT", "/v2/app/manifests/v1", httpx.Response(405, text="read-only"))

    with pytest.raises(WriteRefused, match="refuses writes") as upload:
        await client.upload_blob("app", b"layer")
    with pytest.raises(WriteRefused) as manifest:
        await client.put_manifest("app", "v1", b"{}", "application/json")

    assert (upload.value.method, upload.value.status) == ("POST", 405)
    assert (manifest.value.method, manifest.value.status) == ("PUT", 405)


async def test_a_blob_is_followed_through_a_storage_redirect(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    data = b"config behind a redirect"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    storage = f"{FAKE_URL}/storage/object"
    fake.script(
        "GET", f"/v2/app/blobs/{digest}", httpx.Response(307, headers={"Location": storage})
    )
    fake.script("GET", "/storage/object", httpx.Response(200, content=data))

    assert await client.blob("app", digest) == data


async def test_a_redirect_to_storage_elsewhere_does_not_carry_the_registrys_credentials(
    fake: FakeRegistry,
) -> None:
    """A presigned storage URL has its own authorization; ours must not travel there."""
    data = b"config on another origin"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    storage = "http://storage.invalid:9000/bucket/object?X-Amz-Signature=abc"
    sent: list[tuple[str, str | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.host, request.headers.get("authorization")))
        if request.url.host == "storage.invalid":
            return httpx.Response(200, content=data)
        return httpx.Response(307, headers={"Location": storage})

    async with make_client(fake, handler=answer, username="ci", password="s3cret") as client:
        assert await client.blob("app", digest) == data

    assert [host for host, _ in sent] == [httpx.URL(FAKE_URL).host, "storage.invalid"]
    assert sent[0][1] is not None and sent[0][1].startswith("Basic ")
    assert sent[1][1] is None


async def test_a_redirect_is_not_followed_where_the_caller_did_not_ask(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    """Only blob reads follow; a manifest answered with a redirect is an unexpected status."""
    fake.script(
        "GET", "/v2/app/manifests/v1", httpx.Response(307, headers={"Location": "/elsewhere"})
    )

    with pytest.raises(RegistryError, match="307"):
        await client.manifest("app", "v1")
    assert requests_to(fake, "/elsewhere") == []


async def test_a_redirect_loop_becomes_a_registry_error_not_an_httpx_one(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    digest = "sha256:" + "e" * 64
    loop = httpx.Response(307, headers={"Location": f"/v2/app/blobs/{digest}"})
    fake.script("GET", f"/v2/app/blobs/{digest}", *[loop for _ in range(30)])

    with pytest.raises(RegistryError, match="redirects"):
        await client.blob("app", digest)


async def test_a_blob_that_does_not_hash_to_its_digest_is_refused(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    digest = "sha256:" + "c" * 64
    fake.script("GET", f"/v2/app/blobs/{digest}", httpx.Response(200, content=b"other bytes"))

    with pytest.raises(RegistryError, match="does not match"):
        await client.blob("app", digest)


async def test_a_blob_larger_than_max_bytes_is_refused_unread(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    digest = "sha256:" + "d" * 64
    fake.script("GET", f"/v2/app/blobs/{digest}", httpx.Response(200, content=b"x" * 2048))

    with pytest.raises(RegistryError, match="larger than 1024 bytes"):
        await client.blob("app", digest, max_bytes=1024)


# Listings


async def test_the_catalog_follows_relative_link_headers_over_250_repositories(
    client: RegistryClient, fake: FakeRegistry, fake_seeder: Seeder
) -> None:
    names = [f"team/app-{number:03d}" for number in range(250)]
    for name in names:
        fake_seeder.blob(name, b"layer")

    assert await client.catalog() == names
    pages = requests_to(fake, "/v2/_catalog")
    assert [page.url.params.get("last") for page in pages] == [
        None,
        "team/app-099",
        "team/app-199",
    ]


async def test_tags_follow_link_headers_as_distribution_3_pages_them() -> None:
    fake = FakeRegistry(tag_page_size=2)
    seeder = Seeder(FAKE_URL, transport=httpx.MockTransport(fake.handler))
    seeder.image("app", ["a", "b", "c", "d", "e"], CREATED)
    seeder.close()

    async with make_client(fake) as client:
        assert await client.tags("app") == ["a", "b", "c", "d", "e"]

    assert len(requests_to(fake, "/v2/app/tags/list")) == 3


async def test_a_repository_whose_tags_are_all_deleted_lists_no_tags(
    client: RegistryClient, fake_seeder: Seeder
) -> None:
    digest = fake_seeder.image("app", ["v1", "v2"], CREATED)
    await client.delete_manifest("app", digest)

    assert await client.tags("app") == []


async def test_pagination_that_points_back_at_a_seen_page_raises_instead_of_spinning(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    looping = {"Link": '</v2/_catalog>; rel="next"'}
    page = httpx.Response(200, json={"repositories": ["app"]}, headers=looping)
    fake.script("GET", "/v2/_catalog", page, page)

    with pytest.raises(RegistryError, match="loops"):
        await client.catalog()


async def test_a_listing_that_is_not_json_raises_a_registry_error(
    client: RegistryClient, fake: FakeRegistry
) -> None:
    fake.script("GET", "/v2/_catalog", httpx.Response(200, text="<html>proxy login</html>"))

    with pytest.raises(RegistryError, match="not a JSON object"):
        await client.catalog()


# Connection handling


async def test_no_more_requests_are_in_flight_than_the_concurrency_setting(
    fake: FakeRegistry,
) -> None:
    in_flight, most = 0, 0

    async def slow_handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight -= 1
        return fake.handler(request)

    async with make_client(fake, handler=slow_handler, concurrency=3) as client:
        await asyncio.gather(*(client.blob_exists("app", f"sha256:{n:064x}") for n in range(30)))

    assert most == 3


async def test_the_timeout_setting_bounds_every_phase_of_a_request(fake: FakeRegistry) -> None:
    async with make_client(fake, timeout=timedelta(seconds=7)) as client:
        await client.ping()

    assert fake.requests[0].extensions["timeout"] == {
        "connect": 7.0,
        "read": 7.0,
        "write": 7.0,
        "pool": 7.0,
    }


# Parsing manifests and configs


def fetched(document: dict[str, Any], media_type: str = "") -> FetchedManifest:
    body = json.dumps(document).encode()
    return FetchedManifest("sha256:" + hashlib.sha256(body).hexdigest(), media_type, body)


def descriptor(letter: str, size: int) -> dict[str, Any]:
    return {"mediaType": "x", "digest": "sha256:" + letter * 64, "size": size}


def test_an_image_manifest_lists_its_config_then_its_layers_as_blobs() -> None:
    manifest = fetched(
        {
            "schemaVersion": 2,
            "config": descriptor("c", 10),
            "layers": [descriptor("1", 100), descriptor("2", 200)],
        },
        "application/vnd.docker.distribution.manifest.v2+json",
    )

    parsed, config = parse_manifest(manifest)

    assert config == "sha256:" + "c" * 64
    assert [(blob.digest[7], blob.size) for blob in parsed.blobs] == [
        ("c", 10),
        ("1", 100),
        ("2", 200),
    ]
    assert (parsed.digest, parsed.size, parsed.created) == (
        manifest.digest,
        len(manifest.body),
        None,
    )


def test_an_index_lists_its_children_and_has_no_config() -> None:
    manifest = fetched(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [descriptor("a", 1), descriptor("b", 2)],
        },
        "application/json",  # a generic Content-Type: the body's mediaType decides
    )

    parsed, config = parse_manifest(manifest)

    assert config is None
    assert parsed.media_type == "application/vnd.oci.image.index.v1+json"
    assert parsed.children == ("sha256:" + "a" * 64, "sha256:" + "b" * 64)


def test_a_subject_is_kept_so_signatures_can_follow_their_image() -> None:
    manifest = fetched(
        {
            "schemaVersion": 2,
            "config": descriptor("c", 2),
            "layers": [],
            "subject": descriptor("e", 9),
        },
        "application/vnd.oci.image.manifest.v1+json",
    )

    assert parse_manifest(manifest)[0].subject == "sha256:" + "e" * 64


@pytest.mark.parametrize(
    ("document", "media_type"),
    [
        (
            {"schemaVersion": 1, "fsLayers": []},
            "application/vnd.docker.distribution.manifest.v1+json",
        ),
        ({"schemaVersion": 2}, "application/vnd.cncf.helm.chart.content.v1.tar+gzip"),
        (
            {"schemaVersion": 2, "config": descriptor("c", -1), "layers": []},
            "application/vnd.oci.image.manifest.v1+json",
        ),
        ({"schemaVersion": 2, "manifests": "none"}, "application/vnd.oci.image.index.v1+json"),
    ],
    ids=["schema1", "unknown media type", "negative size", "manifests not a list"],
)
def test_a_manifest_we_cannot_read_with_certainty_is_invalid(
    document: dict[str, Any], media_type: str
) -> None:
    with pytest.raises(InvalidManifest):
        parse_manifest(fetched(document, media_type))


def test_a_manifest_that_is_not_json_is_invalid() -> None:
    with pytest.raises(InvalidManifest, match="not JSON"):
        parse_manifest(FetchedManifest("sha256:" + "f" * 64, "application/json", b"\x89PNG"))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            b'{"created": "2024-05-01T12:00:00.123456789Z"}',
            datetime(2024, 5, 1, 12, 0, 0, 123456, UTC),
        ),
        (b'{"created": "2024-05-01T14:00:00+02:00"}', datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        (b'{"created": "1970-01-01T00:00:00Z"}', datetime(1970, 1, 1, tzinfo=UTC)),
        (b'{"created": "0001-01-01T00:00:00Z"}', None),
        (b'{"created": "yesterday"}', None),
        (b'{"created": 1714564800}', None),
        (b'{"architecture": "amd64"}', None),
        (b"[]", None),
        (b"\xff\xfe", None),
    ],
    ids=[
        "nanoseconds Z",
        "offset",
        "epoch",
        "go zero time",
        "words",
        "number",
        "missing",
        "array",
        "binary",
    ],
)
def test_the_config_created_time_is_read_as_utc_or_unknown(
    config: bytes, expected: datetime | None
) -> None:
    created = parse_created(config)

    assert created == expected
    assert created is None or created.utcoffset() == timedelta(0)


async def test_a_cookie_set_by_a_proxy_in_front_of_the_registry_is_sent_back() -> None:
    """The jar (``dispatch.py``) reads only answers with ``Set-Cookie``, and keeps what
    they set as httpx's own jar does."""
    sent: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("cookie"))
        if request.url.path == "/v2/":
            return httpx.Response(200, headers={"Set-Cookie": "route=r1; Path=/"})
        return httpx.Response(200, json={"repositories": ["app"]})

    settings = RegistrySettings(url=FAKE_URL)
    async with RegistryClient(settings, transport=httpx.MockTransport(answer)) as client:
        await client.ping()
        assert await client.catalog() == ["app"]
        await client.ping()
    assert sent == [None, "route=r1", "route=r1"]
