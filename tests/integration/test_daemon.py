"""``retention serve`` as a real process against a real registry: schedule, HTTP, signals.

Each test starts ``python -m retention --log-format json serve`` on a free loopback port and
talks to it only as an operator or Prometheus would: HTTP, signals, the policy file, the
registry. Waits poll with short timeouts instead of sleeping for fixed times.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_support import command_gc, log_events, write_policy
from prometheus_client.parser import text_string_to_metric_families
from registry_server import RegistryServer, Seeder, free_port, public_tls

NOW = datetime.now(UTC)
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
BUILDS = {"name": "builds", "match": r"build-\d+", "keep_last": 1}
WAIT_S = 15.0
RETENTION = (sys.executable, "-m", "retention", "--log-format", "json")


def ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll ``condition`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


class Served:
    """One ``retention serve`` process: its port, its HTTP answers, its JSON log lines."""

    def __init__(self, policy: Path, port: int, log_path: Path, *args: str) -> None:
        self.policy = policy
        self.log_path = log_path
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=5, trust_env=False, verify=public_tls()
        )
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*RETENTION, "serve", "-c", str(policy), *args],
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=REPOSITORY_ROOT,
            )

    def get(self, path: str) -> httpx.Response | None:
        try:
            return self.http.get(path)
        except httpx.TransportError:
            return None

    def post(self, path: str) -> httpx.Response:
        return self.http.post(path)

    def wait_serving(self) -> None:
        wait_for(lambda: self.alive() and self.get("/healthz"), "the HTTP endpoint")

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"retention serve exited {self.process.returncode}:\n{self.log()}")
        return True

    def metric(self, name: str, **labels: str) -> float | None:
        response = self.http.get("/metrics")
        response.raise_for_status()
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    def passes(self, outcome: str) -> float:
        return self.metric("retention_passes_total", outcome=outcome) or 0.0

    def wait_passes(self, outcome: str, count: int) -> None:
        wait_for(lambda: self.alive() and self.passes(outcome) >= count, f"{count} {outcome}")
        wait_for(lambda: self.metric("retention_pass_running") == 0, "the pass to end")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = 10) -> int:
        self.signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        events = log_events(self.log())
        return [e for e in events if name is None or e["event"] == name]

    def close(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start ``retention serve`` on a policy; every process is killed at teardown."""
    started: list[Served] = []

    def start(policy: Path, *args: str) -> Served:
        port = json.loads(policy.read_text())["server"]["listen"].rsplit(":", 1)[1]
        log_path = tmp_path / f"serve-{len(started)}.log"
        served = Served(policy, int(port), log_path, *args)
        started.append(served)
        served.wait_serving()
        return served

    yield start
    for served in started:
        served.close()


def daemon_policy(
    tmp_path: Path, registry: RegistryServer, *rules: dict[str, Any], **sections: Any
) -> Path:
    sections.setdefault("schedule", {"interval": "1h"})
    sections.setdefault("server", {"listen": f"127.0.0.1:{free_port()}"})
    return write_policy(tmp_path / "policy.yml", registry.url, *rules, **sections)


def push_builds(seeder: Seeder, *numbers: int) -> None:
    for number in numbers:
        seeder.image("app", [f"build-{number}"], ago(20 - number), unique=f"build-{number}")


def statuses(seeder: Seeder, *tags: str) -> dict[str, int]:
    return {tag: seeder.manifest_status("app", tag) for tag in tags}


