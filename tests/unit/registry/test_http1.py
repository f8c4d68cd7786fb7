"""The gate's pool of connections to the registry, against a scripted upstream.

A real registry cannot be made to close a kept connection just as a request arrives, to
answer chunked, with 1xx, or with a malformed head, so these answers come from a socket
server of the test's own: each request it reads gets the next scripted action.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from yarl import URL

from retention.errors import UpstreamProtocolError, UpstreamTimeout
from retention.registry.http1 import Exchange, UpstreamPool

DROP = b""  # read the request, then close the connection without an answer
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Closing(bytes):
    """An answer after which the scripted registry closes the connection."""


class Stalled(bytes):
    """What the scripted registry sends before it goes silent, connection open, until the
    test ends (a hung registry)."""


@dataclass
class Upstream:
    """What the scripted registry saw: one entry per connection, its requests' heads."""

    url: URL
    connections: list[list[bytes]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(len(heads) for heads in self.connections)


@asynccontextmanager
async def scripted(*actions: bytes, close_after: bool = False) -> AsyncIterator[Upstream]:
    """A registry that answers its requests, in order, with ``actions`` (``DROP``: close)."""
    queue = list(actions)
    upstream = Upstream(URL("http://127.0.0.1"))
    ended = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads: list[bytes] = []
        upstream.connections.append(heads)
        try:
            while queue:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                upstream.bodies.append(await read_body(reader, head))
                action = queue.pop(0)
                if isinstance(action, Stalled):
                    writer.write(action)
                    await ended.wait()
                    break
                if action == DROP:
                    break
                writer.write(action)
                await writer.drain()
                if close_after or isinstance(action, Closing):
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    upstream.url = URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        yield upstream
    finally:
        ended.set()
        server.close()
        await server.wait_closed()


async def read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
        return body
    if b"content-length:" in lower:
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        return await reader.readexactly(length)
    return b""


def request(method: str = "GET", path: str = "/v2/", extra: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: registry\r\n".encode() + extra


async def ask(
    pool: UpstreamPool, method: str = "GET", body: list[bytes] | None = None
) -> tuple[Exchange, bytes]:
    """One exchange read to its end and released; its answer's body."""
    pieces = [*(body or []), b""]

    async def next_piece() -> bytes:
        return pieces.pop(0)

    length = None if body is None else sum(map(len, body))
    extra = b"" if body is None else b"Content-Length: %d\r\n" % length if length else b""
    source = None if body is None else next_piece
    exchange = await pool.send(method, request(method, extra=extra), source, length=length or None)
    try:
        received = b"".join([chunk async for chunk in exchange.body()])
    finally:
        pool.release(exchange)
    return exchange, received


def new_pool(upstream: Upstream, read_timeout_s: float = 300.0) -> UpstreamPool:
    return UpstreamPool(upstream.url, connect_timeout_s=5, read_timeout_s=read_timeout_s)


async def settle() -> None:
    """Let the loop take in what the scripted server did (a close, say)."""
    for _ in range(5):
        await asyncio.sleep(0.01)


# -- keeping connections -------------------------------------------------------------------


async def test_a_connection_whose_answer_was_read_whole_serves_the_next_request() -> None:
    async with scripted(OK, OK, OK) as upstream:
        pool = new_pool(upstream)
        for _ in range(3):
            _, body = await ask(pool)
            assert body == b"ok"
        pool.close()

    assert [len(heads) for heads in upstream.connections] == [3]


async def test_a_get_on_a_kept_connection_the_registry_dropped_is_sent_once_more() -> None:
    async with scripted(OK, DROP, OK) as upstream:
        pool = new_pool(upstream)
        await ask(pool)
        exchange, body = await ask(pool)
        pool.close()

    assert (exchange.head.status, body) == (200, b"ok")
    assert [len(heads) for heads in upstream.connections] == [2, 1]


async def test_a_post_on_a_kept_connection_the_registry_dropped_is_not_sent_again() -> None:
    async with scripted(OK, DROP, OK) as upstream:
        pool = new_pool(upstream)
        await ask(pool)
        with pytest.raises(ConnectionError):
            await ask(pool, "POST")
        pool.close()

    assert upstream.requests == 2  # the first GET and the one POST


async def test_a_get_with_a_body_on_a_dropped_connection_is_not_sent_again() -> None:
    async with scripted(OK, DROP, OK) as upstream:
        pool = new_pool(upstream)
        await ask(pool)
        with pytest.raises(ConnectionError):
            await ask(pool, "PUT", body=[b"data"])
        pool.close()

    assert upstream.requests == 2


async def test_a_request_dropped_on_a_new_connection_is_not_sent_again() -> None:
    async with scripted(DROP, OK) as upstream:
        pool = new_pool(upstream)
        with pytest.raises(ConnectionError):
            await ask(pool)
        pool.close()

    assert upstream.requests == 1


async def test_the_second_attempt_is_the_last_one() -> None:
    async with scripted(OK, DROP, DROP, OK) as upstream:
        pool = new_pool(upstream)
        await ask(pool)
        with pytest.raises(ConnectionError):
            await ask(pool)
        pool.close()

    assert upstream.requests == 3


async def test_an_answer_already_begun_on_a_dropped_connection_is_not_asked_again() -> None:
    async with scripted(OK, Closing(b"HTTP/1.1 200 OK\r\nContent-"), OK) as upstream:
        pool = new_pool(upstream)
        await ask(pool)
        with pytest.raises(ConnectionError):
            await ask(pool)
        pool.close()

    assert upstream.requests == 2


async def test_a_kept_connection_the_registry_closed_while_idle_is_not_used() -> None:
    async with scripted(OK, OK, close_after=True) as upstream:
        pool = new_pool(upstream)
        await ask(pool)
        await settle()
        _, body = await ask(pool)
        pool.close()

    assert body == b"ok"
    assert [len(heads) for heads in upstream.connections] == [1, 1]


async def test_connection_close_from_the_registry_means_a_new_connection_next_time() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    async with scripted(closing, OK) as upstream:
        pool = new_pool(upstream)
        await ask(pool)
        assert pool.idle == 0
        await ask(pool)
        pool.close()

    assert len(upstream.connections) == 2


# -- framing -------------------------------------------------------------------------------


async def test_a_chunked_answer_arrives_whole_without_its_framing_and_keeps_the_connection() -> (
    None
):
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer-Name: x\r\n\r\n"
    )
    async with scripted(chunked, OK) as upstream:
        pool = new_pool(upstream)
        _, body = await ask(pool)
        assert pool.idle == 1
        _, after = await ask(pool)
        pool.close()

    assert (body, after) == (b"hello, world", b"ok")
    assert len(upstream.connections) == 1


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ],
    ids=["204", "304 with a length", "HEAD with a length", "HEAD chunked"],
)
async def test_answers_without_a_body_end_at_their_head_and_keep_the_connection(
    method: str, answer: bytes
) -> None:
    async with scripted(answer, OK) as upstream:
        pool = new_pool(upstream)
        exchange, body = await ask(pool, method)
        assert exchange.finished and body == b""
        _, after = await ask(pool)
        pool.close()

    assert after == b"ok"
    assert len(upstream.connections) == 1


