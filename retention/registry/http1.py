"""Kept-alive HTTP/1.1 connections to the registry: what both of our clients speak through.

Why it exists: the write gate forwards every pull, and with aiohttp's ``ClientSession``
(request and response objects, cookie and redirect machinery, a stream reader per body) it
spent 0.93 ms of CPU per HEAD and 2.78 ms per 1 MB blob, against 0.68 and 1.59 ms with this
module (side by side on the 2-core machine, README). The registry client's scan sends two
small GETs per tag, and over this module (``transport.py`` adapts it to httpx) it spends a
third less CPU per request than over aiohttp (README, "Performance"). Neither needs more
than this: send a finished request head, read the registry's answer head, and hand the body
over in its framing. It also lets a body spliced in the kernel (``service/splice.py``) keep
its connection: this module knows exactly where a response ends, so after the spliced
bytes the connection is at the start of the next response and goes back to the pool.

Owns: connecting (plain TCP or TLS), writing a request head and body (the body from its
own task, so that an early answer of the registry is read while the body still flows),
parsing the response head (status line, headers, ``Content-Length``, chunked, until close,
no body for HEAD, 1xx, 204 and 304), and keeping a connection only when its response was
read to its end and neither side said ``close``. A request on a kept connection that the
registry had closed meanwhile is sent once more on a new one, and only when that is safe:
an idempotent method, no request body, nothing of an answer received, no read timed out
(a registry silent for ``read_timeout_s`` while it owes bytes fails the exchange, as one
that takes nothing for ``write_timeout_s`` while a body waits to go). Must not: choose or
rewrite headers (the caller hands a finished header block), or follow redirects.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from yarl import URL

from retention.errors import UpstreamProtocolError, UpstreamTimeout

# Methods a proxy may send twice (RFC 9110 section 9.2.2) when the first attempt provably
# never reached the registry's handler.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
NO_BODY_STATUSES = frozenset({204, 304})
# How much of a response body is read ahead of the client; reading pauses above it, so a
# stream holds about this much whatever the blob's size.
READ_AHEAD_BYTES = 256 * 1024
MAX_HEAD_BYTES = 64 * 1024  # Distribution's heads are well under 2 KiB
# How much one read takes while an answer's head is awaited. Whatever of the body comes with
# the head passes through Python; the rest of a large body stays in the socket for splice.
# asyncio reads 256 KiB at a time, so a 1 MB blob took a quarter of its bytes through Python.
HEAD_READ_BYTES = 16 * 1024
# A kept connection unused this long is closed rather than reused: the registry (Go's
# net/http) may close idle connections, and a fresh one costs less than a failed reuse.
IDLE_S = 30.0
MAX_IDLE = 64  # kept connections beyond this many idle ones are closed
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: (.*))?")
# Header lines (RFC 9112 section 5), each after the CRLF that ends the line before it: a name
# without blanks around it, a colon, a value. Checked and read a whole block per call, since
# per line the Python work was a tenth of the gate's CPU per request (README, the gate).
_NAME = rb"[^:\s](?:[^:\r\n]*[^:\s])?"
_FIELDS = re.compile(rb"(?:\r\n%s:[^\r\n]*)*" % _NAME)
_FIELD = re.compile(rb"\r\n(%s):[ \t]*([^\r\n]*?)[ \t]*(?=\r\n|\Z)" % _NAME)
_FRAMING = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection):[ \t]*([^\r\n]*?)[ \t]*(?=\r\n|\Z)",
    re.IGNORECASE,
)
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """The registry's answer head: what the gate relays and how its body is framed."""

    status: int
    reason: str
    # The header lines as sent, each after a CRLF (the one ending the line before it): the
    # gate passes them on as they are unless one needs a change (``fields`` parses them).
    block: bytes
    length: int | None  # body bytes; None: chunked or until the connection closes
    chunked: bool
    keep_alive: bool

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        """The header fields, names as sent and values without surrounding blanks."""
        return _FIELD.findall(self.block)

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self.fields]


