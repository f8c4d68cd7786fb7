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
``upstream.py``'s (which sends a request twice only when the first provably never reached
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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from enum import Enum
from functools import lru_cache
from typing import Any

from multidict import CIMultiDictProxy
from yarl import URL

from retention.core.policy import Gate
from retention.errors import GateError, GateUpstreamError
from retention.logs import get_logger
from retention.service import splice
from retention.service.downstream import Listener, Request, http_date
from retention.service.upstream import Exchange, UpstreamPool

log = get_logger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# RFC 9110 section 7.6.1, plus what a proxy must not pass on (Host is the upstream's).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "expect",
    }
)
_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)
READ_ONLY_STATUS = 405
READ_ONLY_BODY = b"Method not allowed\n"
READ_ONLY_HEADERS = {
    "Allow": "GET, HEAD",
    "Content-Type": "text/plain; charset=utf-8",
    "Docker-Distribution-Api-Version": "registry/2.0",
    "X-Content-Type-Options": "nosniff",
}
BAD_GATEWAY_BODY = b"the registry behind the retention gate did not answer\n"
# Bodies from this size on are spliced (Linux). When a spliced body still cost its upstream
# connection (aiohttp's client), 1 MB was about even (the gate's CPU per blob 2.1-2.3
# against 1.9-2.0 ms), 2 MB 2.4-3.4 against 3.5-3.7 ms, 32 MB 11 against 42-46 ms. With
# the connection kept (upstream.py), a 1 MB blob costs 2.07 spliced against 2.77 ms copied
# (gate_benchmark.py, load 9 on 2 cores); below the read-ahead, one read and one write.
SPLICE_MIN_BYTES = 256 * 1024
DRAIN_POLL_S = 0.2  # how often a drain re-checks sessions that may have become abandoned
CONNECT_TIMEOUT_S = 10.0
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


