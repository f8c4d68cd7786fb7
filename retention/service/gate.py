"""The write gate: a reverse proxy in front of the registry that holds writes off during GC.

Why it exists: ``garbage-collect`` beside a registry that accepts pushes can sweep a blob
uploaded during its mark phase whose manifest arrives afterwards (distribution#3045).
Distribution's answer is read-only mode, which needs a restart to switch on and off. The
gate gives the same effect without touching the registry: clients talk to the gate
(``gate.listen``), the registry listens on loopback (``gate.upstream``), and around GC the
gate answers writes itself, exactly as a read-only registry does.

Owns: forwarding (streamed both ways, never a whole body in memory), the write window, and
the bookkeeping of upload sessions; the connections from clients are ``downstream.py``'s
(keep-alive, pipelining, ``100 Continue``, response framing) and those to the registry
``registry/http1.py``'s (which sends a request twice only when the first provably never reached
the registry).
Must not: change a read, retry anything else, or know about passes (the runner sees it
only as a ``WriteWindow``).

**Reads** (everything but POST, PUT, PATCH, DELETE on ``/v2/``) pass untouched: status,
reason, headers (minus hop-by-hop ones) and body, streamed chunk by chunk with back-pressure
both ways, so Range, HEAD and multi-GB blobs behave as they do direct (on Linux, a body
from ``SPLICE_MIN_BYTES`` on goes socket to socket in the kernel: ``splice.py``). The one
rewrite is ``Location``: the registry builds it from the upstream origin, and a client must
keep talking to the gate, so an absolute ``Location`` on the upstream origin is moved to
the origin the client used.

**The window** has three states:

- *open*: writes pass. Upload sessions are tracked by their UUID from ``POST
  .../blobs/uploads/`` (202, ``Docker-Upload-UUID``/``Location``) and from any later request
  on ``.../blobs/uploads/<uuid>``; a session is finished by its final PUT or a DELETE
  (whatever they answer short of a 5xx), or a 404 (the registry no longer knows it).
- *draining* (``close`` waiting): POST, which starts an upload or mounts a blob, is refused;
  every other write passes so that what was started can finish. The window closes at the
  first moment no write is in flight and no tracked session is unfinished. If that does
  not happen within the timeout, the gate goes back to open and ``close`` returns False:
  GC is skipped this pass, never run under a live upload.
- *closed*: every write gets the read-only answer until ``open``.

**An abandoned session** (its client died between requests) would hold every drain up
forever, so a session with no request in flight and none for ``gate.abandon_after`` no
longer counts. That is safe for GC: an upload's data waits in the repository's
``_uploads`` folder, which garbage-collect does not sweep, and its blob exists only once its
final PUT commits it. If the client comes back while the window is closed, it is refused
like any write; if it comes back later, it commits its blob after GC, so GC cannot have
swept it. (Distribution purges stale ``_uploads`` on its own schedule, a week by default.)

**The read-only answer**, measured on docker-registry 2.8.2 with
``storage.maintenance.readonly.enabled: true`` (POST, PUT, PATCH, DELETE alike): ``405
Method Not Allowed``, ``Allow: GET, HEAD``, ``Content-Type: text/plain; charset=utf-8``,
``Docker-Distribution-Api-Version: registry/2.0``, ``X-Content-Type-Options: nosniff`` and
the 19-byte body ``Method not allowed\\n`` (Go's ``http.Error``; not a JSON ``UNSUPPORTED``).
Two differences remain, both only for requests that fail anyway: the registry checks
credentials first, so an unauthenticated write gets its 401 there and the gate's 405 here;
and a PATCH or PUT naming an upload the registry does not know gets its 404 there.

Threads: the gate runs on an event loop of its own thread (``GateServer``); a pass, on
another loop, calls ``close``/``open``, which hop onto the gate's loop. All state below is
touched on the gate's loop only, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from enum import Enum
from functools import lru_cache
from typing import Any

from yarl import URL

from retention.core.policy import Gate
from retention.errors import GateError, UpstreamProtocolError
from retention.logs import get_logger
from retention.registry.http1 import Exchange, ResponseHead, UpstreamPool
from retention.service import splice
from retention.service.downstream import ClientConnection, Listener, Request, http_date

log = get_logger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# RFC 9110 section 7.6.1, plus what a proxy must not pass on (Host is the upstream's).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"expect",
    }
)
# An answer's header lines pass as the registry sent them unless one of these is among them
# (most answers: none), so the gate parses and rebuilds only those heads.
_CHANGED_FIELD = re.compile(
    rb"\r\n(?:%s):" % b"|".join(sorted(HOP_BY_HOP | {b"location"})), re.IGNORECASE
)
# Header sets whose forwarded lines are kept (a client repeats its own), each of at most
# this many fields, so that what the cache can hold stays small.
FORWARDED_CACHE = 32
READ_ONLY_STATUS = 405
READ_ONLY_BODY = b"Method not allowed\n"
READ_ONLY_HEADERS = {
    "Allow": "GET, HEAD",
    "Content-Type": "text/plain; charset=utf-8",
    "Docker-Distribution-Api-Version": "registry/2.0",
    "X-Content-Type-Options": "nosniff",
}
BAD_GATEWAY_BODY = b"the registry behind the retention gate did not answer\n"
PLAIN_TEXT = {"Content-Type": "text/plain; charset=utf-8"}
# Bodies from this size on are spliced (Linux). When a spliced body still cost its upstream
# connection (aiohttp's client), 1 MB was about even (the gate's CPU per blob 2.1-2.3
# against 1.9-2.0 ms), 2 MB 2.4-3.4 against 3.5-3.7 ms, 32 MB 11 against 42-46 ms. With
# the connection kept (registry/http1.py), a 1 MB blob costs 2.07 spliced against 2.77 ms copied
# (gate_benchmark.py, load 9 on 2 cores); below the read-ahead, one read and one write.
SPLICE_MIN_BYTES = 256 * 1024
DRAIN_POLL_S = 0.2  # how often a drain re-checks sessions that may have become abandoned
CONNECT_TIMEOUT_S = 10.0
# How long the registry may send nothing while it has a request to answer (its head, or the
# rest of a body) before the gate gives up on it: a registry that accepts connections but
# hangs would otherwise hold its clients forever. Generous: finishing an upload on a slow
# storage backend may take minutes.
READ_TIMEOUT_S = 300.0
START_TIMEOUT_S = 15.0
_UPLOAD_PATH = re.compile(r"/v2/.+/blobs/uploads/([^/]*)")


class WindowState(Enum):
    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


def is_write(method: str, path: str) -> bool:
    """A request that changes the registry: what read-only mode refuses."""
    return method in WRITE_METHODS and path.startswith("/v2/")


def upload_id(path: str) -> str | None:
    """The upload UUID a ``.../blobs/uploads/<uuid>`` path names ('' for the POST)."""
    match = _UPLOAD_PATH.fullmatch(path)
    return match.group(1) if match else None


def end_to_end(fields: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Fields a proxy passes on: all but hop-by-hop ones and those ``Connection`` names.

    One filter for both ways: the client's fields as aiohttp's parser gives them and the
    registry's as ``ResponseHead.fields`` does, names as sent.
    """
    lowered = [name.lower() for name, _ in fields]
    dropped = HOP_BY_HOP
    if b"connection" in lowered:
        pairs = zip(fields, lowered, strict=True)
        dropped = _dropped(tuple(field[1] for field, lower in pairs if lower == b"connection"))
    return [field for field, lower in zip(fields, lowered, strict=True) if lower not in dropped]


