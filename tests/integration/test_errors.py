"""Errors that show their cause: a failed GC's first error line, a GC program that is not
there, and (in test_auth_tls.py) a registry wanting credentials none were configured for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cli_support import command_gc, no_traceback, retention, write_policy
from click.testing import CliRunner
from registry_server import RegistryServer, Seeder

from retention.cli import main
from retention.gc.command import cause

NOW = datetime.now(UTC)
BUILDS = {"name": "builds", "match": r"v\d+", "keep_last": 1}
COBRA_FAILURE = """configuration error: open /etc/nope.yml: no such file or directory
Usage:
  registry garbage-collect <config> [flags]

Flags:
  -m, --delete-untagged   delete manifests that are not currently referenced via tag
  -h, --help              help for garbage-collect
"""


def test_a_failed_gc_shows_the_registrys_error_line_not_its_usage_text(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    for i in range(3):
        seeder.image("app", [f"v{i}"], NOW - timedelta(days=9 - i), unique=f"i{i}")
    sections = command_gc(registry_server)
    missing = tmp_path / "no-such-config.yml"
    sections["gc"]["command"] = [registry_server.binary, "garbage-collect", str(missing)]
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS, **sections)

    result = retention("run", "-c", str(policy))

    assert result.code == 1
    no_traceback(result)
    (line,) = [e for e in result.error_lines if "garbage-collect exited" in e]
    assert f"configuration error: open {missing}: no such file or directory" in line
    assert "help for garbage-collect" not in line and "Flags" not in line


def test_the_cause_of_a_failure_is_the_first_error_line_or_else_the_last_lines() -> None:
    assert (
        cause(COBRA_FAILURE) == "configuration error: open /etc/nope.yml: no such file or directory"
    )
    assert cause("starting\nfailed: disk full\n") == "starting | failed: disk full"
    assert cause("") == "(no output)"


def test_check_warns_about_a_gc_program_that_is_not_on_this_host(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "p.yml",
        "http://127.0.0.1:5000",
        BUILDS,
        gc={
            "mode": "command",
            "command": ["/nonexistent/registry", "garbage-collect", "c.yml"],
            # Safe by declaration, so that the missing program is the only thing said.
            "writes": "none",
            "blob_cache": "none",
        },
    )

    result = CliRunner().invoke(main, ["check", "-c", str(policy)])

    assert result.exit_code == 0, result.output
    assert "warning: gc.command: program not found: /nonexistent/registry" in result.stderr
