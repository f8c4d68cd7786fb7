"""The daemon's HTTP endpoints: health, readiness, metrics, the last report, a manual run.

Kept apart from the scheduler and signal code: ``respond`` routes a request to an ``App``
(anything with the four members below) and the socket code only writes what it returns,
so the routing is tested by calling it and the server is the standard library's.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from retention.core.policy import Server
from retention.errors import RetentionError
from retention.service.event_receiver import EVENTS_PATH, EventReceiver
from retention.service.metrics import CONTENT_TYPE


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


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON_TYPE


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


_ROUTES: dict[str, tuple[str, Callable[[App], Response]]] = {
    "/healthz": ("GET", _healthz),
    "/readyz": ("GET", _readyz),
    "/metrics": ("GET", _metrics),
    "/report": ("GET", _report),
    "/run": ("POST", _run),
}


def respond(daemon: App, method: str, target: str) -> Response:
    """Route one request; kept apart from the socket code so it can be called directly."""
    path = urlsplit(target).path
    route = _ROUTES.get(path)
    if route is None:
        return _json(404, {"error": f"no endpoint {path}"})
    allowed, handler = route
    if method != allowed:
        return _json(405, {"error": f"{path} answers {allowed} only"})
    return handler(daemon)


class _Handler(BaseHTTPRequestHandler):
    """Tiny on purpose: every decision is in ``respond``."""

    server: _Server

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        if urlsplit(self.path).path == EVENTS_PATH:
            self._write(self._events())
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
        self._write(respond(self.server.app, method, self.path))

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: Prometheus scrapes every few seconds and would drown the passes."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """HTTPServer's own looks up the host's FQDN, which can stall on a slow resolver."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


@contextmanager
def listening(server: Server, daemon: App) -> Iterator[_Server]:
    """Serve HTTP on ``server.listen`` from a background thread for the ``with`` block."""
    try:
        http = _Server((server.host, server.port), daemon)
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
