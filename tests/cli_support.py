"""Test support: write policy files and run the real ``retention`` CLI.

``retention()`` runs the CLI in this process through click's ``CliRunner`` (about 70 runs,
each a second of interpreter start and imports as a subprocess), with the same arguments,
environment, exit code and separate stdout/stderr. ``process=True`` runs
``python -m retention`` instead, where a separate process is the point: the entry point
itself, signals, the README's commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from retention import cli


def write_policy(path: Path, url: str, *rules: Mapping[str, Any], **sections: Any) -> Path:
    """A policy file (JSON is YAML) with a state_dir beside it unless one is given.

    Tests push images and plan at once, so the grace period is 0s unless a test sets it.
    """
    document: dict[str, Any] = {
        "registry": {"url": url, "retries": 1},
        "rules": [dict(r) for r in rules],
        "state_dir": str(path.parent / "state"),
    }
    document.update(sections)
    document["safety"] = {"grace_period": "0s", **document.get("safety", {})}
    path.write_text(json.dumps(document, indent=2))
    return path


def command_gc(server: Any, **extra: Any) -> dict[str, Any]:
    """Policy sections for ``gc.mode: command`` with the test registry's own binary and config.

    ``writes: none`` is true here: nothing pushes while a test's pass runs. The test
    registry has no blob-descriptor cache unless a test configures one (then it must say
    ``blob_cache`` and how the registry is restarted).
    """
    return {
        "gc": {
            "mode": "command",
            "command": [server.binary, "garbage-collect", str(server.config_path)],
            "writes": "none",
            "blob_cache": "none",
            **extra,
        },
        "storage": {"path": str(server.root)},
    }


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def retention(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120, process: bool = False
) -> CliResult:
    """Run ``retention ARGS`` with JSON logs, as a scheduler or CI would (see the module)."""
    if not process:
        return _in_process(args, env or {})
    environment = {**os.environ, **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "retention", "--log-format", "json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def _in_process(args: tuple[str, ...], env: Mapping[str, str]) -> CliResult:
    """The CLI through CliRunner; an exception that escaped it is shown as a traceback on
    stderr, exactly as the interpreter would, so ``no_traceback`` still catches it."""
    done = CliRunner().invoke(cli.main, ["--log-format", "json", *args], env=dict(env))
    stderr = done.stderr
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(
            traceback.format_exception(done.exception)
        )
    return CliResult(done.exit_code, done.stdout, stderr)


def log_events(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of a run (other stderr lines, such as ``error:``, are skipped)."""
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def actions(report: Mapping[str, Any], repository: str) -> dict[str, str]:
    for entry in report["repositories"]:
        if entry["name"] == repository:
            return {t["tag"]: t["action"] for t in entry["tags"]}
    raise AssertionError(f"{repository} not in report")


def blob_path(root: Path, digest: str) -> Path:
    """Where Distribution's filesystem driver keeps a blob's bytes."""
    hex_digest = digest.split(":", 1)[1]
    return root / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def no_traceback(result: CliResult) -> None:
    assert "Traceback" not in result.stderr, result.stderr