async def test_interim_1xx_answers_are_skipped_for_the_final_one() -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
    async with scripted(hints + b"HTTP/1.1 100 Continue\r\n\r\n" + OK) as upstream:
        pool = new_pool(upstream)
        exchange, body = await ask(pool)
        pool.close()

    assert (exchange.head.status, body) == (200, b"ok")
    assert ("Link", "</style.css>") not in exchange.head.headers


async def test_an_http_1_0_answer_without_a_length_runs_until_the_close() -> None:
    async with scripted(b"HTTP/1.0 200 OK\r\nX-A: b\r\n\r\nuntil the end", close_after=True) as up:
        pool = new_pool(up)
        exchange, body = await ask(pool)
        pool.close()

    assert body == b"until the end"
    assert exchange.head.headers == [("X-A", "b")] and pool.idle == 0


async def test_a_body_cut_short_raises_and_its_connection_is_not_kept() -> None:
    async with scripted(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", close_after=True
    ) as up:
        pool = new_pool(up)
        with pytest.raises(ConnectionResetError, match="5 bytes early"):
            await ask(pool)
        assert pool.idle == 0
        pool.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["status line", "no colon", "folded", "two lengths", "negative length", "bad chunk"],
)
async def test_a_malformed_answer_is_an_upstream_error_and_drops_the_connection(
    answer: bytes,
) -> None:
    async with scripted(answer) as upstream:
        pool = new_pool(upstream)
        with pytest.raises(UpstreamProtocolError):
            await ask(pool)
        assert pool.idle == 0
        pool.close()


