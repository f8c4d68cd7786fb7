"""``gc.mode: command``: run garbage-collect on this host, with the hooks around it.

For a sidecar that shares the registry's volume and has its binary, or a host that runs
Debian's package (``stop_command: [systemctl, stop, docker-registry]``). Writes are kept
away by stopping the registry or restarting it read-only (``readonly_start`` /
``readonly_stop``); ``restart_command`` flushes its blob-descriptor cache afterwards. The
hooks after GC run whatever happened before them, so a failed GC never leaves the registry
down or read-only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Sequence

from retention.core.model import GcResult
from retention.core.policy import GarbageCollection
from retention.errors import GarbageCollectionError
from retention.gc import ReadyCheck, count_deleted_blobs

STOP_START_TIMEOUT_S = 300.0


class CommandCollector:
    """The command-mode sequence, every hook optional.

    ``readonly_start`` → ``stop_command`` → garbage-collect → ``start_command`` →
    ``readonly_stop`` → ``restart_command``. Every step after the first that ran is run
    whatever happened before it, so a failed GC never leaves the registry stopped, read-only
    or with a stale blob cache; each of them waits until ``/v2/`` answers again.
    """

    mode = "command"

    def __init__(self, settings: GarbageCollection, ready: ReadyCheck) -> None:
        self.settings = settings
        self.ready = ready

    def collect(self) -> GcResult:
        """Run the sequence; raise GarbageCollectionError naming every step that failed."""
        started = time.monotonic()
        problems: list[str] = []
        output = ""
        try:
            if self.settings.readonly_start:
                run_command(self.settings.readonly_start, STOP_START_TIMEOUT_S, "readonly_start")
            output = self._collect_stopped()
        except GarbageCollectionError as exc:
            problems.append(str(exc))
        problems += self._afterwards("readonly_stop", self.settings.readonly_stop)
        problems += self._afterwards("restart_command", self.settings.restart_command)
        if problems:
            raise GarbageCollectionError("; ".join(problems))
        return GcResult(
            mode=self.mode,
            ran=True,
            blobs_deleted=count_deleted_blobs(output),
            duration_s=time.monotonic() - started,
            restarted=self.settings.restarts_registry,
        )

    def _collect_stopped(self) -> str:
        """Stop (if configured), collect, and always start again and wait for readiness."""
        if self.settings.stop_command:
            run_command(self.settings.stop_command, STOP_START_TIMEOUT_S, "stop_command")
        try:
            return run_command(
                gc_argv(self.settings), self.settings.timeout.total_seconds(), "garbage-collect"
            )
        finally:
            self._start_again()

    def _start_again(self) -> None:
        if self.settings.start_command:
            run_command(self.settings.start_command, STOP_START_TIMEOUT_S, "start_command")
            self.ready(self.settings.ready_timeout.total_seconds())

    def _afterwards(self, what: str, argv: Sequence[str] | None) -> list[str]:
        """Run a hook that must run whatever happened, then wait; its problem, if any."""
        if not argv:
            return []
        try:
            run_command(argv, STOP_START_TIMEOUT_S, what)
            self.ready(self.settings.ready_timeout.total_seconds())
        except GarbageCollectionError as exc:
            return [str(exc)]
        return []


def missing_programs(settings: GarbageCollection) -> list[str]:
    """One line per configured command whose program this host cannot find (for ``check``)."""
    commands = {
        "gc.command": settings.command,
        "gc.stop_command": settings.stop_command,
        "gc.start_command": settings.start_command,
    }
    return [
        f"{key}: program not found: {argv[0]} (not on PATH, or no such file)"
        for key, argv in commands.items()
        if argv and shutil.which(argv[0]) is None
    ]


def gc_argv(settings: GarbageCollection) -> list[str]:
    """The configured command, with ``--delete-untagged`` only when explicitly opted in."""
    argv = list(settings.command)
    if settings.delete_untagged and "--delete-untagged" not in argv:
        argv.append("--delete-untagged")
    return argv


def run_command(argv: Sequence[str], timeout_s: float, what: str) -> str:
    """Run without a shell; return stdout and stderr together, raise with the last lines."""
    try:
        done = subprocess.run(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError as exc:
        raise GarbageCollectionError(f"{what}: program not found: {argv[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise GarbageCollectionError(f"{what}: still running after {timeout_s:.0f}s") from exc
    except OSError as exc:
        raise GarbageCollectionError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise GarbageCollectionError(f"{what} exited {done.returncode}: {cause(done.stdout)}")
    return done.stdout


def cause(output: str) -> str:
    """The line of a failed program's output that says why: its first error line.

    ``registry garbage-collect`` (cobra) answers a bad config with ``configuration error:
    open ...: no such file or directory`` and then its whole usage text, so the tail would
    show only flags. Lines from ``Usage:`` on are dropped; the first line mentioning an
    error wins, otherwise the last lines left.
    """
    before_usage = re.split(r"^Usage:\s*$", output, maxsplit=1, flags=re.MULTILINE)[0]
    lines = [line.strip() for line in before_usage.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error|fatal|panic", line, re.IGNORECASE)]
    return errors[0] if errors else last_lines(before_usage)


def last_lines(output: str, count: int = 3) -> str:
    """The tail of a program's output on one line, for an error message."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "(no output)"
