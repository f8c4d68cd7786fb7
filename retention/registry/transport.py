"""httpx's transport over our own HTTP/1.1 connections (``http1.py``): the client's wire.

Why it exists: a cold scan sends two small GETs per tag, and on 2 cores the client's CPU
per request is taken from the registry's. Over httpx-aiohttp a cold plan of 1,000 tags
spent 0.91 ms of CPU per request and reached 0.67 of what wrk gets from the same registry;
over this transport, 0.69 ms and 0.75 (five rounds interleaved with wrk, README
"Performance"). aiohttp's client builds a request, a response, a stream reader and a
timer per request and converts headers both ways; ``http1.py`` writes a head and parses
one.

Owns: one ``UpstreamPool`` per origin (scheme, host, port and timeouts: a token realm or
a blob redirect is another origin), the request head from httpx's request (its own header
list, Host included), the body (bytes or a stream, sent chunked when its length is not
known), and the translation of this layer's failures into httpx's exceptions, so that the
client's retries and messages stay as they were: a refused or timed-out connection is
``ConnectError``/``ConnectTimeout``, a silent registry ``ReadTimeout``, a broken answer
``RemoteProtocolError``, a dropped connection ``ReadError``; TLS errors keep the
``ssl.SSLError`` as their cause (``tls.tls_failure`` finds it there). Must not: follow
redirects, authenticate or keep cookies: ``dispatch.py`` does that above.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from yarl import URL

from retention.errors import UpstreamProtocolError, UpstreamTimeout
from retention.registry.http1 import Exchange, UpstreamPool

_HTTP_1_1 = b"HTTP/1.1"
# Bodies up to this size (every manifest, config and listing page a scan reads) are read
# before httpx gets the response: httpx then serves them from memory, without the five
# async generators its streamed path stacks per response (each registered with the event
# loop), and the connection is back in the pool at once. Larger ones stream.
EAGER_BODY_BYTES = 256 * 1024
_NO_TIMEOUT_S = 365 * 24 * 3600.0  # httpx's None: a timer that never fires in practice
# The body's framing is ours to write (http1.py adds Transfer-Encoding: chunked itself).
_FRAMING = frozenset({b"transfer-encoding"})


class Http1Transport(httpx.AsyncBaseTransport):
    """httpx requests over kept-alive HTTP/1.1 connections, a pool per origin."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        """``tls`` is the context for https origins (the system's trust if None)."""
        self._tls = tls
        self._pools: dict[tuple[str, str, int, float, float, float], UpstreamPool] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = self._pool(request)
        length, body = _body(request)
        try:
            exchange = await pool.send(request.method, _head(request), body, length=length)
        except BaseException as exc:
            _raise_as_httpx(exc, request, connecting=True)
            raise
        head = exchange.head
        extensions = {"http_version": _HTTP_1_1, "reason_phrase": head.reason.encode()}
        small = head.length is not None and head.length <= EAGER_BODY_BYTES  # not chunked
        if exchange.finished or small:
            return httpx.Response(
                head.status,
                headers=head.fields,
                content=await _whole(pool, exchange, request),
                request=request,
                extensions=extensions,
            )
        return httpx.Response(
            head.status,
            headers=head.fields,
            stream=_ResponseBody(pool, exchange, request),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool(self, request: httpx.Request) -> UpstreamPool:
        url = request.url
        timeouts = request.extensions.get("timeout", {})
        connect, read, write = (_seconds(timeouts.get(key)) for key in ("connect", "read", "write"))
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.host, port, connect, read, write)
        pool = self._pools.get(key)
        if pool is None:
            if url.scheme not in {"http", "https"}:
                raise httpx.UnsupportedProtocol(f"no HTTP/1.1 transport for {url.scheme!r} URLs")
            origin = URL.build(scheme=url.scheme, host=url.host, port=port)
            pool = UpstreamPool(
                origin,
                connect_timeout_s=connect,
                read_timeout_s=read,
                write_timeout_s=write,
                tls=self._tls,
            )
            self._pools[key] = pool
        return pool


async def _whole(pool: UpstreamPool, exchange: Exchange, request: httpx.Request) -> bytes:
    """A small body read at once, and the connection given back before httpx sees it.

    A body that came with its head (a manifest or config usually does) is taken as it is,
    without the async generator that waits for more.
    """
    try:
        chunks = []
        if not exchange.finished and not exchange.head.chunked:
            chunks.append(exchange.take_buffered())
        if not exchange.finished:
            chunks += [chunk async for chunk in exchange.body()]
    except BaseException as exc:
        _raise_as_httpx(exc, request, connecting=False)
        raise
    finally:
        pool.release(exchange)  # kept only if the body was read to its end
    return b"".join(chunks)


class _ResponseBody(httpx.AsyncByteStream):
    """The answer's body as it comes; closing it gives the connection back (or drops it)."""

    def __init__(self, pool: UpstreamPool, exchange: Exchange, request: httpx.Request) -> None:
        self._pool: UpstreamPool | None = pool
        self._exchange = exchange
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._exchange.finished:
            return
        try:
            async for chunk in self._exchange.body():
                yield chunk
        except BaseException as exc:
            _raise_as_httpx(exc, self._request, connecting=False)
            raise

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None  # httpx may close a stream twice
        if pool is not None:
            pool.release(self._exchange)


def _head(request: httpx.Request) -> bytes:
    """Request line and header lines, each ending in CRLF (http1.py adds the blank line)."""
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
    for name, value in request.headers.raw:
        if name.lower() not in _FRAMING:
            lines.append(b"%s: %s\r\n" % (name, value))
    return b"".join(lines)


def _body(request: httpx.Request) -> tuple[int | None, Callable[[], Awaitable[bytes]] | None]:
    """The Content-Length and a source of the body's pieces, or (None, None) for none.

    httpx gives a body either a Content-Length or ``Transfer-Encoding: chunked``; a request
    with neither (a GET) has none, and so does one whose length is 0.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        length = int(declared)
        return (length, _pieces(request)) if length else (0, None)
    if "transfer-encoding" in request.headers:
        return None, _pieces(request)
    return None, None


def _pieces(request: httpx.Request) -> Callable[[], Awaitable[bytes]]:
    """Each call the next piece of the request's stream, b'' at its end."""
    stream = request.stream
    if not isinstance(stream, httpx.AsyncByteStream):
        raise httpx.StreamError("the registry client sends async bodies only")
    pieces = aiter(stream)

    async def next_piece() -> bytes:
        async for piece in pieces:
            if piece:
                return piece
        return b""

    return next_piece


def _raise_as_httpx(exc: BaseException, request: httpx.Request, *, connecting: bool) -> None:
    """Raise httpx's exception for a failure of ``http1.py``, caused by it; return for
    anything else (a cancellation, a bug), which the caller re-raises unchanged."""
    message = str(exc) or type(exc).__name__
    kind: type[httpx.TransportError]
    if isinstance(exc, UpstreamTimeout):  # a read or a write the registry left waiting
        kind = httpx.ReadTimeout
    elif isinstance(exc, UpstreamProtocolError):
        kind = httpx.RemoteProtocolError
    elif isinstance(exc, TimeoutError):  # http1.py's connect timeout
        kind = httpx.ConnectTimeout
    elif isinstance(exc, ssl.SSLError | ConnectionRefusedError):
        kind = httpx.ConnectError
    elif isinstance(exc, ConnectionError):  # reset, aborted, broken pipe: it went away
        kind = httpx.ReadError
    elif isinstance(exc, OSError):  # a name that does not resolve, an unreachable network
        kind = httpx.ConnectError if connecting else httpx.ReadError
    else:
        return
    raise kind(message, request=request) from exc


def _seconds(value: float | None) -> float:
    return _NO_TIMEOUT_S if value is None else float(value)
