"""``retention serve`` as an operator exposes it: the bearer token, the wire's limits, promtool.

The same real process and registry as ``test_daemon.py`` (whose ``Served`` helper this
reuses); every request goes over a real loopback socket.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_daemon as daemon_tests
from cli_support import command_gc, retention
from registry_server import RegistryServer, Seeder, free_port

from retention.core.policy import DEFAULT_PORT

TOKEN = "s3cret-token-for-tests-0123456789"
Served = daemon_tests.Served


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start ``retention serve``; every process is killed at teardown."""
    started: list[Served] = []

    def start(policy: Path, *args: str) -> Served:
        port = int(policy.read_text().split('"listen": "')[1].split('"')[0].rsplit(":", 1)[1])
        served = Served(policy, port, tmp_path / f"serve-{len(started)}.log", *args)
        started.append(served)
        served.wait_serving()
        return served

    yield start
    for served in started:
        served.close()


def guarded_policy(tmp_path: Path, registry: RegistryServer, **server_keys: object) -> Path:
    token_file = tmp_path / "server-token"
    token_file.write_text(TOKEN + "\n")
    server = {
        "listen": f"127.0.0.1:{free_port()}",
        "token_file": str(token_file),
        **server_keys,
    }
    return daemon_tests.daemon_policy(
        tmp_path, registry, daemon_tests.BUILDS, server=server, **command_gc(registry)
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_post_run_without_the_token_is_401_and_deletes_nothing(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, serve: Callable[..., Served]
) -> None:
    daemon_tests.push_builds(seeder, 1, 2)
    daemon = serve(guarded_policy(tmp_path, registry_server))

    for headers in ({}, bearer("wrong-token-0123456789"), {"Authorization": f"Basic {TOKEN}"}):
        refused = daemon.http.post("/run", headers=headers)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in refused.text

    time.sleep(0.5)  # had a pass started, it would have deleted build-1 by now
    assert daemon.passes("success") == 0
    assert daemon_tests.statuses(seeder, "build-1", "build-2") == {"build-1": 200, "build-2": 200}
    assert daemon.stop() == 0


def test_post_run_with_the_token_runs_the_pass(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, serve: Callable[..., Served]
) -> None:
    daemon_tests.push_builds(seeder, 1, 2)
    daemon = serve(guarded_policy(tmp_path, registry_server))

    assert daemon.http.post("/run", headers=bearer(TOKEN)).status_code == 202
    daemon.wait_passes("success", 1)

    assert daemon_tests.statuses(seeder, "build-1", "build-2") == {"build-1": 404, "build-2": 200}
    assert daemon.stop() == 0


def test_read_only_endpoints_stay_open_and_protect_report_guards_the_report(
    tmp_path: Path, registry_server: RegistryServer, serve: Callable[..., Served]
) -> None:
    daemon = serve(guarded_policy(tmp_path, registry_server, protect_report=True))

    assert daemon.http.get("/healthz").status_code == 200
    assert daemon.http.get("/metrics").status_code == 200
    assert daemon.http.get("/readyz").status_code in (200, 503)
    assert daemon.http.get("/report").status_code == 401
    assert daemon.http.get("/report", headers=bearer(TOKEN)).status_code == 404  # no pass yet


def test_head_healthz_answers_like_get_without_a_body(
    tmp_path: Path, registry_server: RegistryServer, serve: Callable[..., Served]
) -> None:
    daemon = serve(guarded_policy(tmp_path, registry_server))
    got, head = daemon.http.get("/healthz"), daemon.http.head("/healthz")
    assert head.status_code == got.status_code == 200
    assert head.headers["Content-Length"] == got.headers["Content-Length"]
    assert head.content == b""


def test_a_missing_token_file_stops_serve_at_start_with_one_line(
    tmp_path: Path, registry_server: RegistryServer
) -> None:
    policy = guarded_policy(tmp_path, registry_server)
    (tmp_path / "server-token").unlink()
    done = retention("serve", "-c", str(policy), timeout=30)
    assert done.code == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: cannot read the server token")
    assert "Traceback" not in done.stderr


def test_check_refuses_an_open_listen_without_a_token_and_names_the_line(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.yml"
    policy.write_text("registry:\n  url: http://127.0.0.1:5000\nserver:\n  listen: 0.0.0.0:9478\n")
    done = retention("check", "-c", str(policy))
    assert done.code == 2
    assert f"{policy}:4 server.listen: '0.0.0.0:9478' is reachable" in done.stderr
    assert "token_file or server.token_env" in done.stderr

    policy.write_text(
        "registry:\n  url: http://127.0.0.1:5000\n"
        "server:\n  listen: 0.0.0.0:9478\n  token_env: RETENTION_SERVER_TOKEN\n"
    )
    assert retention("check", "-c", str(policy)).code == 0


def test_the_default_port_is_not_prometheus_own() -> None:
    assert DEFAULT_PORT != 9090


def test_a_slow_client_does_not_block_others_and_is_dropped(
    tmp_path: Path, registry_server: RegistryServer, serve: Callable[..., Served]
) -> None:
    daemon = serve(guarded_policy(tmp_path, registry_server, request_timeout="1s"))
    port = int(str(daemon.http.base_url).rsplit(":", 1)[1].rstrip("/"))

    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        assert daemon.http.get("/healthz").status_code == 200
        assert time.monotonic() - started < 0.5
        slow.settimeout(5)
        assert slow.recv(1024) == b""  # closed by the server after request_timeout
        assert time.monotonic() - started < 3


def test_a_client_trickling_its_request_is_cut_off_after_the_request_timeout(
    tmp_path: Path, registry_server: RegistryServer, serve: Callable[..., Served]
) -> None:
    daemon = serve(guarded_policy(tmp_path, registry_server, request_timeout="1s"))
    port = int(str(daemon.http.base_url).rsplit(":", 1)[1].rstrip("/"))

    with socket.create_connection(("127.0.0.1", port)) as trickle:
        started = time.monotonic()
        cut = False
        for _ in range(40):  # one header byte every 0.1 s: never silent for 1 s
            try:
                trickle.sendall(b"X")
            except OSError:
                cut = True
                break
            time.sleep(0.1)
        trickle.settimeout(2)
        try:
            cut = cut or trickle.recv(1024) == b""
        except OSError:
            cut = True
        assert cut
        assert time.monotonic() - started < 3
    assert daemon.http.get("/healthz").status_code == 200


def test_oversized_headers_and_bodies_are_refused_without_details(
    tmp_path: Path, registry_server: RegistryServer, serve: Callable[..., Served]
) -> None:
    daemon = serve(guarded_policy(tmp_path, registry_server))

    big_header = daemon.http.get("/healthz", headers={"X-Big": "a" * 9000})
    big_body = daemon.http.post("/run", headers=bearer(TOKEN), content=b"x" * 70_000)
    unknown = daemon.http.get("/../../etc/passwd")

    assert big_header.status_code == 431
    assert big_body.status_code == 413
    assert unknown.status_code == 404
    for response in (big_header, big_body, unknown):
        assert "Traceback" not in response.text and "/work" not in response.text
        assert response.headers["Server"] == "retention"


def test_the_real_metrics_pass_promtool_check_metrics(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, serve: Callable[..., Served]
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package prometheus; tests/install.sh)")
    daemon_tests.push_builds(seeder, 1, 2)
    daemon = serve(guarded_policy(tmp_path, registry_server), "--run-now")
    daemon.wait_passes("success", 1)

    exposition = daemon.http.get("/metrics").text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (checked.stdout + checked.stderr).strip() == ""
    assert "_created" not in exposition
    assert (daemon.metric("retention_gc_blobs_deleted_total") or 0) > 0
    assert daemon.metric("retention_plan_deletions", kind="manifests") == 1


def test_sighup_takes_a_rotated_token_and_keeps_the_old_one_when_the_new_is_unusable(
    tmp_path: Path, registry_server: RegistryServer, serve: Callable[..., Served]
) -> None:
    daemon = serve(guarded_policy(tmp_path, registry_server, protect_report=True))
    rotated = "rotated-token-abcdefghijklmnop"

    (tmp_path / "server-token").write_text("")  # an empty token is refused...
    daemon.signal(signal.SIGHUP)
    daemon_tests.wait_for(
        lambda: daemon.events("token not reloaded, the old one stays in force"), "the refusal"
    )
    assert daemon.http.get("/report", headers=bearer(TOKEN)).status_code == 404  # ...the old works

    (tmp_path / "server-token").write_text(rotated)
    daemon.signal(signal.SIGHUP)
    daemon_tests.wait_for(
        lambda: daemon.http.get("/report", headers=bearer(rotated)).status_code == 404,
        "the rotated token",
    )
    assert daemon.http.get("/report", headers=bearer(TOKEN)).status_code == 401
    assert daemon.stop() == 0