class _Connection(asyncio.BufferedProtocol):
    """One connection to the registry: bytes in as a queue of chunks, writes with back-pressure.

    A buffered protocol, so that it chooses how much each read takes (``read_bytes``).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        read_timeout_s: float,
        write_timeout_s: float | None = None,
    ) -> None:
        self._loop = loop
        self._read_timeout_s = read_timeout_s
        self._write_timeout_s = write_timeout_s
        self._active_at = loop.time()  # when the last byte came or went
        self.sending = False  # a request body still flows: the registry may wait for it
        self._stall_timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self._buffer = memoryview(bytearray(READ_AHEAD_BYTES))
        self.read_bytes = HEAD_READ_BYTES
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused = False  # reading paused by the read-ahead limit
        self._held = False  # reading paused by a splice
        self.closed = False
        self._error: BaseException | None = None
        self.received = False  # any byte since the request was sent
        self.idle_since = 0.0
        self.reused = False
        self.fileno: int | None = None  # the socket's, for splice; None over TLS

    # -- protocol callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._stall_timer = self._loop.call_later(self._read_timeout_s, self._check_stalled)
        if transport.get_extra_info("sslcontext") is None:
            self.fileno = transport.get_extra_info("socket").fileno()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer[: self.read_bytes]

    def buffer_updated(self, nbytes: int) -> None:
        # A copy: the buffer is read into again, and transports may keep what they are given.
        self.data_received(bytes(self._buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self._active_at = self._loop.time()
        self._chunks.append(data)
        self._buffered += len(data)
        self.received = True
        if self._buffered > READ_AHEAD_BYTES and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._error = exc
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        self._wake()
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _await_bytes(self) -> asyncio.Future[None]:
        """Start a wait for the registry; its clock starts now at the latest (the gate may
        have waited for a slow client since the last byte came)."""
        self._active_at = self._loop.time()
        self._waiter = self._loop.create_future()
        return self._waiter

    def _check_stalled(self) -> None:
        """Fail a read the registry has left waiting for the read timeout since the wait
        began or the last byte either way (not while a request body flows: then the registry
        waits for it). One timer per connection, not one per read: it looks when it fires."""
        now, due = self._loop.time(), self._active_at + self._read_timeout_s
        waiter = self._waiter
        if waiter is not None and not self.sending and now >= due:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(
                    UpstreamTimeout(f"the registry sent nothing for {self._read_timeout_s}s")
                )
            return  # the exchange fails and its connection is dropped
        later = due if due > now else now + self._read_timeout_s
        self._stall_timer = self._loop.call_at(later, self._check_stalled)

    # -- reading --------------------------------------------------------------------------

    async def _more(self) -> None:
        """Wait for more bytes, or raise if the registry has closed the connection."""
        if self.closed:
            # From the cause: a TLS alert (a refused client certificate) arrives this way.
            raise ConnectionResetError(
                f"the registry closed the connection: {self._error!r}"
            ) from self._error
        await self._await_bytes()

    def _take(self, limit: int) -> bytes:
        """Up to ``limit`` buffered bytes, as the chunks they arrived in where possible."""
        chunk = self._chunks[0]
        if len(chunk) <= limit:
            del self._chunks[0]
        else:
            chunk, self._chunks[0] = chunk[:limit], chunk[limit:]
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= READ_AHEAD_BYTES // 2 and not self._held:
            self._paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        return chunk

    def _join(self) -> bytes:
        if len(self._chunks) > 1:
            self._chunks[:] = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    async def read_line(self, limit: int = MAX_HEAD_BYTES) -> bytes:
        """One line without its CRLF (chunk sizes, trailers)."""
        while True:
            data = self._join()
            end = data.find(b"\r\n")
            if end >= 0:
                line = self._take(end + 2)
                return line[:-2]
            if len(data) > limit:
                raise UpstreamProtocolError("the registry sent a line longer than the gate takes")
            await self._more()

    async def read_head(self) -> bytes:
        """The bytes of a response head, without the blank line that ends it."""
        while True:
            data = self._join()
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                return self._take(end + 4)[:-4]
            if len(data) > MAX_HEAD_BYTES:
                raise UpstreamProtocolError("the registry sent a response head over 64 KiB")
            await self._more()

    async def read(self, limit: int) -> bytes:
        """At least one and at most ``limit`` bytes; b'' once the registry has closed."""
        while not self._chunks:
            if self.closed:
                return b""
            await self._await_bytes()
        return self._take(limit)

    def take_buffered(self, limit: int) -> bytes:
        """What is already here, up to ``limit`` bytes, without waiting."""
        taken: list[bytes] = []
        while self._chunks and limit:
            chunk = self._take(limit)
            limit -= len(chunk)
            taken.append(chunk)
        return b"".join(taken)

    # -- reading paused while the kernel moves the body --------------------------------------

    def hold(self) -> None:
        """Stop reading: from now on the bytes stay in the socket for ``splice``."""
        assert self.transport is not None
        self._held = True
        if not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def release_hold(self) -> None:
        """Read again (if ``hold`` stopped it): the body's end has passed in the socket."""
        assert self.transport is not None
        self._held = False
        if self._paused and self._buffered <= READ_AHEAD_BYTES // 2:
            self._paused = False
            self.transport.resume_reading()

    # -- writing --------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionResetError("the registry closed the connection")
        self._active_at = self._loop.time()
        self.transport.write(data)
        writable = self._writable
        if writable is None:
            return
        if self._write_timeout_s is None:
            await writable
            return
        try:
            await asyncio.wait_for(writable, self._write_timeout_s)
        except TimeoutError:
            raise UpstreamTimeout(
                f"the registry took nothing for {self._write_timeout_s}s"
            ) from None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def clean(self) -> bool:
        """Nothing left over: the connection is at the start of the next response."""
        return not self.closed and not self._chunks