# -- request bodies ------------------------------------------------------------------------


async def test_a_body_of_known_length_and_a_chunked_one_reach_the_registry_whole() -> None:
    async with scripted(OK, OK) as upstream:
        pool = new_pool(upstream)
        await ask(pool, "PUT", body=[b"abc", b"def"])

        pieces = [b"chunk one", b"chunk two", b""]

        async def chunked() -> bytes:
            return pieces.pop(0)

        exchange = await pool.send("PATCH", request("PATCH"), chunked, length=None)
        _ = [chunk async for chunk in exchange.body()]
        pool.release(exchange)
        pool.close()

    assert upstream.bodies == [b"abcdef", b"chunk onechunk two"]
    assert b"transfer-encoding: chunked" in upstream.connections[0][1].lower()
    assert len(upstream.connections) == 1  # both bodies were sent whole: the connection stays


async def test_a_client_body_shorter_than_its_length_drops_the_upstream_connection() -> None:
    async with scripted(OK) as upstream:
        pool = new_pool(upstream)
        pieces = [b"abc", b""]

        async def short() -> bytes:
            return pieces.pop(0)

        extra = b"Content-Length: 10\r\n"
        with pytest.raises(ConnectionError):
            await pool.send("PUT", request("PUT", extra=extra), short, length=10)
        assert pool.idle == 0
        pool.close()


async def test_no_registry_listening_is_a_connection_error() -> None:
    async with scripted() as upstream:
        url = upstream.url
    pool = UpstreamPool(url, connect_timeout_s=5)

    with pytest.raises(ConnectionError):
        await ask(pool)


# -- a registry that goes silent -----------------------------------------------------------


async def test_a_registry_that_never_answers_times_out_and_is_not_asked_again() -> None:
    async with scripted(OK, Stalled(b"")) as upstream:
        pool = new_pool(upstream, read_timeout_s=0.3)
        await ask(pool)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"sent nothing for 0\.3s"):
            await ask(pool)  # on the kept connection: a GET a dropped one would send again
        waited = time.monotonic() - started
        pool.close()

    assert 0.25 < waited < 3
    assert upstream.requests == 2 and pool.idle == 0


async def test_a_body_the_registry_stops_sending_midway_times_out() -> None:
    async with scripted(Stalled(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")) as up:
        pool = new_pool(up, read_timeout_s=0.3)
        with pytest.raises(UpstreamTimeout):
            await ask(pool)
        assert pool.idle == 0
        pool.close()


async def test_a_request_body_that_comes_slowly_is_waited_for_not_timed_out() -> None:
    pieces = [b"slow", b"body", b""]

    async def slowly() -> bytes:
        await asyncio.sleep(0.3)
        return pieces.pop(0)

    async with scripted(OK) as upstream:
        pool = new_pool(upstream, read_timeout_s=0.2)
        exchange = await pool.send(
            "PUT", request("PUT", extra=b"Content-Length: 8\r\n"), slowly, length=8
        )
        body = b"".join([chunk async for chunk in exchange.body()])
        pool.release(exchange)
        pool.close()

    assert (exchange.head.status, body, upstream.bodies) == (200, b"ok", [b"slowbody"])