@lru_cache(maxsize=64)
def _dropped(connection_values: tuple[bytes, ...]) -> frozenset[bytes]:
    """Cached: a client sends the same ``Connection`` on every request (ab: Keep-Alive)."""
    named = {token.strip().lower() for value in connection_values for token in value.split(b",")}
    return HOP_BY_HOP | (named - {b""})


@lru_cache(maxsize=FORWARDED_CACHE)
def _forwarded_lines(raw_headers: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """A request's end-to-end header lines for the registry.

    Cached by the whole header set: a client sends the same headers request after request,
    and rebuilding them took a dozen Python calls per request (the gate's CPU goes with the
    count of Python calls it makes, README "The write gate").
    """
    return b"".join([b"%s: %s\r\n" % field for field in end_to_end(raw_headers)])


def _forwarded(raw_headers: tuple[tuple[bytes, bytes], ...]) -> bytes:
    if len(raw_headers) > FORWARDED_CACHE:
        return _forwarded_lines.__wrapped__(raw_headers)
    return _forwarded_lines(raw_headers)


def _field_lines(headers: Mapping[str, str]) -> bytes:
    """Header lines as ``respond`` takes them: each after a CRLF."""
    return "".join(f"\r\n{name}: {value}" for name, value in headers.items()).encode("latin-1")


_READ_ONLY_LINES = _field_lines(READ_ONLY_HEADERS)
_PLAIN_TEXT_LINES = _field_lines(PLAIN_TEXT)


async def _own_answer(request: Request, status: int, lines: bytes, body: bytes) -> None:
    """An answer of the gate's own (no ``Server`` header: the registry sends none either)."""
    fields = b"\r\nDate: %s%s\r\nContent-Length: %d" % (http_date().encode(), lines, len(body))
    connection = request.connection
    reason = "Method Not Allowed" if status == READ_ONLY_STATUS else "Bad Gateway"
    if connection.respond(request, status, reason, fields, has_length=True):
        await connection.write(body)
    connection.end()


class WriteGate:
    """The proxy and its window; lives on one event loop (see ``GateServer`` for threads)."""

    def __init__(self, settings: Gate, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.upstream = URL(settings.upstream.rstrip("/"))
        self._upstream_origin = str(self.upstream.origin()).encode("latin-1")
        self._clock = clock
        self.state = WindowState.OPEN
        self._writes = 0
        self._sessions: dict[str, float] = {}  # upload UUID -> when a request of it last ended
        self._changed = asyncio.Event()
        self._upstream_path = self.upstream.raw_path.rstrip("/")
        self._pool: UpstreamPool | None = None
        self._host_line = ""  # the registry's Host header line, once the pool is open
        self._pipes = splice.Pipes()

    # -- the window -------------------------------------------------------------------------

    @property
    def idle_upstream_connections(self) -> int:
        """Connections to the registry kept for the next request."""
        return self._pool.idle if self._pool is not None else 0

    @property
    def writes_in_flight(self) -> int:
        return self._writes

    def live_sessions(self) -> list[str]:
        """Tracked uploads not yet finished and not abandoned."""
        cutoff = self._clock() - self.settings.abandon_after.total_seconds()
        return [uuid for uuid, seen in self._sessions.items() if seen > cutoff]

    def drained(self) -> bool:
        return self._writes == 0 and not self.live_sessions()

    async def close(self, timeout_s: float) -> bool:
        """Drain, then close; False (and open again) if writes did not drain in time."""
        if self.state is WindowState.CLOSED:
            return True
        self.state = WindowState.DRAINING
        deadline = self._clock() + timeout_s
        log.info("gate draining", writes=self._writes, sessions=len(self.live_sessions()))
        while not self.drained():
            remaining = deadline - self._clock()
            if remaining <= 0:
                self.state = WindowState.OPEN
                log.warning(
                    "gate drain timed out",
                    timeout_s=timeout_s,
                    writes=self._writes,
                    sessions=self.live_sessions(),
                )
                return False
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, DRAIN_POLL_S))
        self.state = WindowState.CLOSED
        self._forget_abandoned()
        log.info("gate closed")
        return True

    async def open(self) -> None:
        self.state = WindowState.OPEN
        log.info("gate opened")

    def _forget_abandoned(self) -> None:
        live = set(self.live_sessions())
        for uuid in [u for u in self._sessions if u not in live]:
            log.info("upload session abandoned", upload=uuid)
            del self._sessions[uuid]

    def _refuses(self, method: str) -> bool:
        if self.state is WindowState.CLOSED:
            return True
        return self.state is WindowState.DRAINING and method == "POST"

    # -- requests ---------------------------------------------------------------------------

    async def handle(self, request: Request) -> None:
        if not is_write(request.method, request.path):
            return await self._forward(request)
        if self._refuses(request.method):
            # A small body is read and dropped first, as the registry does, so the connection
            # stays open; a larger one is left unread and the connection closes after this.
            await request.discard_small_body()
            return await _own_answer(request, READ_ONLY_STATUS, _READ_ONLY_LINES, READ_ONLY_BODY)
        return await self._write(request)

    async def _write(self, request: Request) -> None:
        """Forward a write, counted while in flight, and keep the upload sessions up to date."""
        session = upload_id(request.path)
        self._writes += 1
        if session:
            self._sessions[session] = self._clock()

        def note(head: ResponseHead) -> None:
            self._note_upload(request.method, session, head)

        try:
            await self._forward(request, note)
        finally:
            self._writes -= 1
            if session in self._sessions:
                self._sessions[session] = self._clock()
            self._changed.set()

    def _note_upload(self, method: str, session: str | None, head: ResponseHead) -> None:
        if session is None:
            return
        status = head.status
        if session == "" and method == "POST" and status == 202:
            fields = end_to_end(head.fields)
            started = _header(fields, b"docker-upload-uuid") or _location_upload(fields)
            if started:
                self._sessions[started] = self._clock()
            return
        # A final PUT ends the session whatever it answers, short of a server error: on a
        # digest mismatch Distribution cancels the upload itself.
        finished = status == 404 or (status < 500 and method in {"PUT", "DELETE"})
        if session and finished:
            self._sessions.pop(session, None)

    async def _forward(
        self,
        request: Request,
        note: Callable[[ResponseHead], None] | None = None,
    ) -> None:
        """Send the request upstream and stream its answer back, body for body."""
        pool = self._pool
        assert pool is not None, "the gate is not started"
        body = request.read if request.body_exists else None
        head = self._request_head(request)
        try:
            exchange = await pool.send(request.method, head, body, length=request.content_length)
        except (OSError, UpstreamProtocolError) as exc:
            log.warning("gate upstream failed", method=request.method, error=repr(exc))
            return await _own_answer(request, 502, _PLAIN_TEXT_LINES, BAD_GATEWAY_BODY)
        try:
            fields = self._response_fields(request, exchange.head)
            if note is not None:
                note(exchange.head)
            await self._relay(request, exchange, fields)
        finally:
            pool.release(exchange)

    def _request_head(self, request: Request) -> bytes:
        """The head for the registry: request line, Host, the end-to-end headers as sent."""
        line = f"{request.method} {self._upstream_path}{request.raw_path} HTTP/1.1\r\n"
        return (line + self._host_line).encode("latin-1") + _forwarded(request.raw_headers)

    async def _relay(self, request: Request, exchange: Exchange, fields: bytes) -> None:
        connection = request.connection
        head = exchange.head
        try:
            with_body = connection.respond(
                request,
                head.status,
                head.reason,
                fields,
                has_length=head.length is not None and not head.chunked,
            )
            if with_body and not exchange.finished:
                await self._relay_body(request, exchange)
            connection.end()
        except (ConnectionError, UpstreamProtocolError) as exc:
            # The client went away, or the registry broke off: the connection is dropped
            # either way, and what was sent is all the client gets. A connection kept
            # alive would leave the client waiting for the rest.
            log.info("gate stream ended early", path=request.path, error=repr(exc))
            connection.close()
            raise ConnectionResetError("the answer broke off") from exc

    async def _relay_body(self, request: Request, exchange: Exchange) -> None:
        """The body chunk for chunk through Python, or most of it spliced in the kernel."""
        connection = request.connection
        if exchange.remaining is not None:
            # A body with a Content-Length: what came with the registry's head leaves with
            # the client's head, in one send (often the whole body).
            client_socket = _splice_target(request, exchange)
            connection.write_now(exchange.take_buffered())
            if exchange.finished:
                return await connection.drain()
            if client_socket is not None and not connection.buffered:
                # The rest goes in the kernel; the connection stays usable for the next one.
                return await self._splice_rest(exchange, client_socket, connection)
            await connection.drain()  # a slow client: the ordinary way after all
        async for chunk in exchange.body():
            await connection.write(chunk)

    async def _splice_rest(
        self, exchange: Exchange, client_socket: int, client: ClientConnection
    ) -> None:
        """Splice the rest of the body; the upstream connection stays open for the next one.

        If the body breaks off or stalls, the client's connection is closed: a client must
        see a short body as a broken connection, never as an answer (``release`` drops the
        upstream one).
        """
        source, pool = exchange.fileno, self._pool
        assert source is not None and pool is not None
        try:
            await splice.relay(
                source,
                client_socket,
                exchange.remaining or 0,
                self._pipes,
                before_wait=exchange.hold,
                timeout_s=pool.read_timeout_s,
            )
        except OSError as exc:
            client.close()
            raise ConnectionResetError(f"spliced body broke off: {exc!r}") from exc
        exchange.spliced()

    def _response_fields(self, request: Request, head: ResponseHead) -> bytes:
        """The registry's header lines for the client: as sent, unless some must change."""
        if _CHANGED_FIELD.search(head.block) is None:
            return head.block
        lines = []
        for name, value in end_to_end(head.fields):
            if name.lower() == b"location":
                value = self._client_location(request, value)
            lines.append(b"\r\n%s: %s" % (name, value))
        return b"".join(lines)

    def _client_location(self, request: Request, location: bytes) -> bytes:
        """An absolute Location on the upstream origin, moved to the origin the client used."""
        origin = self._upstream_origin
        if location == origin or location.startswith(origin + b"/"):
            return b"http://%s%s" % (request.host.encode("latin-1"), location[len(origin) :])
        return location

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> Listener:
        """Open the upstream pool and listen; the caller stops the listener (``stop``)."""
        self._pool = UpstreamPool(
            self.upstream, connect_timeout_s=CONNECT_TIMEOUT_S, read_timeout_s=READ_TIMEOUT_S
        )
        self._host_line = f"Host: {self._pool.host_header}\r\n"
        listener = Listener(self.handle)
        try:
            await listener.start(self.settings.host, self.settings.port)
        except OSError:
            await self.stop(listener)
            raise
        return listener

    async def stop(self, listener: Listener) -> None:
        await listener.close()
        if self._pool is not None:
            self._pool.close()
        self._pipes.close()