BodySource = Callable[[], Awaitable[bytes]]


class Exchange:
    """One request and its answer on one connection; ``UpstreamPool.release`` ends it."""

    def __init__(self, connection: _Connection, method: str) -> None:
        self.connection = connection
        self.method = method
        self.head = ResponseHead(0, "", b"", 0, False, False)  # until the answer's head is read
        self.remaining: int | None = None  # body bytes still to come; None: chunked or close
        self.sender: asyncio.Task[None] | None = None
        self.finished = False  # the whole body was read (or there was none)

    def answered(self, head: ResponseHead) -> None:
        self.head = head
        self.remaining = head.length
        self.finished = head.length == 0

    async def body(self, chunk_bytes: int = READ_AHEAD_BYTES) -> AsyncIterator[bytes]:
        """The rest of the body as it comes (chunked framing removed); raises if it breaks off."""
        self.connection.read_bytes = READ_AHEAD_BYTES
        if self.head.chunked:
            async for chunk in self._chunked():
                yield chunk
        elif self.remaining is not None:
            while self.remaining:
                chunk = await self.connection.read(min(self.remaining, chunk_bytes))
                if not chunk:
                    raise ConnectionResetError(
                        f"the registry's body ended {self.remaining} bytes early"
                    )
                self.remaining -= len(chunk)
                yield chunk
        else:
            while chunk := await self.connection.read(chunk_bytes):
                yield chunk
        self.finished = True

    async def _chunked(self) -> AsyncIterator[bytes]:
        connection = self.connection
        while size := _chunk_size(await connection.read_line()):
            while size:
                chunk = await connection.read(size)
                if not chunk:
                    raise ConnectionResetError("the registry's chunked body broke off")
                size -= len(chunk)
                yield chunk
            if await connection.read_line() != b"":
                raise UpstreamProtocolError("a chunk of the registry's body has no CRLF after it")
        while await connection.read_line():  # trailers: a proxy may drop them (RFC 9112 7.1.2)
            pass

    # -- a body with a Content-Length, moved in the kernel --------------------------------

    def take_buffered(self) -> bytes:
        """What of a body with a Content-Length is read already, without waiting.

        The rest stays in the socket for as long as nothing awaits: a caller that splices
        it calls ``hold`` before it waits, and ``spliced`` once it is moved.
        """
        assert self.remaining is not None and not self.head.chunked
        buffered = self.connection.take_buffered(self.remaining)
        self.remaining -= len(buffered)
        self.finished = not self.remaining
        return buffered

    def hold(self) -> None:
        """Stop reading the connection: the rest of the body stays in the socket."""
        self.connection.hold()

    def spliced(self) -> None:
        """The rest of the body went socket to socket: the connection is at its end."""
        self.remaining = 0
        self.finished = True
        self.connection.release_hold()

    @property
    def fileno(self) -> int | None:
        """The connection's socket, for splice; None over TLS."""
        return self.connection.fileno