def test_a_pass_at_start_deletes_what_the_policy_says_and_is_reported(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, serve: Callable[..., Served]
) -> None:
    push_builds(seeder, 1, 2, 3)
    policy = daemon_policy(tmp_path, registry_server, BUILDS, **command_gc(registry_server))

    daemon = serve(policy, "--run-now")
    daemon.wait_passes("success", 1)

    assert statuses(seeder, "build-1", "build-2", "build-3") == {
        "build-1": 404,
        "build-2": 404,
        "build-3": 200,
    }
    assert daemon.metric("retention_tags_deleted_total") == 2
    assert daemon.metric("retention_manifests_deleted_total") == 2
    assert (daemon.metric("retention_gc_blobs_deleted_total") or 0) > 0
    before = daemon.metric("retention_storage_bytes", when="before") or 0
    after = daemon.metric("retention_storage_bytes", when="after") or 0
    assert daemon.metric("retention_freed_bytes") == before - after > 0
    next_pass = daemon.metric("retention_next_pass_timestamp_seconds") or 0
    assert 3000 < next_pass - time.time() <= 3600
    assert wait_for(lambda: daemon.get("/readyz"), "/readyz").status_code == 200
    report = daemon.http.get("/report").json()
    assert report["ok"] is True
    assert sorted(t for a in report["applied"] for t in a["tags"]) == ["build-1", "build-2"]
    stored = list((tmp_path / "state" / "reports").glob("*-success.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text()) == report


def test_the_last_report_and_gauges_survive_a_restart(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, serve: Callable[..., Served]
) -> None:
    push_builds(seeder, 1, 2)
    policy = daemon_policy(tmp_path, registry_server, BUILDS, **command_gc(registry_server))
    first = serve(policy, "--run-now")
    first.wait_passes("success", 1)
    report = first.http.get("/report").json()
    freed = first.metric("retention_freed_bytes")
    succeeded = first.metric("retention_last_success_timestamp_seconds")
    assert first.stop() == 0

    second = serve(policy)

    assert second.http.get("/report").json() == report
    assert second.metric("retention_freed_bytes") == freed
    assert second.metric("retention_last_success_timestamp_seconds") == pytest.approx(
        succeeded, abs=0.001
    )
    assert second.passes("success") == 0
    assert second.stop() == 0


def test_a_scheduled_dry_run_reports_and_deletes_nothing(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, serve: Callable[..., Served]
) -> None:
    push_builds(seeder, 1, 2, 3)
    schedule = {"interval": "2s", "dry_run": True}
    policy = daemon_policy(tmp_path, registry_server, BUILDS, schedule=schedule)

    daemon = serve(policy)  # no --run-now: the interval alone must start the pass
    assert daemon.http.get("/report").status_code == 404
    daemon.wait_passes("dry_run", 1)

    report = daemon.http.get("/report").json()
    assert report["dry_run"] is True
    assert report["summary"]["tags_to_delete"] == 2
    assert set(statuses(seeder, "build-1", "build-2", "build-3").values()) == {200}
    assert daemon.metric("retention_manifests_deleted_total") == 0
    assert daemon.passes("success") == 0


def test_post_run_starts_a_pass_refuses_a_second_and_sigterm_lets_it_finish(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, serve: Callable[..., Served]
) -> None:
    push_builds(seeder, 1, 2)
    # A stop command that takes a second: the pass is really busy in its GC step.
    gc = command_gc(registry_server, stop_command=["sleep", "1"], start_command=["true"])
    policy = daemon_policy(tmp_path, registry_server, BUILDS, **gc)
    daemon = serve(policy)

    assert daemon.post("/run").status_code == 202
    second = daemon.post("/run")
    assert (second.status_code, second.json()) == (409, {"error": "a pass is already running"})
    daemon.wait_passes("success", 1)
    assert statuses(seeder, "build-1", "build-2") == {"build-1": 404, "build-2": 200}

    push_builds(seeder, 3)
    assert daemon.post("/run").status_code == 202
    wait_for(lambda: daemon.events("gc started"), "the second pass's GC")
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=10) == 0

    assert statuses(seeder, "build-2", "build-3") == {"build-2": 404, "build-3": 200}
    order = [e["event"] for e in daemon.events()]
    last_gc = len(order) - 1 - order[::-1].index("gc finished")
    assert order.index("stopping") < last_gc < order.index("stopped")
    assert len(list((tmp_path / "state" / "reports").glob("*-success.json"))) == 2


def test_sighup_keeps_the_old_policy_on_a_broken_file_and_applies_a_valid_one(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, serve: Callable[..., Served]
) -> None:
    push_builds(seeder, 1, 2)
    policy = daemon_policy(tmp_path, registry_server)  # no rules: nothing goes
    listen = json.loads(policy.read_text())["server"]
    daemon = serve(policy)

    policy.write_text("registry:\n  url: nowhere\nrules:\n  - name: a\n")
    daemon.signal(signal.SIGHUP)
    problems = wait_for(lambda: daemon.events("policy not reloaded"), "the reload error")
    assert [p["problem"].split(" ", 1)[0] for p in problems] == [f"{policy}:2", f"{policy}:4"]
    assert daemon.post("/run").status_code == 202
    daemon.wait_passes("success", 1)
    assert statuses(seeder, "build-1", "build-2") == {"build-1": 200, "build-2": 200}

    daemon_policy(tmp_path, registry_server, BUILDS, server=listen)
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.events("policy reloaded"), "the reload")
    assert daemon.post("/run").status_code == 202
    daemon.wait_passes("success", 2)
    assert statuses(seeder, "build-1", "build-2") == {"build-1": 404, "build-2": 200}
    assert daemon.stop() == 0


def test_a_stopped_registry_fails_passes_and_readiness_until_it_is_back(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, serve: Callable[..., Served]
) -> None:
    push_builds(seeder, 1)
    policy = daemon_policy(tmp_path, registry_server, BUILDS, schedule={"interval": "1s"})
    daemon = serve(policy, "--run-now")
    daemon.wait_passes("success", 1)
    wait_for(lambda: daemon.http.get("/readyz").status_code == 200, "ready")

    registry_server.stop()
    daemon.wait_passes("failure", 1)
    not_ready = wait_for(
        lambda: (r := daemon.http.get("/readyz")).status_code == 503 and r, "/readyz 503"
    )
    assert not_ready.json()["ready"] is False
    assert daemon.http.get("/healthz").status_code == 200
    assert daemon.events("pass failed")
    assert json.loads(daemon.http.get("/report").text)["ok"] is False

    successes = daemon.passes("success")
    registry_server.start()
    daemon.wait_passes("success", int(successes) + 1)
    wait_for(lambda: daemon.http.get("/readyz").status_code == 200, "ready again")
    assert daemon.stop() == 0


def test_a_port_in_use_is_an_error_with_exit_code_1(
    tmp_path: Path, registry_server: RegistryServer
) -> None:
    policy = daemon_policy(
        tmp_path, registry_server, server={"listen": f"127.0.0.1:{registry_server.port}"}
    )
    done = subprocess.run(
        [*RETENTION, "serve", "-c", str(policy)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPOSITORY_ROOT,
        check=False,
    )
    assert done.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{registry_server.port}" in done.stderr
