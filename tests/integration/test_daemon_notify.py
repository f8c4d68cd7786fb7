"""Notifications from a real ``retention serve`` pass to real local receivers.

A small HTTP server in the test (127.0.0.1 only) plays the generic webhook, Slack and
Teams; a closed port plays a receiver that is down; a Python one-liner is the command.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import test_daemon as daemon_tests
from cli_support import command_gc
from registry_server import RegistryServer, Seeder, free_port

Served = daemon_tests.Served
SECRET_PATH = "/services/T000/B000/very-secret-path"


class Receiver:
    """Records every POST: path, headers and JSON body."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(
                    {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
                )
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def by_path(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.received if r["path"] == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()
    found.server.server_close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(policy: Path, *args: str) -> Served:
        port = int(json.loads(policy.read_text())["server"]["listen"].rsplit(":", 1)[1])
        served = Served(policy, port, tmp_path / f"serve-{len(started)}.log", *args)
        started.append(served)
        served.wait_serving()
        return served

    yield start
    for served in started:
        served.close()


def test_a_pass_notifies_webhook_slack_teams_and_a_command_while_one_target_is_down(
    tmp_path: Path,
    registry_server: RegistryServer,
    seeder: Seeder,
    serve: Callable[..., Served],
    receiver: Receiver,
) -> None:
    daemon_tests.push_builds(seeder, 1, 2, 3)
    stdin_copy = tmp_path / "command-stdin.json"
    copy_stdin = f"import sys; open({str(stdin_copy)!r}, 'wb').write(sys.stdin.buffer.read())"
    down = f"http://127.0.0.1:{free_port()}{SECRET_PATH}"
    notify = [
        {"name": "down", "type": "webhook", "url": down, "retries": 3},
        {
            "name": "hook",
            "type": "webhook",
            "url": f"{receiver.url}/generic",
            "headers": {"X-Hook-Token": "abc"},
        },
        {"name": "slack", "type": "slack", "url": f"{receiver.url}{SECRET_PATH}"},
        {"name": "teams", "type": "teams", "url": f"{receiver.url}/teams", "events": ["failed"]},
        {"name": "page", "type": "command", "command": [sys.executable, "-c", copy_stdin]},
    ]
    policy = daemon_tests.daemon_policy(
        tmp_path, registry_server, daemon_tests.BUILDS, notify=notify, **command_gc(registry_server)
    )

    started = time.monotonic()
    daemon = serve(policy, "--run-now")
    daemon.wait_passes("success", 1)
    pass_s = time.monotonic() - started
    daemon_tests.wait_for(lambda: receiver.by_path(SECRET_PATH), "the Slack message")
    daemon_tests.wait_for(stdin_copy.exists, "the command")

    generic = receiver.by_path("/generic")
    assert [g["json"]["event"] for g in generic] == ["deleted"]
    assert generic[0]["json"]["title"] == "retention deleted 2 manifests (2 tags) in 1 repository"
    assert sorted(generic[0]["json"]["details"]) == ["app:build-1", "app:build-2"]
    assert generic[0]["headers"]["X-Hook-Token"] == "abc"
    assert generic[0]["json"]["run_id"] == daemon.http.get("/report").json()["run_id"]
    slack = receiver.by_path(SECRET_PATH)[0]["json"]
    assert slack["text"].startswith("*retention deleted 2 manifests")
    assert receiver.by_path("/teams") == []  # it asked for failures only
    assert json.loads(stdin_copy.read_text())["event"] == "deleted"
    assert pass_s < 15  # the down target's 1+2+5 s of backoff is not the pass's

    daemon_tests.wait_for(lambda: daemon.events("notification failed, will retry"), "a retry")
    assert "very-secret-path" not in daemon.log()
    retry = daemon.events("notification failed, will retry")[0]
    assert retry["to"].endswith("/***") and retry["target"] == "down"
    assert daemon.passes("failure") == 0
    daemon_tests.wait_for(
        lambda: daemon.metric("retention_notifications_total", target="slack", outcome="sent"),
        "the notification counter",
    )
    assert daemon.metric("retention_notifications_total", target="hook", outcome="sent") == 1
    assert daemon.stop() == 0


def test_a_failed_pass_reaches_a_teams_receiver_as_an_adaptive_card(
    tmp_path: Path,
    registry_server: RegistryServer,
    serve: Callable[..., Served],
    receiver: Receiver,
) -> None:
    notify = [{"name": "teams", "type": "teams", "url": f"{receiver.url}/teams"}]
    policy = daemon_tests.daemon_policy(tmp_path, registry_server, notify=notify)
    registry_server.stop()
    try:
        daemon = serve(policy, "--run-now")
        daemon.wait_passes("failure", 1)
        daemon_tests.wait_for(lambda: receiver.by_path("/teams"), "the Teams card")
    finally:
        registry_server.start()

    card = receiver.by_path("/teams")[0]["json"]["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    title = card["content"]["body"][0]["text"]
    assert title.startswith("retention pass failed:")
    assert daemon.stop() == 0