class UpstreamPool:
    """Kept-alive connections to one registry; one exchange per connection at a time."""

    def __init__(
        self,
        url: URL,
        *,
        connect_timeout_s: float,
        read_timeout_s: float = 300.0,
        write_timeout_s: float | None = None,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``tls`` is the context for an https ``url`` (the system's trust if None)."""
        if url.scheme not in {"http", "https"} or not url.host:
            raise UpstreamProtocolError(f"no HTTP/1.1 connection can go to {url}")
        self.host = url.host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = tls if tls is not None else ssl.create_default_context()
        host = f"[{url.raw_host}]" if ":" in (url.raw_host or "") else str(url.raw_host)
        self.host_header = host if url.is_default_port() else f"{host}:{url.port}"
        self._connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._write_timeout_s = write_timeout_s
        self._clock = clock
        self._idle: list[_Connection] = []  # the most recently used last
        # Every connection made and not yet closed, idle or in an exchange: ``close`` ends
        # them all, so none outlives its pool (a task cancelled mid-exchange, say).
        self._live: weakref.WeakSet[_Connection] = weakref.WeakSet()

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def send(
        self, method: str, head: bytes, body: BodySource | None, *, length: int | None
    ) -> Exchange:
        """Send a request (its head complete but for the blank line) and read its answer's head.

        ``body`` yields the request body's pieces (b'' at its end); ``length`` is its
        Content-Length (None: sent chunked). A kept connection that fails before any byte
        of an answer is tried once more on a new one, for idempotent requests without body.
        """
        connection = self._reuse()
        if connection is None:
            return await self._exchange(await self._connect(), method, head, body, length)
        try:
            return await self._exchange(connection, method, head, body, length)
        except (ConnectionError, UpstreamProtocolError) as exc:
            reached = connection.received or isinstance(exc, UpstreamTimeout)
            if reached or body is not None or method not in IDEMPOTENT:
                raise
        return await self._exchange(await self._connect(), method, head, body, length)

    async def _exchange(
        self,
        connection: _Connection,
        method: str,
        head: bytes,
        body: BodySource | None,
        length: int | None,
    ) -> Exchange:
        exchange = Exchange(connection, method)
        connection.received = False
        connection.read_bytes = HEAD_READ_BYTES
        try:
            if body is None:
                await connection.write(head + b"\r\n")
            else:
                framing = b"" if length is not None else b"Transfer-Encoding: chunked\r\n"
                await connection.write(head + framing + b"\r\n")
                connection.sending = True
                exchange.sender = asyncio.create_task(_send_body(connection, body, length))
            exchange.answered(await _read_response_head(connection, method))
        except BaseException:
            self._discard(exchange)
            raise
        return exchange

    def release(self, exchange: Exchange) -> None:
        """End an exchange: its connection is kept if its answer was read to the end."""
        connection = exchange.connection
        sender = exchange.sender
        body_sent = sender is None or (sender.done() and not sender.cancelled())
        if body_sent and sender is not None and sender.exception() is not None:
            body_sent = False
        keep = exchange.finished and body_sent and exchange.head.keep_alive and connection.clean
        if not keep:
            self._discard(exchange)
            return
        connection.idle_since = self._clock()
        connection.reused = True
        self._idle.append(connection)
        if len(self._idle) > MAX_IDLE:
            self._idle.pop(0).close()

    def _discard(self, exchange: Exchange) -> None:
        sender = exchange.sender
        if sender is not None and not sender.done():
            sender.cancel()
        elif sender is not None and not sender.cancelled():
            sender.exception()  # retrieved: its failure is the broken exchange's, told there
        exchange.connection.abort()

    def _reuse(self) -> _Connection | None:
        """The most recently used kept connection still open and not idle too long."""
        oldest = self._clock() - IDLE_S
        while self._idle and self._idle[0].idle_since < oldest:
            self._idle.pop(0).close()
        while self._idle:
            connection = self._idle.pop()
            if connection.clean:
                return connection
            connection.abort()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self.read_timeout_s, self._write_timeout_s),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                )
                self._live.add(connection)
        except TimeoutError as exc:  # still an OSError, as every failure to connect
            raise TimeoutError(
                f"no connection to {self.host}:{self.port} within {self._connect_timeout_s}s"
            ) from exc
        return connection

    def close(self) -> None:
        """End every connection now, idle or still in an exchange.

        Aborted, not closed: an idle connection has nothing left to send, and closing TLS
        waits for the registry's close_notify, a round trip that a client closing at the
        end of a command does not wait for (the socket then outlives the event loop).
        """
        made = list(self._live)  # the idle ones included
        self._idle.clear()
        self._live.clear()
        for connection in made:
            if not connection.closed:
                connection.abort()