def end_to_end(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers a proxy passes on: all but hop-by-hop ones and those ``Connection`` names."""
    dropped = HOP_BY_HOP
    for name, value in headers:
        if name.lower() == "connection":
            dropped = dropped | _connection_names(value)
    return [(name, value) for name, value in headers if name.lower() not in dropped]


@lru_cache(maxsize=64)
def _connection_names(value: str) -> frozenset[str]:
    """The lower-case header names one ``Connection`` value makes hop-by-hop."""
    return frozenset(token for token in (t.strip().lower() for t in value.split(",")) if token)


def _dropped_bytes(headers: CIMultiDictProxy[str]) -> frozenset[bytes]:
    """The raw (as sent) header names a proxy must not pass on, lower case."""
    values = headers.getall("Connection", ())
    return _dropped_raw(tuple(values)) if values else _HOP_BY_HOP_BYTES


@lru_cache(maxsize=64)
def _dropped_raw(values: tuple[str, ...]) -> frozenset[bytes]:
    """Cached: a client sends the same ``Connection`` on every request (ab: Keep-Alive)."""
    named = frozenset().union(*(_connection_names(value) for value in values))
    return _HOP_BY_HOP_BYTES | {name.encode("latin-1") for name in named}


async def _own_answer(
    request: Request, status: int, headers: Mapping[str, str], body: bytes
) -> None:
    """An answer of the gate's own (no ``Server`` header: the registry sends none either)."""
    lines = [("Date", http_date()), *headers.items(), ("Content-Length", str(len(body)))]
    connection = request.connection
    reason = "Method Not Allowed" if status == READ_ONLY_STATUS else "Bad Gateway"
    if connection.respond(request, status, reason, lines, has_length=True):
        await connection.write(body)
    connection.end()


class WriteGate:
    """The proxy and its window; lives on one event loop (see ``GateServer`` for threads)."""

    def __init__(self, settings: Gate, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.upstream = URL(settings.upstream.rstrip("/"))
        self._upstream_origin = str(self.upstream.origin())
        self._clock = clock
        self.state = WindowState.OPEN
        self._writes = 0
        self._sessions: dict[str, float] = {}  # upload UUID -> when a request of it last ended
        self._changed = asyncio.Event()
        self._upstream_path = self.upstream.raw_path.rstrip("/")
        self._pool: UpstreamPool | None = None
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
            return await _own_answer(request, READ_ONLY_STATUS, READ_ONLY_HEADERS, READ_ONLY_BODY)
        return await self._write(request)

    async def _write(self, request: Request) -> None:
        """Forward a write, counted while in flight, and keep the upload sessions up to date."""
        session = upload_id(request.path)
        self._writes += 1
        if session:
            self._sessions[session] = self._clock()

        def note(status: int, headers: list[tuple[str, str]]) -> None:
            self._note_upload(request.method, session, status, headers)

        try:
            await self._forward(request, note)
        finally:
            self._writes -= 1
            if session in self._sessions:
                self._sessions[session] = self._clock()
            self._changed.set()

    def _note_upload(
        self, method: str, session: str | None, status: int, headers: list[tuple[str, str]]
    ) -> None:
        if session is None:
            return
        if session == "" and method == "POST" and status == 202:
            started = _header(headers, "docker-upload-uuid") or _location_upload(headers)
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
        note: Callable[[int, list[tuple[str, str]]], None] | None = None,
    ) -> None:
        """Send the request upstream and stream its answer back, body for body."""
        pool = self._pool
        assert pool is not None, "the gate is not started"
        body = request.read if request.body_exists else None
        head = self._request_head(request)
        try:
            exchange = await pool.send(request.method, head, body, length=request.content_length)
        except (OSError, GateUpstreamError) as exc:
            log.warning("gate upstream failed", method=request.method, error=repr(exc))
            plain = {"Content-Type": "text/plain; charset=utf-8"}
            return await _own_answer(request, 502, plain, BAD_GATEWAY_BODY)
        try:
            headers = end_to_end(exchange.head.headers)
            if note is not None:
                note(exchange.head.status, headers)
            await self._relay(request, exchange, headers)
        finally:
            pool.release(exchange)

    def _request_head(self, request: Request) -> bytes:
        """The head for the registry: request line, Host, the end-to-end headers as sent."""
        assert self._pool is not None
        dropped = _dropped_bytes(request.headers)
        lines = [
            f"{request.method} {self._upstream_path}{request.raw_path} HTTP/1.1\r\n"
            f"Host: {self._pool.host_header}\r\n".encode("latin-1")
        ]
        lines += [
            b"%s: %s\r\n" % (name, value)
            for name, value in request.raw_headers
            if name.lower() not in dropped
        ]
        return b"".join(lines)

    async def _relay(
        self, request: Request, exchange: Exchange, headers: list[tuple[str, str]]
    ) -> None:
        connection = request.connection
        try:
            with_body = connection.respond(
                request,
                exchange.head.status,
                exchange.head.reason,
                self._response_headers(request, headers),
                has_length=exchange.head.length is not None and not exchange.head.chunked,
            )
            if with_body and not exchange.finished:
                await self._relay_body(request, exchange)
            connection.end()
        except (ConnectionError, GateUpstreamError) as exc:
            # The client went away, or the registry broke off: the connection is dropped
            # either way, and what was sent is all the client gets. A connection kept
            # alive would leave the client waiting for the rest.
            log.info("gate stream ended early", path=request.path, error=repr(exc))
            connection.close()
            raise ConnectionResetError("the answer broke off") from exc

    async def _relay_body(self, request: Request, exchange: Exchange) -> None:
        """The body chunk for chunk through Python, or most of it spliced in the kernel."""
        connection = request.connection
        client_socket = _spliceable(request, exchange)
        if client_socket is not None:
            # What came with the registry's headers is read already: it goes (with the
            # headers) the ordinary way, and the connection stops reading so the kernel
            # moves the rest; the connection stays usable for the next request.
            await connection.write(exchange.hold())
            transport = connection.transport
            if exchange.remaining and transport and not transport.get_write_buffer_size():
                await _splice_rest(exchange, client_socket, transport, self._pipes)
                return
            exchange.unhold()  # a slow client: the ordinary way after all
        async for chunk in exchange.body():
            await connection.write(chunk)

    def _response_headers(
        self, request: Request, headers: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        return [
            (name, self._client_location(request, value))
            if name.lower() == "location"
            else (name, value)
            for name, value in headers
        ]

    def _client_location(self, request: Request, location: str) -> str:
        """An absolute Location on the upstream origin, moved to the origin the client used."""
        origin = self._upstream_origin
        if location == origin or location.startswith(origin + "/"):
            return f"http://{request.host}{location[len(origin) :]}"
        return location

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> Listener:
        """Open the upstream pool and listen; the caller stops the listener (``stop``)."""
        self._pool = UpstreamPool(self.upstream, connect_timeout_s=CONNECT_TIMEOUT_S)
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


def _spliceable(request: Request, exchange: Exchange) -> Any:
    """The client's socket when a read's body can be spliced to it, else None.

    Only bodies from ``SPLICE_MIN_BYTES`` on with a known length, between plain TCP sockets.
    """
    remaining = exchange.remaining
    if remaining is None or remaining < SPLICE_MIN_BYTES or not splice.available():
        return None
    transport = request.connection.transport
    if transport is None or transport.is_closing():
        return None
    if transport.get_extra_info("sslcontext") is not None or exchange.socket is None:
        return None
    return transport.get_extra_info("socket")


async def _splice_rest(
    exchange: Exchange, client_socket: Any, client: asyncio.BaseTransport, pipes: splice.Pipes
) -> None:
    """Splice the rest of the body; the upstream connection stays open for the next request.

    If the body breaks off, the client's connection is closed: a client must see a short
    body as a broken connection, never as an answer (``release`` drops the upstream one).
    """
    try:
        source, target = exchange.socket.fileno(), client_socket.fileno()
        await splice.relay(source, target, exchange.remaining or 0, pipes)
    except OSError as exc:
        client.close()
        raise ConnectionResetError(f"spliced body broke off: {exc!r}") from exc
    exchange.spliced()


def _header(headers: list[tuple[str, str]], lower_name: str) -> str | None:
    """The first value of a header, by its lower-case name."""
    return next((value for name, value in headers if name.lower() == lower_name), None)


def _location_upload(headers: list[tuple[str, str]]) -> str | None:
    location = _header(headers, "location")
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
