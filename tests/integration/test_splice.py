"""splice(2) between real TCP sockets on 127.0.0.1: exact counts, early ends, gone targets."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import pytest

from retention.service import splice

pytestmark = pytest.mark.skipif(not splice.available(), reason="splice(2) is Linux-only")

BODY_BYTES = 3 * 1024 * 1024 + 7


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected non-blocking TCP sockets on loopback, as asyncio's transports hold them."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    for end in (near, far):
        end.setblocking(False)
    return near, far


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """(writer into the source, source, target, reader of the target)."""
    writer, source = tcp_pair()
    target, reader = tcp_pair()
    try:
        yield writer, source, target, reader
    finally:
        for end in (writer, source, target, reader):
            end.close()


async def send_all(end: socket.socket, data: bytes, *, close: bool = False) -> None:
    await asyncio.get_running_loop().sock_sendall(end, data)
    if close:
        end.shutdown(socket.SHUT_WR)


async def receive(end: socket.socket, count: int) -> bytes:
    loop = asyncio.get_running_loop()
    received = bytearray()
    while len(received) < count:
        chunk = await loop.sock_recv(end, count - len(received))
        if not chunk:
            break
        received += chunk
    return bytes(received)


async def test_relay_moves_exactly_the_count_and_leaves_what_follows_in_the_source(
    sockets: tuple[socket.socket, socket.socket, socket.socket, socket.socket],
) -> None:
    writer, source, target, reader = sockets
    body, following = os.urandom(BODY_BYTES), b"HTTP/1.1 200 OK\r\n"

    sending = asyncio.create_task(send_all(writer, body + following))
    receiving = asyncio.create_task(receive(reader, BODY_BYTES))
    await splice.relay(source.fileno(), target.fileno(), BODY_BYTES)
    await sending

    assert await receiving == body
    assert await receive(source, len(following)) == following


async def test_a_source_that_ends_early_raises_connection_reset(
    sockets: tuple[socket.socket, socket.socket, socket.socket, socket.socket],
) -> None:
    writer, source, target, reader = sockets
    await send_all(writer, b"x" * 1000, close=True)

    with pytest.raises(ConnectionResetError, match="4000 bytes early"):
        await splice.relay(source.fileno(), target.fileno(), 5000)
    assert await receive(reader, 1000) == b"x" * 1000


async def test_a_target_that_went_away_raises_an_os_error_and_closes_no_caller_socket(
    sockets: tuple[socket.socket, socket.socket, socket.socket, socket.socket],
) -> None:
    writer, source, target, reader = sockets
    reader.close()
    sending = asyncio.create_task(send_all(writer, os.urandom(BODY_BYTES)))

    with pytest.raises(OSError):
        await splice.relay(source.fileno(), target.fileno(), BODY_BYTES)
    assert len(await receive(source, 10)) == 10  # the caller's socket is still open
    sending.cancel()


async def test_a_pipe_emptied_by_a_relay_serves_the_next_one(
    sockets: tuple[socket.socket, socket.socket, socket.socket, socket.socket],
) -> None:
    writer, source, target, reader = sockets
    pipes = splice.Pipes()
    try:
        for _ in range(3):
            body = os.urandom(BODY_BYTES)
            sending = asyncio.create_task(send_all(writer, body))
            receiving = asyncio.create_task(receive(reader, BODY_BYTES))
            await splice.relay(source.fileno(), target.fileno(), BODY_BYTES, pipes)
            await sending
            assert await receiving == body
            assert len(pipes._spare) == 1
    finally:
        pipes.close()
    assert not pipes._spare


async def test_a_pipe_a_relay_failed_with_is_closed_not_kept(
    sockets: tuple[socket.socket, socket.socket, socket.socket, socket.socket],
) -> None:
    writer, source, target, _ = sockets
    pipes = splice.Pipes()
    before = len(os.listdir("/proc/self/fd"))
    await send_all(writer, b"x" * 1000, close=True)

    with pytest.raises(ConnectionResetError):
        await splice.relay(source.fileno(), target.fileno(), 5000, pipes)

    assert not pipes._spare
    assert len(os.listdir("/proc/self/fd")) == before


async def test_a_body_already_in_the_source_moves_at_once_without_pausing_its_owner(
    sockets: tuple[socket.socket, socket.socket, socket.socket, socket.socket],
) -> None:
    writer, source, target, reader = sockets
    body = os.urandom(64 * 1024)
    await send_all(writer, body)
    await asyncio.sleep(0.05)  # the bytes reach the source's receive queue
    paused: list[bool] = []

    await splice.relay(
        source.fileno(), target.fileno(), len(body), before_wait=lambda: paused.append(True)
    )

    assert paused == []
    assert await receive(reader, len(body)) == body


async def test_a_body_still_coming_pauses_its_owner_once_before_the_first_wait(
    sockets: tuple[socket.socket, socket.socket, socket.socket, socket.socket],
) -> None:
    writer, source, target, reader = sockets
    body = os.urandom(BODY_BYTES)
    paused: list[bool] = []

    relaying = asyncio.create_task(
        splice.relay(
            source.fileno(), target.fileno(), BODY_BYTES, before_wait=lambda: paused.append(True)
        )
    )
    receiving = asyncio.create_task(receive(reader, BODY_BYTES))
    await asyncio.sleep(0.05)
    assert paused == [True] and not relaying.done()  # nothing came yet: it waits, paused
    await send_all(writer, body)
    await relaying

    assert paused == [True]
    assert await receiving == body