async def _send_body(connection: _Connection, body: BodySource, length: int | None) -> None:
    """Copy the request body to the registry; a short or broken body aborts the connection.

    The registry must never take part of a body for the whole one: with a Content-Length a
    short body leaves it waiting (and the connection is dropped), chunked it gets no last
    chunk.
    """
    sent = 0
    try:
        while piece := await body():
            sent += len(piece)
            if length is None:
                piece = b"%x\r\n%b\r\n" % (len(piece), piece)
            await connection.write(piece)
        if length is None:
            await connection.write(b"0\r\n\r\n")
        elif sent != length:
            raise ConnectionResetError(f"the client's body ended after {sent} of {length} bytes")
    except BaseException:
        connection.abort()
        raise
    finally:
        connection.sending = False


async def _read_response_head(connection: _Connection, method: str) -> ResponseHead:
    """The final response head (1xx interim answers skipped) and its body's framing."""
    while True:
        raw = await connection.read_head()
        end = raw.find(b"\r\n")
        status_line, block = (raw[:end], raw[end:]) if end >= 0 else (raw, b"")
        matched = _STATUS_LINE.fullmatch(status_line)
        if matched is None:
            line = status_line[:80]
            raise UpstreamProtocolError(f"the registry sent no HTTP/1 status line: {line!r}")
        status = int(matched.group(2))
        if status >= 200:
            break
    if _FIELDS.fullmatch(block) is None:
        raise UpstreamProtocolError(
            f"the registry sent a malformed header line: {_bad_line(block)!r}"
        )
    reason = (matched.group(3) or b"").decode("latin-1")
    return _framed(status, reason, block, http10=matched.group(1) == b"0", method=method)


def _bad_line(block: bytes) -> bytes:
    """The first header line ``_FIELDS`` refuses, for the message (at most 80 bytes)."""
    for line in block.split(b"\r\n")[1:]:
        if _FIELDS.fullmatch(b"\r\n" + line) is None:
            return line[:80]
    return block[:80]


def _framed(status: int, reason: str, block: bytes, *, http10: bool, method: str) -> ResponseHead:
    """Where the body ends (RFC 9112 section 6.3) and whether the connection stays."""
    lengths: set[str] = set()
    codings = ""
    tokens: list[str] = []
    for name, raw_value in _FRAMING.findall(block):
        lower, value = name.lower(), raw_value.decode("latin-1")
        if lower == b"content-length":
            lengths.update([part.strip() for part in value.split(",")])
        elif lower == b"transfer-encoding":
            codings += "," + value
        else:
            tokens += [token.strip().lower() for token in value.split(",")]
    keep_alive = "keep-alive" in tokens if http10 else "close" not in tokens
    no_body = method == "HEAD" or status in NO_BODY_STATUSES
    if codings:
        chunked = codings.rsplit(",", 1)[-1].strip().lower() == "chunked"
        if no_body:
            return ResponseHead(status, reason, block, 0, False, keep_alive)
        # Not ending in chunked: the body runs until the registry closes (RFC 9112 6.3).
        return ResponseHead(status, reason, block, None, chunked, keep_alive and chunked)
    length = lengths.pop() if len(lengths) == 1 else None
    if lengths or (length is not None and not _DIGITS.fullmatch(length)):
        bad = sorted(lengths | ({length} if length is not None else set()))
        raise UpstreamProtocolError(f"the registry sent a bad Content-Length: {bad}")
    if no_body:
        return ResponseHead(status, reason, block, 0, False, keep_alive)
    if length is not None:
        return ResponseHead(status, reason, block, int(length), False, keep_alive)
    return ResponseHead(status, reason, block, None, False, False)


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip(b" \t")
    if not _HEX.fullmatch(size):
        raise UpstreamProtocolError(f"the registry sent a bad chunk size: {line[:40]!r}")
    return int(size, 16)
