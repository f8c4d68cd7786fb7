"""kubectl habits: ``-o FORMAT`` and ``-f FILE``, ``-o wide``, Examples in --help, shell
completion, and a confirmation before a run deletes anything at a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import write_policy
from click.testing import CliRunner
from registry_server import RegistryServer, Seeder

from retention.cli import main

NOW = datetime.now(UTC)
BUILDS = {"name": "builds", "match": r"v\d+", "keep_last": 1}


def seed_three(seeder: Seeder) -> list[str]:
    return [
        seeder.image("app", [f"v{i}"], NOW - timedelta(days=9 - i), unique=f"i{i}")
        for i in range(3)
    ]


def test_output_with_a_file_name_is_refused_instead_of_writing_a_file_named_json(
    tmp_path: Path,
) -> None:
    policy = write_policy(tmp_path / "p.yml", "http://127.0.0.1:9", BUILDS)
    os.chdir(tmp_path)

    result = CliRunner().invoke(main, ["plan", "-c", str(policy), "--output", "plan.json"])

    assert result.exit_code == 2
    assert "Invalid value for '-o' / '--output'" in result.stderr
    assert "'plan.json' is not one of 'table', 'wide', 'json', 'markdown'" in result.stderr
    assert not (tmp_path / "plan.json").exists() and not (tmp_path / "json").exists()


def test_o_json_with_f_writes_json_and_the_old_format_flag_still_works_with_a_warning(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    seed_three(seeder)
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)
    target = tmp_path / "plan.json"
    runner = CliRunner()

    new = runner.invoke(main, ["plan", "-c", str(policy), "-o", "json", "-f", str(target)])
    old = runner.invoke(main, ["plan", "-c", str(policy), "--format", "json"])

    assert new.exit_code == 0, new.output
    assert '"dry_run": true' in target.read_text()
    assert old.exit_code == 0, old.output
    assert old.stdout.startswith("{")
    assert "warning: --format is deprecated; use -o/--output FORMAT" in old.stderr


def test_wide_adds_kind_size_and_pushed_time(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    seed_three(seeder)
    amd = seeder.image("app", [], NOW - timedelta(days=1), unique="amd")
    arm = seeder.image("app", [], NOW - timedelta(days=1), unique="arm")
    seeder.index("app", ["multi"], [amd, arm])
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)

    result = CliRunner().invoke(main, ["plan", "-c", str(policy), "-o", "wide"])

    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if line.startswith("TAG"))
    assert header.split()[:7] == ["TAG", "ACTION", "RULE", "KIND", "SIZE", "PUSHED", "CREATED"]
    (multi,) = [line.split() for line in result.stdout.splitlines() if line.startswith("multi ")]
    assert multi[3] == "index" and multi[5] in ("B", "KiB")
    (v0,) = [line.split() for line in result.stdout.splitlines() if line.startswith("v0 ")]
    assert v0[3] == "image"


@pytest.mark.parametrize("command", ["plan", "run", "apply"])
def test_help_shows_examples(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"], prog_name="retention")

    assert result.exit_code == 0
    assert "  Examples:\n    retention " in result.output
    assert "-o, --output [table|wide|json|markdown]" in result.output
    assert "-f, --output-file FILE" in result.output


def test_click_provides_shell_completion_for_the_retention_program() -> None:
    result = CliRunner().invoke(
        main, [], prog_name="retention", env={"_RETENTION_COMPLETE": "bash_source"}
    )

    assert result.exit_code == 0
    assert "_retention_completion" in result.output


def run_at_a_terminal(policy: Path, *extra: str, answer: str) -> subprocess.CompletedProcess[str]:
    """``retention run`` with stdin on a pty that has ``answer`` typed into it."""
    master, slave = pty.openpty()
    os.write(master, answer.encode())
    try:
        return subprocess.run(
            [sys.executable, "-m", "retention", "run", "-c", str(policy), *extra],
            stdin=slave,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(slave)
        os.close(master)


def test_a_run_at_a_terminal_asks_first_and_a_no_deletes_nothing(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    digests = seed_three(seeder)
    policy = write_policy(tmp_path / "p.yml", registry_server.url, BUILDS)

    refused = run_at_a_terminal(policy, answer="n\n")
    still_there = [seeder.manifest_status("app", d) for d in digests]
    agreed = run_at_a_terminal(policy, "--yes", answer="")

    assert "delete 2 manifests (2 tags) from" in refused.stderr
    assert refused.returncode == 1
    assert "not confirmed at the prompt: nothing was deleted" in refused.stderr
    assert still_there == [200, 200, 200]
    assert agreed.returncode == 0, agreed.stderr
    assert "delete 2 manifests" not in agreed.stderr
    assert [seeder.manifest_status("app", d) for d in digests] == [404, 404, 200]
