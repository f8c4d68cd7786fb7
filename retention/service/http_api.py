"""The daemon's HTTP endpoints: health, readiness, metrics, the last report, a manual run.

State-changing endpoints (``POST /run``) need the bearer token when one is configured
(``service/access.py``); so does ``/report`` with ``server.protect_report``. Answers never
carry a traceback or a file path: an unexpected error is logged and answered 500.

Kept apart from the scheduler and signal code: ``respond`` routes a request to an ``App``
(anything with the four members below) and the socket code only writes what it returns,
so the routing is tested by calling it and the server is the standard library's.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from retention.core.policy import Server
from retention.errors import RetentionError
from retention.logs import get_logger
from retention.service.access import CHALLENGE, BearerToken
from retention.service.event_receiver import EVENTS_PATH, EventReceiver
from retention.service.metrics import CONTENT_TYPE

log = get_logger(__name__)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str


class App(Protocol):
    """What the endpoints need from the daemon."""

    @property
    def readiness(self) -> Readiness: ...

    @property
    def last_report(self) -> bytes | None: ...

    def metrics_body(self) -> bytes: ...

    def start_now(self) -> bool: ...

    @property
    def events(self) -> EventReceiver | None: ...


JSON_TYPE = "application/json"
HTTP_POLL_S = 0.1  # how soon the server thread notices shutdown()
# Limits against slow or hostile clients: no request needs more than a few headers.
MAX_HEADER_BYTES = 8 * 1024
MAX_CONNECTIONS = 64


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()


Guard = Literal["open", "token", "report"]


@dataclass(frozen=True)
class Access:
    """Which endpoints need the bearer token; no token configured means all are open.

    ``Server`` refuses a non-loopback listen without a token, so "open" is loopback only.
    """

    token: BearerToken | None = None
    protect_report: bool = False

    def refuses(self, guard: Guard, authorization: str | None) -> bool:
        if self.token is None or guard == "open":
            return False
        if guard == "report" and not self.protect_report:
            return False
        return not self.token.allows(authorization)


OPEN = Access()


def _json(status: int, data: Mapping[str, Any]) -> Response:
    return Response(status, (json.dumps(data) + "\n").encode())


def _healthz(daemon: App) -> Response:
    return _json(200, {"status": "alive"})


def _readyz(daemon: App) -> Response:
    readiness = daemon.readiness
    body = {"ready": readiness.ready, "reason": readiness.reason}
    return _json(200 if readiness.ready else 503, body)


def _metrics(daemon: App) -> Response:
    return Response(200, daemon.metrics_body(), CONTENT_TYPE)


def _report(daemon: App) -> Response:
    body = daemon.last_report
    if body is None:
        return _json(404, {"error": "no pass has run yet"})
    return Response(200, body)


def _run(daemon: App) -> Response:
    if daemon.start_now():
        return _json(202, {"status": "pass started"})
    return _json(409, {"error": "a pass is already running"})


_ROUTES: dict[str, tuple[str, Guard, Callable[[App], Response]]] = {
    "/healthz": ("GET", "open", _healthz),
    "/readyz": ("GET", "open", _readyz),
    "/metrics": ("GET", "open", _metrics),
    "/report": ("GET", "report", _report),
    "/run": ("POST", "token", _run),
}
UNAUTHORIZED = Response(
    401,
    b'{"error": "this endpoint needs Authorization: Bearer <token>"}\n',
    headers=(("WWW-Authenticate", CHALLENGE),),
)


def respond(
    daemon: App,
    method: str,
    target: str,
    authorization: str | None = None,
    access: Access = OPEN,
) -> Response:
    """Route one request; kept apart from the socket code so it can be called directly.

    HEAD is answered as GET (the socket code drops the body). The token is checked before
    the method, so a wrong method on a guarded path tells an anonymous caller nothing.
    """
    path = urlsplit(target).path
    route = _ROUTES.get(path)
    if route is None:
        return _json(404, {"error": "no such endpoint"})
    allowed, guard, handler = route
    if access.refuses(guard, authorization):
        return UNAUTHORIZED
    if method != allowed and not (method == "HEAD" and allowed == "GET"):
        return _json(405, {"error": f"{path} answers {allowed} only"})
    return handler(daemon)


class _Handler(BaseHTTPRequestHandler):
    """Tiny on purpose: every decision is in ``respond``; here only the wire's limits."""

    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads
    server_version = "retention"
    error_content_type = JSON_TYPE
    error_message_format = '{"error": "%(code)d %(message)s"}\n'

    def setup(self) -> None:
        """Two limits per connection: ``request_timeout`` of silence, and of the whole.

        The socket timeout drops a client that stops sending; the timer drops one that
        trickles a byte now and then (slowloris), which a socket timeout never catches.
        """
        limit = self.server.request_timeout_s
        self.request.settimeout(limit)
        self._deadline = threading.Timer(limit, self._cut)
        self._deadline.daemon = True
        self._deadline.start()
        super().setup()

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.request.shutdown(socket.SHUT_RDWR)

    def version_string(self) -> str:
        """``retention``: no Python version in the Server header."""
        return self.server_version

    def do_GET(self) -> None:
        self._answer("GET")

    def do_HEAD(self) -> None:
        self._answer("HEAD")

    def do_POST(self) -> None:
        if urlsplit(self.path).path == EVENTS_PATH:
            self._write(self._events(), "POST")
            return
        self._answer("POST")

    def _events(self) -> Response:
        """Registry notifications: the receiver needs the headers and the body."""
        receiver = self.server.app.events
        if receiver is None:
            return _json(404, {"error": "notifications are not enabled in the policy"})
        headers = {name.lower(): value for name, value in self.headers.items()}
        answer = receiver.receive(headers, self.rfile.read)
        return _json(answer.status, answer.body)

    def _answer(self, method: str) -> None:
        refusal = self._refusal()
        if refusal is not None:
            self._write(refusal, method)
            return
        try:
            response = respond(
                self.server.app,
                method,
                self.path,
                self.headers.get("Authorization"),
                self.server.access,
            )
        except Exception as exc:  # a bug: answer without details, log it, keep serving
            log.exception("request failed", path=urlsplit(self.path).path, error=repr(exc))
            response = _json(500, {"error": "internal error"})
        self._write(response, method)

    def _refusal(self) -> Response | None:
        """Oversized headers or body, or a body without a length: refused unread."""
        header_bytes = sum(len(k) + len(v) + 4 for k, v in self.headers.items())
        if header_bytes > MAX_HEADER_BYTES:
            return _json(431, {"error": "request headers too large"})
        if "Transfer-Encoding" in self.headers:
            return _json(411, {"error": "send Content-Length, not a chunked body"})
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return _json(400, {"error": "Content-Length is not a number"})
        if length < 0 or length > self.server.max_body_bytes:
            return _json(413, {"error": "request body too large"})
        self.rfile.read(length)  # read what was announced so the client sees our answer
        return None

    def _write(self, response: Response, method: str) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: Prometheus scrapes every few seconds and would drown the passes."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], app: App, settings: Server, access: Access
    ) -> None:
        self.app = app
        self.access = access
        self.request_timeout_s = settings.request_timeout.total_seconds()
        self.max_body_bytes = settings.max_body_bytes
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """HTTPServer's own looks up the host's FQDN, which can stall on a slow resolver."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        """At most ``MAX_CONNECTIONS`` at once: beyond that a connection is closed at once."""
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of socketserver's traceback on stderr (a dropped client)."""
        log.debug("connection error", client=str(client_address[0]))


@contextmanager
def listening(server: Server, daemon: App, access: Access = OPEN) -> Iterator[_Server]:
    """Serve HTTP on ``server.listen`` from a background thread for the ``with`` block."""
    try:
        http = _Server((server.host, server.port), daemon, server, access)
    except OSError as exc:
        raise RetentionError(f"cannot listen on {server.listen}: {exc.strerror or exc}") from exc
    thread = threading.Thread(
        target=http.serve_forever, args=(HTTP_POLL_S,), name="retention-http", daemon=True
    )
    thread.start()
    try:
        yield http
    finally:
        http.shutdown()
        http.server_close()
