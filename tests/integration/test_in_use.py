"""``in_use`` file and command sources for real: a real registry, the real CLI, real deletes.

A failing source must make the whole pass delete nothing and exit 1 with one line naming it.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_support import actions, no_traceback, retention, write_policy
from registry_server import RegistryServer, Seeder

NOW = datetime.now(UTC)
ALL_BUILDS = {"name": "builds", "match": r"build-\d+", "keep_last": 0}
# Deleting all four builds is what the rule asks; the budget must not hide the in-use holds.
SAFETY = {"max_delete_fraction": 1.0}


def seed(seeder: Seeder) -> list[str]:
    return [
        seeder.image("app/web", [f"build-{i}"], NOW - timedelta(days=10 + i), unique=f"w{i}")
        for i in range(4)
    ]


def reasons(report: dict[str, Any], repository: str) -> dict[str, str]:
    (entry,) = [r for r in report["repositories"] if r["name"] == repository]
    return {t["tag"]: t["reason"] for t in entry["tags"]}


def test_a_file_source_keeps_what_it_names_and_is_read_again_every_pass(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    digests = seed(seeder)
    host = registry_server.url.removeprefix("http://")
    in_use = tmp_path / "in-use.txt"
    in_use.write_text(
        "# what production runs\n"
        f"{host}/app/web:build-0\n"
        f"app/web@{digests[1]}   # pinned by digest\n"
        "\n"
        "docker.io/library/nginx:1.25\n"
    )
    policy = write_policy(
        tmp_path / "p.yml",
        registry_server.url,
        ALL_BUILDS,
        in_use=[{"file": str(in_use)}],
        safety=SAFETY,
    )

    result = retention("run", "-c", str(policy), "-o", "json")

    assert result.code == 0, result.stderr
    report = result.json()
    assert actions(report, "app/web") == {
        "build-0": "keep",
        "build-1": "keep",
        "build-2": "delete",
        "build-3": "delete",
    }
    assert reasons(report, "app/web")["build-0"] == f"in use (file: {in_use})"
    assert reasons(report, "app/web")["build-1"] == f"in use (file: {in_use})"
    assert [seeder.manifest_status("app/web", d) for d in digests] == [200, 200, 404, 404]

    in_use.write_text(f"app/web@{digests[1]}\n")
    again = retention("plan", "-c", str(policy), "-o", "json")

    assert again.code == 0, again.stderr
    assert actions(again.json(), "app/web") == {"build-0": "delete", "build-1": "keep"}


def test_a_command_source_keeps_what_it_prints_and_names_the_command(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    digests = seed(seeder)
    printer = [sys.executable, "-c", "print('app/web:build-2')"]
    policy = write_policy(
        tmp_path / "p.yml",
        registry_server.url,
        ALL_BUILDS,
        in_use=[{"command": printer, "name": "deployed", "timeout": "20s"}],
        safety=SAFETY,
    )

    result = retention("run", "-c", str(policy), "-o", "json")

    assert result.code == 0, result.stderr
    report = result.json()
    assert reasons(report, "app/web")["build-2"] == "in use (command: deployed)"
    assert [seeder.manifest_status("app/web", d) for d in digests] == [404, 404, 200, 404]


FAILING_SOURCES = [
    pytest.param(
        {
            "command": [sys.executable, "-c", "import sys; sys.exit('cluster unreachable')"],
            "name": "deployed",
        },
        "error: in_use source command: deployed: exited 1: cluster unreachable",
        id="command exits non-zero",
    ),
    pytest.param(
        {
            "command": [sys.executable, "-c", "import time; time.sleep(30)"],
            "name": "slow",
            "timeout": "1s",
        },
        "error: in_use source command: slow: no answer within 1s (timeout)",
        id="command times out",
    ),
    pytest.param(
        {"command": ["/nonexistent/deployed-images"]},
        "error: in_use source command: deployed-images: cannot run '/nonexistent/deployed-images': "
        "No such file or directory",
        id="command missing",
    ),
    pytest.param(
        {"file": "MISSING"},
        "error: in_use source file: MISSING: cannot read it: No such file or directory",
        id="file missing",
    ),
    pytest.param(
        {"command": [sys.executable, "-c", "print('App/Web:build-0')"], "name": "bad"},
        "error: in_use source command: bad: 'App/Web:build-0' is not an image reference "
        "(repository name)",
        id="a line that is no reference",
    ),
]


@pytest.mark.parametrize(("source", "message"), FAILING_SOURCES)
@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_failing_source_deletes_nothing_and_exits_1_with_one_line(
    tmp_path: Path,
    registry_server: RegistryServer,
    seeder: Seeder,
    source: dict[str, Any],
    message: str,
    command: str,
) -> None:
    digests = seed(seeder)
    missing = str(tmp_path / "missing.txt")
    source = {k: (missing if v == "MISSING" else v) for k, v in source.items()}
    working = tmp_path / "in-use.txt"
    working.write_text("app/web:build-3\n")
    policy = write_policy(
        tmp_path / "p.yml",
        registry_server.url,
        ALL_BUILDS,
        in_use=[{"file": str(working)}, source],
        safety=SAFETY,
    )

    result = retention(command, "-c", str(policy))

    assert result.code == 1
    assert result.error_lines == [message.replace("MISSING", missing)]
    assert result.stdout == ""
    no_traceback(result)
    assert [seeder.manifest_status("app/web", d) for d in digests] == [200, 200, 200, 200]


def test_apply_reads_the_sources_again_and_spares_an_image_deployed_since_the_plan(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    digests = seed(seeder)
    in_use = tmp_path / "in-use.txt"
    in_use.write_text("# nothing runs yet\n")
    policy = write_policy(
        tmp_path / "p.yml",
        registry_server.url,
        ALL_BUILDS,
        in_use=[{"file": str(in_use)}],
        safety=SAFETY,
    )
    saved = tmp_path / "plan.json"
    planned = retention("plan", "-c", str(policy), "-o", "json", "--output-file", str(saved))
    assert planned.code == 0, planned.stderr

    in_use.write_text("app/web:build-0\n")
    applied = retention("apply", str(saved), "-c", str(policy), "-o", "json")

    assert applied.code == 0, applied.stderr
    assert reasons(applied.json(), "app/web")["build-0"].startswith(
        f"in use (file: {in_use}) when applied; the plan said: beyond keep_last=0"
    )
    assert [seeder.manifest_status("app/web", d) for d in digests] == [200, 404, 404, 404]

    in_use.unlink()
    failed = retention("apply", str(saved), "-c", str(policy))

    assert failed.code == 1
    assert failed.error_lines == [
        f"error: in_use source file: {in_use}: cannot read it: No such file or directory"
    ]
    assert seeder.manifest_status("app/web", digests[0]) == 200


def test_run_reads_the_sources_again_after_the_scan_and_spares_an_image_deployed_meanwhile(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    """The plan is made while the scan goes, with what was in use before it; an image
    deployed during a long scan is still in use when the deletions start."""
    digests = seed(seeder)
    calls = tmp_path / "calls"
    second_call_prints = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = len(p.read_text()) if "
        "p.exists() else 0; p.write_text('x' * (n + 1)); print('app/web:build-2' if n else '')"
    )
    deployer = [sys.executable, "-c", second_call_prints, str(calls)]
    policy = write_policy(
        tmp_path / "p.yml",
        registry_server.url,
        ALL_BUILDS,
        in_use=[{"command": deployer, "name": "deployed", "timeout": "20s"}],
        safety=SAFETY,
    )

    result = retention("run", "-c", str(policy), "-o", "json")

    assert result.code == 0, result.stderr
    assert calls.read_text() == "xx"  # before the scan, and again before deleting
    assert reasons(result.json(), "app/web")["build-2"].startswith(
        "in use (command: deployed) when applied; the plan said: "
    )
    assert [seeder.manifest_status("app/web", d) for d in digests] == [404, 404, 200, 404]
