"""The client's HTTP/1.1 transport (``registry/transport.py`` on ``registry/http1.py``)
against the real registry, and its failures as httpx's exceptions.

The contract tests (``test_registry_client.py``, ``test_inventory.py``) already run through
it; these are the parts they do not reach: bodies of every framing, connections kept and
given back, a registry that restarts under a kept connection, and each way of failing.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from registry_server import RegistryServer, Seeder

from retention.registry.transport import Http1Transport

TIMEOUT = httpx.Timeout(5.0)


def client(url: str, transport: Http1Transport | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, transport=transport or Http1Transport(None), timeout=TIMEOUT
    )


def pools(transport: Http1Transport) -> int:
    """Connections kept idle over all of the transport's pools."""
    return sum(pool.idle for pool in transport._pools.values())


async def test_a_blob_of_several_mb_comes_whole_and_its_connection_is_kept(
    registry_server: RegistryServer, seeder: Seeder
) -> None:
    data = bytes(range(256)) * (3 * 4096 + 7)  # about 3 MB: many reads past the head's
    digest, _ = seeder.blob("big/blob", data)
    transport = Http1Transport(None)
    async with client(registry_server.url, transport) as http:
        response = await http.send(
            http.build_request("GET", f"/v2/big/blob/blobs/{digest}"), stream=True
        )
        assert pools(transport) == 0  # streamed: the connection is the response's until read
        await response.aread()
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == digest.removeprefix("sha256:")
        assert pools(transport) == 1
        head = await http.head(f"/v2/big/blob/blobs/{digest}")  # no body though a length
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(data))
        assert pools(transport) == 1  # the same connection, given back twice


async def test_a_small_answer_is_read_at_once_and_its_connection_is_back_before_httpx_reads_it(
    registry_server: RegistryServer,
) -> None:
    transport = Http1Transport(None)
    async with client(registry_server.url, transport) as http:
        response = await http.send(http.build_request("GET", "/v2/"), stream=True)
        assert pools(transport) == 1  # given back while the response is still open
        assert (await response.aread()) == b"{}"
        await response.aclose()
        assert pools(transport) == 1


async def test_a_streamed_upload_goes_chunked_and_the_registry_takes_it(
    registry_server: RegistryServer,
) -> None:
    pieces = [b"a" * 70_000, b"b" * 5, b"c" * 300_000]
    digest = "sha256:" + hashlib.sha256(b"".join(pieces)).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async with client(registry_server.url) as http:
        started = await http.post("/v2/up/load/blobs/uploads/")
        assert started.status_code == 202
        location = httpx.URL(started.headers["location"])
        done = await http.put(location.copy_merge_params({"digest": digest}), content=body())
        assert done.status_code == 201, done.text
        assert (await http.get(f"/v2/up/load/blobs/{digest}")).content == b"".join(pieces)


async def test_a_kept_connection_the_registry_closed_by_restarting_is_replaced(
    registry_server: RegistryServer,
) -> None:
    transport = Http1Transport(None)
    async with client(registry_server.url, transport) as http:
        assert (await http.get("/v2/")).status_code == 200
        assert pools(transport) == 1
        registry_server.stop()
        registry_server.start()
        assert (await http.get("/v2/")).status_code == 200  # a GET is sent once more


async def test_a_refused_connection_is_httpxs_connect_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with client(f"http://127.0.0.1:{port}") as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/v2/")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts and reads, and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


async def test_a_registry_that_never_answers_is_a_read_timeout(silent_server: str) -> None:
    async with httpx.AsyncClient(
        base_url=silent_server,
        transport=Http1Transport(None),
        timeout=httpx.Timeout(5.0, read=0.3),
    ) as http:
        with pytest.raises(httpx.ReadTimeout, match=r"sent nothing for 0\.3s"):
            await http.get("/v2/")


async def test_a_cancelled_request_stays_a_cancellation_and_its_connection_is_dropped(
    silent_server: str,
) -> None:
    transport = Http1Transport(None)
    async with client(silent_server, transport) as http:
        request = asyncio.create_task(http.get("/v2/"))
        await asyncio.sleep(0.2)
        request.cancel()
        with pytest.raises(asyncio.CancelledError) as cancelled:
            await request
        assert cancelled.value.__cause__ is None  # passed on, not translated or re-caused
        assert pools(transport) == 0


async def test_closing_the_transport_ends_a_request_still_in_flight(silent_server: str) -> None:
    """The pool ends every connection it made, not only the idle ones (``http1.py``)."""
    transport = Http1Transport(None)
    http = client(silent_server, transport)
    request = asyncio.create_task(http.get("/v2/"))
    await asyncio.sleep(0.2)
    await http.aclose()
    async with asyncio.timeout(2):  # not the 5 s read timeout
        with pytest.raises(httpx.ReadError, match="closed the connection"):
            await request


@asynccontextmanager
async def answering(answer: bytes) -> AsyncIterator[str]:
    """A server that reads a request head, sends ``answer`` and closes: its URL."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_an_answer_that_is_not_http_is_a_remote_protocol_error() -> None:
    async with answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n") as url, client(url) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="no HTTP/1 status line"):
            await http.get("/v2/")


async def test_a_body_that_breaks_off_is_a_read_error_and_its_connection_is_dropped() -> None:
    transport = Http1Transport(None)
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    async with answering(short) as url, client(url, transport) as http:
        with pytest.raises(httpx.ReadError, match="ended 91 bytes early"):
            await http.get("/v2/")
        assert pools(transport) == 0


async def test_an_ftp_url_is_refused_as_an_unsupported_protocol() -> None:
    async with client("http://127.0.0.1:9") as http:
        with pytest.raises(httpx.UnsupportedProtocol, match=r"no HTTP/1\.1 transport"):
            await http.get("ftp://127.0.0.1/file")
