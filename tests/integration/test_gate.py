"""The write gate in front of a real ``docker-registry``: reads untouched, writes held off.

Every comparison is against the same registry asked directly, so what "untouched" means is
measured, not assumed. Pushes go through the gate with the test seeder (sync httpx, its
own upload code); the gate runs on its own thread exactly as ``retention serve`` runs it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta

import httpx
import pytest
from registry_server import RegistryServer, Seeder, free_port, public_tls

from retention.core.policy import Gate
from retention.registry import media_types
from retention.service import downstream
from retention.service import gate as gate_module
from retention.service.gate import BAD_GATEWAY_BODY, READ_ONLY_BODY, GateServer, WindowState

BLOB_BYTES = 5 * 1024 * 1024 + 123
HEAD_NAMES = ("content-type", "content-length", "docker-content-digest", "etag")
# Headers that may legitimately differ between two answers to the same request.
VOLATILE = {"date", "x-docker-registry-request-id"}


def gate_settings(upstream: str, **overrides: object) -> Gate:
    values: dict[str, object] = {"listen": f"127.0.0.1:{free_port()}", "upstream": upstream}
    values.update(overrides)
    return Gate.model_validate(values)


def start_gate(upstream: str, **overrides: object) -> GateServer:
    server = GateServer(gate_settings(upstream, **overrides))
    server.start()
    return server


@pytest.fixture
def gate(registry_server: RegistryServer) -> Iterator[GateServer]:
    server = start_gate(registry_server.url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def through_gate(gate: GateServer) -> Iterator[Seeder]:
    seeder = Seeder(gate.url)
    try:
        yield seeder
    finally:
        seeder.close()


def client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, trust_env=False, verify=public_tls())


def comparable(response: httpx.Response) -> dict[str, list[str]]:
    names = {name for name in response.headers if name not in VOLATILE}
    return {name: response.headers.get_list(name) for name in sorted(names)}


def close_window(gate: GateServer, timeout_s: float) -> bool:
    return asyncio.run(gate.close(timeout_s))


def open_window(gate: GateServer) -> None:
    asyncio.run(gate.open())


def state(gate: GateServer) -> WindowState:
    assert gate.gate is not None
    return gate.gate.state


# -- reads -----------------------------------------------------------------------------------


def test_manifest_head_and_get_through_the_gate_equal_the_direct_answers(
    registry_server: RegistryServer, through_gate: Seeder, gate: GateServer
) -> None:
    digest = through_gate.image("app", ["v1"], None, layers=2)
    accept = {"Accept": media_types.MANIFEST_ACCEPT}

    with client(registry_server.url) as direct, client(gate.url) as gated:
        for method in ("HEAD", "GET"):
            for reference in ("v1", digest):
                path = f"/v2/app/manifests/{reference}"
                want = direct.request(method, path, headers=accept)
                got = gated.request(method, path, headers=accept)
                assert (got.status_code, got.content) == (want.status_code, want.content)
                assert comparable(got) == comparable(want)
                assert got.headers["docker-content-digest"] == digest


def test_a_multi_megabyte_blob_and_its_ranges_pass_byte_for_byte(
    registry_server: RegistryServer, seeder: Seeder, gate: GateServer
) -> None:
    data = os.urandom(BLOB_BYTES)
    digest, _ = seeder.blob("big", data)
    path = f"/v2/big/blobs/{digest}"

    with client(registry_server.url) as direct, client(gate.url) as gated:
        whole = gated.get(path)
        assert whole.status_code == 200
        assert hashlib.sha256(whole.content).hexdigest() == digest.removeprefix("sha256:")
        assert comparable(whole) == comparable(direct.get(path))
        for span in ("bytes=0-0", "bytes=1000-2000999", f"bytes={BLOB_BYTES - 10}-"):
            want = direct.get(path, headers={"Range": span})
            got = gated.get(path, headers={"Range": span})
            assert (got.status_code, got.content) == (want.status_code, want.content)
            assert got.status_code == 206
            assert comparable(got) == comparable(want)
        assert comparable(gated.head(path)) == comparable(direct.head(path))


def test_errors_and_listings_pass_unchanged(
    registry_server: RegistryServer, through_gate: Seeder, gate: GateServer
) -> None:
    through_gate.image("listed", ["a", "b"], None)

    with client(registry_server.url) as direct, client(gate.url) as gated:
        for path in ("/v2/", "/v2/_catalog?n=1", "/v2/listed/tags/list", "/v2/nope/tags/list"):
            want, got = direct.get(path), gated.get(path)
            assert (got.status_code, got.content) == (want.status_code, want.content)
            assert comparable(got) == comparable(want)


def test_upload_locations_point_at_the_gate(gate: GateServer) -> None:
    with client(gate.url) as gated:
        started = gated.post("/v2/app/blobs/uploads/")

    assert started.status_code == 202
    assert started.headers["location"].startswith(f"{gate.url}/v2/app/blobs/uploads/")
    assert "_state=" in started.headers["location"]


def test_pushes_through_the_gate_are_stored_in_the_registry(
    seeder: Seeder, through_gate: Seeder
) -> None:
    digest = through_gate.image("pushed", ["v1"], None, layers=3)

    assert seeder.digest("pushed", "v1") == digest


def test_a_chunked_upload_through_the_gate_is_stored_whole(
    seeder: Seeder, gate: GateServer
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    with client(gate.url) as gated:
        location = gated.post("/v2/chunked/blobs/uploads/").headers["location"]
        for start in range(0, len(data), 1024 * 1024):
            piece = data[start : start + 1024 * 1024]
            end = start + len(piece) - 1
            patched = gated.patch(
                location,
                content=iter([piece]),  # a generator: sent chunked, no Content-Length
                headers={"Content-Range": f"{start}-{end}"},
            )
            assert patched.status_code == 202, patched.text
            location = patched.headers["location"]
        done = gated.put(httpx.URL(location).copy_merge_params({"digest": digest}))

    assert done.status_code == 201, done.text
    assert seeder.blob_status("chunked", digest) == 200


# -- the window ------------------------------------------------------------------------------


def test_writes_in_a_closed_window_get_the_read_only_answer_of_distribution(
    gate: GateServer, through_gate: Seeder, tmp_path_factory: pytest.TempPathFactory
) -> None:
    digest = through_gate.image("app", ["v1"], None)
    readonly = RegistryServer(
        tmp_path_factory.mktemp("readonly"),
        binary=gate_registry_binary(),
        config={"storage": {"maintenance": {"readonly": {"enabled": True}}}},
    )
    readonly.start()
    try:
        assert close_window(gate, 5)
        requests = [
            ("POST", "/v2/app/blobs/uploads/"),
            ("PUT", "/v2/app/manifests/v2"),
            ("DELETE", f"/v2/app/manifests/{digest}"),
            ("DELETE", f"/v2/app/blobs/{digest}"),
        ]
        with client(readonly.url) as measured, client(gate.url) as gated:
            for method, path in requests:
                want = measured.request(method, path, content=b"{}")
                got = gated.request(method, path, content=b"{}")
                assert (got.status_code, got.content) == (want.status_code, want.content)
                assert comparable(got) == comparable(want)
                assert got.content == READ_ONLY_BODY
            assert gated.get(f"/v2/app/manifests/{digest}").status_code == 200  # reads go on
    finally:
        readonly.stop()
        open_window(gate)

    assert through_gate.image("app", ["v2"], None)  # open again: pushes work


def gate_registry_binary() -> str:
    from registry_server import registry_binary

    binary = registry_binary()
    assert binary is not None
    return binary


def test_a_push_during_the_window_fails_with_the_read_only_error_and_works_after(
    gate: GateServer, through_gate: Seeder
) -> None:
    assert close_window(gate, 5)
    with pytest.raises(AssertionError, match="answered 405"):
        through_gate.image("app", ["v1"], None)
    open_window(gate)

    assert through_gate.image("app", ["v1"], None)


def test_the_drain_waits_for_an_upload_in_flight_and_then_closes(
    seeder: Seeder, gate: GateServer
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield data[:1024]
        release.wait(10)
        yield data[1024:]

    with client(gate.url) as gated:
        location = gated.post("/v2/slow/blobs/uploads/").headers["location"]
        target = httpx.URL(location).copy_merge_params({"digest": digest})
        result: dict[str, int] = {}
        pusher = threading.Thread(
            target=lambda: result.update(status=gated.put(target, content=slow_body()).status_code)
        )
        pusher.start()
        closing = threading.Thread(target=lambda: result.update(closed=close_window(gate, 20)))
        closing.start()
        closing.join(0.5)
        assert closing.is_alive() and state(gate) is WindowState.DRAINING
        assert gated.post("/v2/other/blobs/uploads/").status_code == 405  # nothing new starts
        release.set()
        pusher.join(10)
        closing.join(10)

    assert result == {"status": 201, "closed": 1}
    assert state(gate) is WindowState.CLOSED
    assert seeder.blob_status("slow", digest) == 200
    open_window(gate)


def test_an_abandoned_upload_session_times_the_drain_out_and_the_window_stays_open(
    gate: GateServer,
) -> None:
    with client(gate.url) as gated:
        assert gated.post("/v2/abandoned/blobs/uploads/").status_code == 202

        assert close_window(gate, 0.5) is False
        assert state(gate) is WindowState.OPEN
        assert gated.post("/v2/abandoned/blobs/uploads/").status_code == 202


def test_a_finished_or_cancelled_session_no_longer_holds_the_drain(
    gate: GateServer, through_gate: Seeder
) -> None:
    through_gate.image("done", ["v1"], None, layers=2)  # sessions finished by their PUT
    with client(gate.url) as gated:
        location = gated.post("/v2/cancelled/blobs/uploads/").headers["location"]
        assert gated.delete(location).status_code == 204

    assert close_window(gate, 2)
    open_window(gate)


def test_a_session_idle_beyond_abandon_after_stops_holding_the_drain(
    registry_server: RegistryServer,
) -> None:
    gate = start_gate(registry_server.url, abandon_after=timedelta(seconds=1))
    try:
        with client(gate.url) as gated:
            assert gated.post("/v2/abandoned/blobs/uploads/").status_code == 202
        assert close_window(gate, 5)
        open_window(gate)
    finally:
        gate.stop()


def test_a_gate_that_cannot_listen_says_which_key(registry_server: RegistryServer) -> None:
    from retention.errors import GateError

    first = start_gate(registry_server.url)
    try:
        second = GateServer(first.settings)
        with pytest.raises(GateError, match=r"gate\.listen=127\.0\.0\.1:\d+"):
            second.start()
    finally:
        first.stop()


def test_a_final_put_with_a_wrong_digest_ends_the_session_as_the_registry_does(
    gate: GateServer,
) -> None:
    with client(gate.url) as gated:
        location = gated.post("/v2/wrong/blobs/uploads/").headers["location"]
        wrong = httpx.URL(location).copy_merge_params({"digest": "sha256:" + "0" * 64})
        assert gated.put(wrong, content=b"data").status_code == 400
        assert gated.get(location).status_code == 404  # Distribution cancelled the upload

    assert close_window(gate, 2)
    open_window(gate)


# -- a registry that breaks off -----------------------------------------------------------


@pytest.mark.parametrize("length", [128 * 1024, 4 * 1024 * 1024], ids=["relayed", "spliced"])
def test_a_body_the_upstream_breaks_off_reaches_the_client_as_a_broken_connection(
    length: int,
) -> None:
    """A short body must never look complete: the client's connection is dropped too."""
    with short_body_server(length, sent=length // 2) as upstream:
        server = start_gate(upstream)
        try:
            with client(server.url) as gated, pytest.raises(httpx.RemoteProtocolError):
                gated.get("/v2/broken/blobs/sha256:" + "0" * 64)  # not a ReadTimeout
        finally:
            server.stop()


@contextmanager
def short_body_server(
    length: int, sent: int, scripted: bytes | None = None, received: list[bytes] | None = None
) -> Iterator[str]:
    """An upstream that promises ``length`` bytes, sends ``sent`` and closes (a registry
    cannot be made to do this on purpose, so this one is a socket of the test's own), or
    that sends ``scripted`` as it is; what it read goes to ``received``."""

    def answer(connection: socket.socket) -> None:
        (received if received is not None else []).append(connection.recv(65536))
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n".encode()
        connection.sendall(scripted or head + b"x" * sent)

    with one_connection_server(answer) as url:
        yield url


@contextmanager
def one_connection_server(
    handle: Callable[[socket.socket], None], ended: threading.Event | None = None
) -> Iterator[str]:
    """A socket of the test's own on 127.0.0.1 that accepts one connection and ``handle``s
    it, for what a real registry cannot be made to do; ``ended`` is set when the test is
    done with it (a handler may wait for it)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                handle(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        if ended is not None:
            ended.set()
        listener.close()
        thread.join(timeout=10)


# -- the gate's own connections to the registry --------------------------------------------


def test_a_registry_that_refuses_connections_gets_the_client_a_clean_502() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    server = start_gate(f"http://127.0.0.1:{port}")  # nothing listens there any more
    try:
        with client(server.url) as gated:
            answer = gated.get("/v2/")
            assert (answer.status_code, answer.content) == (502, BAD_GATEWAY_BODY)
            assert gated.get("/v2/").status_code == 502  # and the gate goes on answering
    finally:
        server.stop()


def test_a_chunked_answer_of_the_registry_reaches_the_client_whole() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: listing\r\n\r\n"
        b'6\r\n{"a": \r\n3;x=y\r\n1}\n\r\n0\r\n\r\n'
    )
    with short_body_server(0, 0, scripted=answer) as upstream:
        server = start_gate(upstream)
        try:
            with client(server.url) as gated:
                got = gated.get("/v2/_catalog")
        finally:
            server.stop()

    assert (got.status_code, got.content) == (200, b'{"a": 1}\n')
    assert got.headers["x-kind"] == "listing"


def test_hop_by_hop_headers_and_those_connection_names_stop_at_the_gate_both_ways() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nConnection: X-Upstream-Hop\r\nX-Upstream-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
    )
    received: list[bytes] = []
    with short_body_server(0, 0, scripted=answer, received=received) as upstream:
        server = start_gate(upstream)
        try:
            with client(server.url) as gated:
                got = gated.get(
                    "/v2/",
                    headers={
                        "Connection": "keep-alive, X-Client-Hop",
                        "X-Client-Hop": "1",
                        "Proxy-Authorization": "Basic x",
                        "X-Forwarded": "kept",
                    },
                )
        finally:
            server.stop()

    sent = received[0].lower()
    assert b"x-forwarded: kept\r\n" in sent
    assert b"x-client-hop" not in sent and b"proxy-authorization" not in sent
    assert sent.count(b"host:") == 1 and b"connection:" not in sent
    assert (got.status_code, got.content, got.headers["x-kept"]) == (200, b"ok", "yes")
    assert "x-upstream-hop" not in got.headers and "keep-alive" not in got.headers


def test_large_blobs_keep_their_upstream_connection_for_the_next_request(
    seeder: Seeder, gate: GateServer
) -> None:
    digest, _ = seeder.blob("big", os.urandom(BLOB_BYTES))

    with client(gate.url) as gated:
        for _ in range(3):
            whole = gated.get(f"/v2/big/blobs/{digest}")
            assert hashlib.sha256(whole.content).hexdigest() == digest.removeprefix("sha256:")

    assert gate.gate is not None and gate.gate.idle_upstream_connections == 1


@pytest.mark.parametrize("spliced", [False, True], ids=["relayed", "spliced"])
def test_clients_leaving_mid_body_leave_no_connection_open_behind_them(
    seeder: Seeder, gate: GateServer, monkeypatch: pytest.MonkeyPatch, spliced: bool
) -> None:
    if not spliced:
        monkeypatch.setattr(gate_module, "SPLICE_MIN_BYTES", 1 << 62)
    digest, _ = seeder.blob("big", os.urandom(4 * BLOB_BYTES))
    path = f"/v2/big/blobs/{digest}"
    with client(gate.url) as gated:  # the kept connection and the spare pipe exist before
        assert gated.get(path).status_code == 200
    before = len(os.listdir("/proc/self/fd"))

    for _ in range(8):
        with socket.create_connection(("127.0.0.1", gate.settings.port)) as leaving:
            leaving.sendall(f"GET {path} HTTP/1.1\r\nHost: gate\r\n\r\n".encode())
            assert leaving.recv(65536).startswith(b"HTTP/1.1 200")
            leaving.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")

    def settled() -> bool:
        return len(os.listdir("/proc/self/fd")) <= before + 1

    deadline = time.monotonic() + 10
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert settled(), f"{len(os.listdir('/proc/self/fd'))} descriptors open, {before} before"
    with client(gate.url) as gated:
        assert gated.head(path).status_code == 200  # and the gate still serves


# -- the gate's own server towards clients --------------------------------------------------


def raw_exchange(gate: GateServer, data: bytes, *, until: bytes, closed: bool = False) -> bytes:
    """Send raw bytes to the gate and read until ``until`` has come (or the gate closed)."""
    received = b""
    with socket.create_connection(("127.0.0.1", gate.settings.port), timeout=10) as raw:
        raw.sendall(data)
        while until not in received or closed:
            piece = raw.recv(65536)
            if not piece:
                break
            received += piece
    return received


def test_pipelined_requests_are_answered_in_order_on_one_connection(gate: GateServer) -> None:
    requests = [
        b"GET /v2/ HTTP/1.1\r\nHost: gate\r\n\r\n",
        b"HEAD /v2/nope/manifests/v1 HTTP/1.1\r\nHost: gate\r\n\r\n",
        b"GET /v2/_catalog HTTP/1.1\r\nHost: gate\r\n\r\n",
    ]

    received = raw_exchange(gate, b"".join(requests), until=b'"repositories"')

    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", received) == [b"200", b"404", b"200"]


def test_a_write_that_expects_100_continue_gets_it_before_sending_its_body(
    gate: GateServer, seeder: Seeder
) -> None:
    data = b"a layer sent after the interim answer"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with client(gate.url) as gated:
        location = httpx.URL(gated.post("/v2/cont/blobs/uploads/").headers["location"])
    target = location.copy_merge_params({"digest": digest}).raw_path
    head = b"PUT %b HTTP/1.1\r\nHost: gate\r\nExpect: 100-continue\r\n" % target

    with socket.create_connection(("127.0.0.1", gate.settings.port), timeout=10) as raw:
        raw.sendall(head + b"Content-Length: %d\r\n\r\n" % len(data))
        assert raw.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        raw.sendall(data)
        assert raw.recv(65536).startswith(b"HTTP/1.1 201 Created\r\n")

    assert seeder.blob_status("cont", digest) == 200


def test_a_refused_write_that_expects_100_continue_gets_only_the_read_only_answer(
    gate: GateServer,
) -> None:
    assert close_window(gate, 5)
    try:
        received = raw_exchange(
            gate,
            b"PUT /v2/app/manifests/v1 HTTP/1.1\r\nHost: gate\r\nExpect: 100-continue\r\n"
            b"Content-Length: 1000\r\n\r\n",
            until=READ_ONLY_BODY,
            closed=True,  # the body was never read: the connection cannot serve another
        )
    finally:
        open_window(gate)

    assert received.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"100 Continue" not in received and received.endswith(READ_ONLY_BODY)
    assert b"Connection: close\r\n" in received  # a client must not send more on it


def test_a_refused_write_with_a_small_body_keeps_its_connection_for_the_next_request(
    gate: GateServer,
) -> None:
    # The body in a packet of its own: the gate must read it, not leave it for the parser
    # as the next request, nor close a connection the client is about to use again.
    refused = b"PUT /v2/app/manifests/v2 HTTP/1.1\r\nHost: gate\r\nContent-Length: 2\r\n\r\n"
    assert close_window(gate, 5)
    try:
        with socket.create_connection(("127.0.0.1", gate.settings.port), timeout=10) as raw:
            raw.sendall(refused)
            time.sleep(0.05)
            raw.sendall(b"{}")
            answer = raw.recv(65536)
            raw.sendall(b"GET /v2/ HTTP/1.1\r\nHost: gate\r\n\r\n")
            following = raw.recv(65536)
    finally:
        open_window(gate)

    assert answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"Connection: close" not in answer and answer.endswith(READ_ONLY_BODY)
    assert following.startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_refused_write_with_a_large_body_says_its_connection_closes(gate: GateServer) -> None:
    size = downstream.DISCARD_MAX_BYTES + 1
    head = b"PUT /v2/app/blobs/uploads/x HTTP/1.1\r\nHost: gate\r\nContent-Length: %d\r\n\r\n"
    assert close_window(gate, 5)
    try:
        received = raw_exchange(
            gate,
            head % size + b"x" * 1000,
            until=READ_ONLY_BODY,
            closed=True,  # the rest of the body never came: the connection cannot serve another
        )
    finally:
        open_window(gate)

    assert received.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"Connection: close\r\n" in received


def test_a_malformed_request_gets_a_400_and_its_connection_is_closed(gate: GateServer) -> None:
    received = raw_exchange(
        gate, b"GET /v2/ HTTP/1.1\r\nno colon here\r\n\r\n", until=b"", closed=True
    )

    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in received


def test_a_kept_alive_connection_idle_too_long_is_closed_and_a_busy_one_is_not(
    gate: GateServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downstream, "KEEPALIVE_S", 0.5)
    request = b"GET /v2/ HTTP/1.1\r\nHost: gate\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gate.settings.port), timeout=10) as raw:
        for _ in range(4):  # busy across more than one idle period
            raw.sendall(request)
            assert raw.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
            time.sleep(0.3)
        started = time.monotonic()
        assert raw.recv(65536) == b""  # closed by the gate

    assert time.monotonic() - started < 2


def test_many_pipelined_requests_pause_reading_and_are_all_answered(
    gate: GateServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downstream, "MAX_QUEUED", 4)
    request = b"GET /v2/ HTTP/1.1\r\nHost: gate\r\n\r\n"
    last = b"GET /v2/_catalog HTTP/1.1\r\nHost: gate\r\n\r\n"

    received = raw_exchange(gate, request * 40 + last, until=b'"repositories"')

    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", received) == [b"200"] * 41


# -- failures of the gate's own and a registry that hangs ------------------------------------


def test_a_request_the_gate_fails_on_gets_a_500_and_the_connection_serves_on(
    gate: GateServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug on one request must not look like a network fault: 500, and the next request on
    the same connection is answered."""
    building = gate_module.WriteGate._request_head

    def failing(self: gate_module.WriteGate, request: downstream.Request) -> bytes:
        if request.path == "/v2/boom":
            raise RuntimeError("a bug")
        return building(self, request)

    monkeypatch.setattr(gate_module.WriteGate, "_request_head", failing)
    requests = b"GET /v2/boom HTTP/1.1\r\nHost: gate\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: gate\r\n\r\n"

    received = raw_exchange(gate, requests, until=b"{}")

    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", received) == [b"500", b"200"]
    assert downstream.INTERNAL_ERROR_BODY in received and b"Connection: close" not in received


@contextmanager
def silent_server(answer: bytes) -> Iterator[str]:
    """An upstream that reads a request, sends ``answer`` and then nothing, connection open
    (a hung registry; a real one cannot be made to hang on purpose)."""
    ended = threading.Event()

    def hang(connection: socket.socket) -> None:
        connection.recv(65536)
        connection.sendall(answer)
        ended.wait(60)  # longer than the client waits

    with one_connection_server(hang, ended) as url:
        yield url


def test_a_registry_that_never_answers_gets_the_client_a_502_after_the_read_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gate_module, "READ_TIMEOUT_S", 0.5)
    with silent_server(b"") as upstream:
        server = start_gate(upstream)
        try:
            with client(server.url) as gated:
                started = time.monotonic()
                answer = gated.get("/v2/")
                waited = time.monotonic() - started
        finally:
            server.stop()

    assert (answer.status_code, answer.content) == (502, BAD_GATEWAY_BODY)
    assert 0.4 < waited < 10


@pytest.mark.parametrize("length", [128 * 1024, 4 * 1024 * 1024], ids=["relayed", "spliced"])
def test_a_body_the_registry_stops_sending_reaches_the_client_as_a_broken_connection(
    length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gate_module, "READ_TIMEOUT_S", 0.5)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length
    with silent_server(head + b"x" * (length // 2)) as upstream:
        server = start_gate(upstream)
        started = time.monotonic()
        try:
            with client(server.url) as gated, pytest.raises(httpx.RemoteProtocolError):
                gated.get("/v2/stalled/blobs/sha256:" + "0" * 64)  # not a ReadTimeout (30 s)
        finally:
            server.stop()

    assert time.monotonic() - started < 10  # the gate gave up, not the silent registry
