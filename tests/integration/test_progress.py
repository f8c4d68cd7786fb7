"""The progress line, read from a real terminal (a pty) as an operator would see it.

Every phase shows ``phase: done/total``, with the total from the first line on; the line
is erased before each log line, so the two never run together; ``NO_COLOR`` turns the
bold phase name (and the log colours) off.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cli_support import command_gc, write_policy
from registry_server import RegistryServer, Seeder

NOW = datetime.now(UTC)
BUILDS = {"name": "builds", "match": r"v\d+", "keep_last": 1}
DRAWN = re.compile(r"\r\x1b\[K(?:\x1b\[1m)?([a-z ]+)(?:\x1b\[0m)?: (\d+)/(\d+)(?: \d+%)?")


def on_a_terminal(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI with stderr on a pty (stdout piped, as `retention run > report`)."""
    master, slave = pty.openpty()
    environment = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    environment.update({"TERM": "xterm", **(env or {})})
    process = subprocess.Popen(
        [sys.executable, "-m", "retention", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=environment,
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            process.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert process.stdout is not None
    process.stdout.read()
    process.stdout.close()
    return process.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_a_run_at_a_terminal_shows_every_phase_with_its_total_and_never_mixes_log_lines(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    for repository in ("web", "api"):
        for i in range(3):
            seeder.image(
                repository, [f"v{i}"], NOW - timedelta(days=9 - i), unique=repository + str(i)
            )
    policy = write_policy(
        tmp_path / "p.yml", registry_server.url, BUILDS, **command_gc(registry_server)
    )

    code, terminal = on_a_terminal("--log-format", "console", "run", "-c", str(policy))

    assert code == 0, terminal
    drawn = [(phase, int(done), int(total)) for phase, done, total in DRAWN.findall(terminal)]
    finals = {phase: (done, total) for phase, done, total in drawn}
    assert finals["scan"] == (2, 2)
    assert finals["trash"] == (4, 4)
    assert finals["delete"] == (4, 4)
    assert finals["gc"] == (1, 1)
    assert finals["verify"] == (2, 2)
    for phase in finals:
        assert len({total for p, _, total in drawn if p == phase}) == 1, f"{phase} total grew"
    assert "\x1b[1m" in terminal
    # After a progress line, only an erase or the end: never a log line on the same line.
    for match in DRAWN.finditer(terminal):
        rest = terminal[match.end() :]
        assert rest == "" or rest.startswith("\r"), repr(terminal[match.start() : match.end() + 40])
    assert "manifest deleted" in terminal


def test_no_color_drops_the_bold_phase_and_a_pipe_gets_no_progress_at_all(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    seeder.image("web", ["v1"], NOW - timedelta(days=2), unique="one")
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)

    code, terminal = on_a_terminal("plan", "-c", str(policy), env={"NO_COLOR": "1"})
    piped = subprocess.run(
        [sys.executable, "-m", "retention", "plan", "-c", str(policy)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert code == 0, terminal
    assert ("scan", "1", "1") in DRAWN.findall(terminal)
    assert "\x1b[1m" not in terminal
    assert set(re.findall(r"\x1b\[[0-9;]*[A-Za-z]", terminal)) == {"\x1b[K"}
    assert piped.returncode == 0
    assert "\r" not in piped.stderr and "scan:" not in piped.stderr
