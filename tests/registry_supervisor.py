"""Test support: a registry kept running by a supervisor, as systemd or the kubelet would.

The GC hooks (``readonly_start``, ``readonly_stop``, ``restart_command``) are commands that
restart the registry, so the tests need a registry that something outside the test process
restarts. Two entry points, both run as programs:

``serve DIR URL BINARY CONFIG``
    Run ``BINARY serve CONFIG`` and start it again whenever it exits, read-only while the
    file ``DIR/readonly`` exists (with ``REGISTRY_STORAGE_MAINTENANCE_READONLY``, in its
    JSON form), until ``DIR/stop`` exists. The running registry's pid is in ``DIR/pid``.

``control DIR readonly|writable|restart``
    What a hook runs: append the word to ``DIR/hooks.log``, set the mode, SIGTERM the
    registry and return once a new process answers ``/v2/`` (the registry drains the
    requests in flight first: ``http.draintimeout``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

READONLY = '{"enabled":true}'
WAIT_S = 30.0


def serve(directory: Path, url: str, binary: str, config: str) -> None:
    (directory / "url").write_text(url)
    with (directory / "registry.log").open("ab") as log:
        while not (directory / "stop").exists():
            environment = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
            if (directory / "readonly").exists():
                environment["REGISTRY_STORAGE_MAINTENANCE_READONLY"] = READONLY
            process = subprocess.Popen(
                [binary, "serve", config], stdout=log, stderr=subprocess.STDOUT, env=environment
            )
            (directory / "pid").write_text(str(process.pid))
            process.wait()


def control(directory: Path, action: str) -> None:
    with (directory / "hooks.log").open("a") as log:
        log.write(action + "\n")
    marker = directory / "readonly"
    if action == "readonly":
        marker.touch()
    elif action == "writable":
        marker.unlink(missing_ok=True)
    old = int((directory / "pid").read_text())
    os.kill(old, signal.SIGTERM)
    wait_for_new_process(directory, old)


def wait_for_new_process(directory: Path, old: int) -> None:
    url = (directory / "url").read_text() + "/v2/"
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if int((directory / "pid").read_text() or 0) != old and answers(url):
            return
        time.sleep(0.05)
    raise SystemExit(f"the registry did not come back within {WAIT_S:.0f}s")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "serve":
        serve(Path(arguments[0]), *arguments[1:])
    else:
        control(Path(arguments[0]), arguments[1])