def _splice_target(request: Request, exchange: Exchange) -> int | None:
    """The client's socket when a read's body can be spliced to it, else None.

    Only bodies from ``SPLICE_MIN_BYTES`` on with a known length, between plain TCP sockets.
    """
    remaining = exchange.remaining
    if remaining is None or remaining < SPLICE_MIN_BYTES or not splice.available():
        return None
    if exchange.fileno is None or request.connection.closing:
        return None
    return request.connection.fileno


def _header(fields: list[tuple[bytes, bytes]], lower_name: bytes) -> str | None:
    """The first value of a header, by its lower-case name."""
    value = next((value for name, value in fields if name.lower() == lower_name), None)
    return value.decode("latin-1") if value is not None else None


def _location_upload(fields: list[tuple[bytes, bytes]]) -> str | None:
    location = _header(fields, b"location")
    if not location:
        return None
    return upload_id(URL(location).path) or None


class GateServer:
    """The gate on its own thread and loop; a ``WriteWindow`` for passes on other loops."""

    def __init__(self, settings: Gate) -> None:
        self.settings = settings
        self.gate: WriteGate | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="retention-gate", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.listen}"

    def start(self) -> None:
        """Listen, or raise ``GateError`` (the port is taken, say) before anything else runs."""
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise GateError(f"the write gate did not start on {self.settings.listen}")
        if self._error is not None:
            self._thread.join()
            raise GateError(
                f"the write gate cannot listen on gate.listen={self.settings.listen}: {self._error}"
            )
        log.info("gate listening", listen=self.settings.listen, upstream=self.settings.upstream)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=START_TIMEOUT_S)

    async def close(self, timeout_s: float) -> bool:
        return bool(await self._on_gate_loop(lambda gate: gate.close(timeout_s)))

    async def open(self) -> None:
        await self._on_gate_loop(lambda gate: gate.open())

    async def _on_gate_loop(self, call: Callable[[WriteGate], Any]) -> Any:
        gate = self.gate
        assert gate is not None, "the gate is not started"
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(gate), self._loop))

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self.gate = WriteGate(self.settings)
        self._stop = asyncio.Event()
        try:
            listener = await self.gate.start()
        except OSError as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await self.gate.stop(listener)


@contextmanager
def gating(settings: Gate | None) -> Iterator[GateServer | None]:
    """The running gate for ``retention serve`` when the policy has one, else None."""
    if settings is None:
        yield None
        return
    server = GateServer(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()
