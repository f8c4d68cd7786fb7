"""The write gate's connections from clients: a lean HTTP/1.1 server for one handler.

Why it exists: aiohttp's server (``web.Server``) builds per request a task, a
``BaseRequest``, a ``StreamResponse`` with its header multidict and a ``StreamWriter``, and
runs its response machinery for headers the gate has already chosen; measured under the
gate benchmark this was the bulk of the gate's own Python work per request (README, "The
write gate"). The gate needs less: the request head parsed (aiohttp's C parser, the same
one ``web.Server`` uses), the answer's head written as it is, and the body passed on.

Owns: one long-lived task per connection that serves its requests in order (keep-alive and
pipelining: requests parsed ahead wait in a queue, reading pauses when it is long), request
bodies as a reader with back-pressure (``100 Continue`` sent when a body that asked for it
is first read), the response head (status line, the handler's headers, ``Date`` when none,
and the framing: the handler's ``Content-Length``, else chunked towards HTTP/1.1 and
``Connection: close`` towards HTTP/1.0), closing a connection whose request body was not
read to its end (and saying so in the head), reading and dropping a small unused body
(``discard_small_body``) so that its connection can stay, a 400 for a malformed request, a
500 for a request the handler failed on before it answered, and closing idle connections.
Must not: choose or rewrite the handler's headers, or know about the registry.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy

from retention.logs import get_logger

log = get_logger(__name__)

READ_BYTES = 256 * 1024  # what a request body buffers before reading pauses
MAX_LINE_BYTES = 8190  # aiohttp's own limits for the request line and a header field
MAX_QUEUED = 16  # pipelined requests parsed ahead before reading pauses
DISCARD_MAX_BYTES = 256 * 1024  # an unused body read to keep the connection (Go: 256 KB)
KEEPALIVE_S = 75.0  # an idle kept-alive connection is closed after this long (as aiohttp)
NO_BODY_STATUSES = frozenset({204, 304})
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
INTERNAL_ERROR_BODY = b"the retention gate failed on this request (see its log)\n"


class Request:
    """One request as the handler sees it; answered through ``respond``/``write``/``end``."""

    __slots__ = (
        "_expect",
        "_payload",
        "connection",
        "content_length",
        "headers",
        "message",
        "method",
        "path",
    )

    def __init__(
        self, connection: ClientConnection, message: RawRequestMessage, payload: StreamReader
    ) -> None:
        self.connection = connection
        self.message = message
        self.method: str = message.method
        self.path: str = message.url.path  # decoded, as aiohttp's ``request.path``
        self.headers: CIMultiDictProxy[str] = message.headers
        length = message.headers.get("Content-Length")
        # The parser checked its digits.
        self.content_length: int | None = int(length) if length is not None else None
        self._payload = payload
        self._expect = payload.is_eof() is False and _expects_continue(message.headers)

    @property
    def raw_path(self) -> str:
        return self.message.path

    @property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        return self.message.raw_headers

    @property
    def host(self) -> str:
        """The authority the client used: its ``Host``, else the address it connected to."""
        return self.headers.get("Host") or self.connection.local_address

    @property
    def body_exists(self) -> bool:
        return self.message.chunked or self.content_length not in (None, 0)

    async def read(self) -> bytes:
        """The next piece of the body, b'' at its end; raises if the client went away."""
        if self._expect:
            self._expect = False
            self.connection.write_raw(_CONTINUE)
        return await self._payload.readany()

    async def discard_small_body(self) -> None:
        """Read and drop a body the handler will not use, as Go's net/http (Distribution's
        server) does before it answers: up to ``DISCARD_MAX_BYTES``, so the connection serves
        the client's next request. A body that waits for ``100 Continue``, is chunked or is
        larger stays unread, and the answer says ``Connection: close`` (``respond``)."""
        length = self.content_length
        if self._expect or self.message.chunked or length is None or length > DISCARD_MAX_BYTES:
            return
        while await self._payload.readany():
            pass


Handler = Callable[[Request], Awaitable[None]]


class ClientConnection(BaseProtocol):
    """One client's connection; ``BaseProtocol`` gives the write back-pressure (drain)."""

    def __init__(self, handler: Handler, loop: asyncio.AbstractEventLoop, live: set[Any]) -> None:
        super().__init__(loop)
        self._handler = handler
        self._live = live
        self._parser: Any = HttpRequestParser(
            self,
            loop,
            READ_BYTES,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            payload_exception=ConnectionResetError,
            auto_decompress=False,  # a body passes as it came, Content-Encoding and all
        )
        self._queue: deque[tuple[RawRequestMessage, StreamReader]] = deque()
        self._malformed: HttpProcessingError | None = None
        self._ended = False  # the client will send nothing more
        # Reading paused for the queue (the flag of aiohttp's own is not in every 3.x).
        self._queue_full = False
        # One timer per connection, not one per request: it looks when it fires.
        self._idle_since: float | None = None  # waiting for a request since then
        self._idle_timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._payload: StreamReader | None = None  # the body being served
        self.local_address = ""
        self.fileno = -1  # the client's socket (set when connected)
        # The response in progress: its head waits for the first body bytes (one send).
        self._head = b""
        self._chunked = False
        self._begun = False  # some of the answer (more than a 100 Continue) went out
        self.keep_alive = True

    # -- protocol callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple):
            self.local_address = f"{sockname[0]}:{sockname[1]}"
        self.fileno = transport.get_extra_info("socket").fileno()  # plain TCP: for splice
        self._live.add(self)
        self._task = self._loop.create_task(self._serve())
        self._idle_timer = self._loop.call_later(KEEPALIVE_S, self._close_if_idle)

    def data_received(self, data: bytes) -> None:
        if self._malformed is not None:
            return
        try:
            messages, _, _ = self._parser.feed_data(data)
        except HttpProcessingError as exc:
            self._malformed = exc
            messages = []
        self._queue.extend(messages)
        if len(self._queue) >= MAX_QUEUED and not self._queue_full and self.transport:
            self._queue_full = True
            self.transport.pause_reading()
        if messages or self._malformed is not None:
            self._wake()

    def eof_received(self) -> bool:
        """The client sent all it will: what it asked before is still answered, then closed."""
        self._ended = True
        self._parser.feed_eof()
        self._wake()
        return True  # keep the transport open for the answers; ``_serve`` closes it

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._live.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._payload is not None and not self._payload.is_eof():
            self._payload.set_exception(ConnectionResetError("the client went away"))
        self._wake()

    def _close_if_idle(self) -> None:
        """Close a connection idle for ``KEEPALIVE_S``, else look again when it could be."""
        since = self._idle_since
        if since is not None and self._loop.time() - since >= KEEPALIVE_S:
            self.close()  # connection_lost wakes the waiting task, which ends
            return
        due = (since if since is not None else self._loop.time()) + KEEPALIVE_S
        self._idle_timer = self._loop.call_at(due, self._close_if_idle)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- serving --------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while (request := await self._next()) is not None:
                if not await self._answer(request):
                    break
        finally:
            self.close()

    async def _next(self) -> Request | None:
        """The next request, None once the connection is closed, idle too long or malformed."""
        while not self._queue:
            if self._ended or self.transport is None or self.transport.is_closing():
                return None
            if self._malformed is not None:
                self._bad_request(self._malformed)
                return None
            self._idle_since = self._loop.time()
            self._waiter = self._loop.create_future()
            await self._waiter
            self._idle_since = None
        message, payload = self._queue.popleft()
        if self._queue_full and len(self._queue) < MAX_QUEUED // 2:
            self._queue_full = False
            if self.transport and not self._reading_paused:  # a body's back-pressure
                self.transport.resume_reading()
        return Request(self, message, payload)

    async def _answer(self, request: Request) -> bool:
        """Serve one request; whether the connection can serve the next one."""
        self._payload = request._payload
        self._head, self._chunked, self._begun = b"", False, False
        self.keep_alive = not request.message.should_close
        try:
            await self._handler(request)
        except ConnectionError:
            return False
        except Exception:
            log.exception("gate request failed", method=request.method, path=request.path)
            if self._begun or self.closing:
                return False  # part of the answer went out: only a closed connection tells
            self._internal_error(request)
        finally:
            self._payload = None
        return self.keep_alive and request._payload.is_eof() and self.transport is not None

    def _internal_error(self, request: Request) -> None:
        """A 500 for a request the handler failed on before answering: the client learns
        at once (a closed connection looks like a network fault and is often retried), and
        the connection serves on when the request's body was read."""
        self._head, self._chunked = b"", False
        self.keep_alive = self.keep_alive and request._payload.is_eof()
        fields = b"\r\nDate: %s\r\nContent-Type: text/plain; charset=utf-8" % (http_date().encode())
        fields += b"\r\nContent-Length: %d" % len(INTERNAL_ERROR_BODY)
        if self.respond(request, 500, "Internal Server Error", fields, has_length=True):
            self.write_now(INTERNAL_ERROR_BODY)
        self.end()

    def _bad_request(self, error: HttpProcessingError) -> None:
        body = f"Bad Request: {error.message}\n".encode("utf-8", "replace")
        head = _BAD_REQUEST + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        self.write_raw(head + body)

    # -- answering ------------------------------------------------------------------------

    def respond(
        self, request: Request, status: int, reason: str, fields: bytes, *, has_length: bool
    ) -> bool:
        """Prepare the answer's head; it leaves with the first ``write`` or with ``end``.

        ``fields``: the header lines, each after a CRLF (``b"\\r\\nName: value"``), as the
        registry's head carries them. ``has_length``: they include the body's
        Content-Length. Returns whether a body follows at all (not for HEAD, 1xx, 204, 304).
        """
        minor = request.message.version.minor
        with_body = request.method != "HEAD" and status >= 200 and status not in NO_BODY_STATUSES
        if not request._payload.is_eof():
            # Its body not read to the end (a refused write): ``_answer`` closes the connection
            # after this answer, so the head says so. Unsaid, a client that sent the next
            # request on it first met a reset (seen when the body came in its own packet).
            self.keep_alive = False
        head = b"HTTP/1.1 %d %s%s" % (status, reason.encode("latin-1"), fields)
        if with_body and not has_length:
            if minor >= 1:
                self._chunked = True
                head += b"\r\nTransfer-Encoding: chunked"
            else:
                self.keep_alive = False  # the body ends when the connection does
        if not self.keep_alive and minor >= 1:
            head += b"\r\nConnection: close"
        elif self.keep_alive and minor == 0:
            head += b"\r\nConnection: keep-alive"
        self._head = head + b"\r\n\r\n"
        return with_body

    async def write(self, data: bytes) -> None:
        """A piece of the body, framed as the head said, with back-pressure."""
        self.write_now(data)
        if self._paused:
            await self._drain_helper()

    def write_now(self, data: bytes) -> None:
        """``write`` without waiting for a slow client (``drain`` waits)."""
        self._begun = True
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if self._head:
            data, self._head = self._head + data, b""
        self.write_raw(data)

    async def drain(self) -> None:
        """Wait until the client has taken what was written, down to the transport's mark."""
        if self._paused:
            await self._drain_helper()

    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the client's socket."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def end(self) -> None:
        """The answer is complete."""
        self._begun = True
        self.write_raw(self._head + (b"0\r\n\r\n" if self._chunked else b""))
        self._head = b""

    def write_raw(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        if data:
            transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def stop(self) -> asyncio.Task[None] | None:
        """Drop the connection and cancel what it serves (the gate is stopping)."""
        self.abort()
        if self._task is not None:
            self._task.cancel()
        return self._task


def _expects_continue(headers: CIMultiDictProxy[str]) -> bool:
    return headers.get("Expect", "").lower() == "100-continue"


def http_date() -> str:
    """The ``Date`` of the gate's own answers (RFC 9110 section 6.6.1)."""
    return formatdate(usegmt=True)


class Listener:
    """The listening socket and its live connections, closed together by ``close``."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._live: set[ClientConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self._handler, loop, self._live),
            host,
            port,
            reuse_address=True,
        )

    async def close(self) -> None:
        """Stop listening, drop every connection and wait for their tasks to end."""
        if self._server is not None:
            self._server.close()
        tasks = [connection.stop() for connection in list(self._live)]
        await asyncio.gather(*[task for task in tasks if task is not None], return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
