"""``--repository REGEX``, ``--rule NAME`` and ``--only delete``: the filters limit what is
scanned, planned and deleted (the first two) or only what is shown (the last)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cli_support import write_policy
from click.testing import CliRunner
from registry_server import RegistryServer, Seeder

from retention.cli import main

NOW = datetime.now(UTC)
BUILDS = {"name": "builds", "match": r"build-\d+", "keep_last": 1}
RELEASES = {"name": "releases", "match": r"v\d+", "keep_last": 1}


def seed(seeder: Seeder, repository: str) -> dict[str, str]:
    tags = [f"build-{i}" for i in range(3)] + [f"v{i}" for i in range(3)]
    return {
        tag: seeder.image(repository, [tag], NOW - timedelta(days=9 - i), unique=repository + tag)
        for i, tag in enumerate(tags)
    }


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--log-format", "json", *args])
    return result.exit_code, result.stdout, result.stderr


def test_repository_filter_limits_what_is_scanned_and_deleted(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    team_a, team_b = seed(seeder, "team-a/web"), seed(seeder, "team-b/api")
    policy = str(write_policy(tmp_path / "p.yml", registry_server.url, BUILDS, RELEASES))

    code, stdout, stderr = cli("run", "-c", policy, "--repository", "team-a/.*", "-o", "json")

    assert code == 0, stderr
    assert [r["name"] for r in json.loads(stdout)["repositories"]] == ["team-a/web"]
    assert seeder.manifest_status("team-a/web", team_a["build-0"]) == 404
    assert all(seeder.manifest_status("team-b/api", d) == 200 for d in team_b.values())


def test_rule_filter_deletes_only_that_rules_tags_and_says_why_the_others_stay(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    digests = seed(seeder, "app")
    policy = str(write_policy(tmp_path / "p.yml", registry_server.url, BUILDS, RELEASES))

    code, stdout, stderr = cli("run", "-c", policy, "--rule", "builds", "-o", "json")

    assert code == 0, stderr
    tags = {t["tag"]: t for t in json.loads(stdout)["repositories"][0]["tags"]}
    assert [seeder.manifest_status("app", digests[f"build-{i}"]) for i in range(3)] == [
        404,
        404,
        200,
    ]
    assert all(seeder.manifest_status("app", digests[f"v{i}"]) == 200 for i in range(3))
    assert tags["v0"]["action"] == "keep"
    assert tags["v0"]["reason"].startswith("kept: --rule builds leaves releases for another pass")


def test_an_unknown_rule_or_a_bad_regex_is_a_usage_error(tmp_path: Path) -> None:
    policy = str(write_policy(tmp_path / "p.yml", "http://127.0.0.1:9", BUILDS, RELEASES))

    rule = cli("plan", "-c", policy, "--rule", "nightly")
    regex = cli("plan", "-c", policy, "--repository", "team-(")

    assert rule[0] == 2 and "--rule 'nightly': the policy has no such rule" in rule[2]
    assert "(it has builds, releases)" in rule[2]
    assert regex[0] == 2 and "--repository 'team-(' is not a valid regex" in regex[2]


def test_only_delete_shows_the_tags_to_delete_and_keeps_the_counts(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    seed(seeder, "app")
    policy = str(write_policy(tmp_path / "p.yml", registry_server.url, BUILDS, RELEASES))

    code, stdout, stderr = cli("plan", "-c", policy, "--only", "delete")

    assert code == 0, stderr
    rows = [line.split()[0] for line in stdout.splitlines() if line[:2] in ("bu", "v0", "v1")]
    assert sorted(rows) == ["build-0", "build-1", "v0", "v1"]
    assert "app: 6 tags, 4 to delete, 4 manifests" in stdout
    assert " keep " not in stdout


def test_runs_keep_their_report_and_reports_lists_them_but_plans_are_not_kept(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder
) -> None:
    seed(seeder, "app")
    policy = str(write_policy(tmp_path / "p.yml", registry_server.url, BUILDS, RELEASES))

    planned = cli("plan", "-c", policy)
    ran = cli("run", "-c", policy, "-o", "json")
    listed = cli("reports", "-c", policy)

    assert planned[0] == 0 and ran[0] == 0, ran[2]
    run_id = json.loads(ran[1])["run_id"]
    header, *rows = listed[1].splitlines()
    assert header.split() == ["FINISHED", "OUTCOME", "RUN", "DELETED", "FREED", "FILE"]
    (row,) = rows
    assert row.split()[1:4] == ["success", run_id, "4"]
    kept = json.loads(Path(row.split()[-1]).read_text())
    assert kept["run_id"] == run_id and kept["dry_run"] is False
