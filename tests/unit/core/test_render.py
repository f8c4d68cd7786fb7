"""The three report formats, from hand-built plans and results."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from retention.core.model import (
    Action,
    DeletionKind,
    DeletionResult,
    GcResult,
    ManifestDeletion,
    Outcome,
    Plan,
    RepositoryPlan,
    RunResult,
    StorageUsage,
    TagDecision,
)
from retention.core.plan_file import plan_from_dict
from retention.core.render import human_bytes, render, render_pieces
from retention.errors import PlanFileError

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CREATED = datetime(2026, 10, 1, tzinfo=UTC)
PUSHED = datetime(2026, 10, 2, 8, 30, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32


def sample_plan() -> Plan:
    web = RepositoryPlan(
        name="app/web",
        decisions=(
            TagDecision(
                "v2", "sha256:" + "cd" * 32, CREATED, Action.KEEP, "r", "within keep_last=1 (#1)"
            ),
            TagDecision(
                "v1",
                DIGEST,
                CREATED,
                Action.DELETE,
                "r",
                "beyond keep_last=1 (#2 by push time)",
                pushed=PUSHED,
                ranked_by="pushed",
            ),
            TagDecision("x|y", "sha256:" + "ef" * 32, None, Action.KEEP, None, "matched no rule"),
        ),
        deletions=(ManifestDeletion(DIGEST, DeletionKind.TAGGED, tags=("v1",)),),
    )
    broken = RepositoryPlan(name="broken", error="GET /v2/broken/tags/list: 500")
    return Plan("http://127.0.0.1:5000", NOW, (web, broken), reclaimable_bytes=3 * 1024 * 1024)


def test_json_plan_has_the_public_shape() -> None:
    data = json.loads(render(sample_plan(), "json"))
    assert data["registry"] == "http://127.0.0.1:5000"
    assert data["dry_run"] is True
    tag = data["repositories"][0]["tags"][1]
    assert tag == {
        "tag": "v1",
        "digest": DIGEST,
        "created": "2026-10-01T00:00:00Z",
        "action": "delete",
        "rule": "r",
        "reason": "beyond keep_last=1 (#2 by push time)",
        "subject": None,
        "pushed_at": "2026-10-02T08:30:00Z",
        "pulled_at": None,
        "created_at": "2026-10-01T00:00:00Z",
        "ranked_by": "pushed",
        "aged_by": None,
        "kind": "image",
        "size": None,
    }
    assert data["repositories"][0]["delete"] == [DIGEST]
    assert data["summary"] == {
        "repositories": 2,
        "tags": 3,
        "tags_to_delete": 1,
        "manifests_to_delete": 1,
        "reclaimable_bytes": 3 * 1024 * 1024,
        "repositories_skipped": 1,
        "untagged": 0,
        "untagged_to_delete": 0,
        "refused": None,
    }
    assert data["errors"] == ["broken: GET /v2/broken/tags/list: 500"]
    assert data["ok"] is False
    assert "applied" not in data


def test_json_run_result_adds_applied_storage_and_gc() -> None:
    result = RunResult(
        sample_plan(),
        dry_run=False,
        applied=(DeletionResult("app/web", DIGEST, ("v1",), Outcome.DELETED),),
        storage=StorageUsage(1000, 400),
        gc=GcResult("command", ran=True, blobs_deleted=3, duration_s=0.5),
    )
    data = json.loads(render(result, "json"))
    assert data["applied"] == [
        {
            "repository": "app/web",
            "digest": DIGEST,
            "tags": ["v1"],
            "outcome": "deleted",
            "detail": "",
        }
    ]
    assert data["storage"] == {"before_bytes": 1000, "after_bytes": 400, "freed_bytes": 600}
    assert data["gc"]["blobs_deleted"] == 3


def test_table_aligns_columns_and_marks_deletions() -> None:
    text = render(sample_plan(), "table")
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("TAG"))
    row = next(line for line in lines if line.startswith("v1"))
    assert header.index("ACTION") == row.index("DELETE")
    assert "broken: 0 tags, 0 to delete, 0 manifests — SKIPPED, not fully read" in text
    assert "total: 2 repositories, 3 tags, 1 tag to delete, 1 manifest to delete, ~3.0 MiB" in text


def test_markdown_escapes_pipes_in_cells() -> None:
    text = render(sample_plan(), "markdown")
    assert "| x\\|y | keep |" in text
    assert text.startswith("# plan (dry run: nothing deleted)")


def test_table_of_a_run_says_what_was_applied_and_freed() -> None:
    result = RunResult(
        sample_plan(),
        dry_run=False,
        applied=(DeletionResult("app/web", DIGEST, ("v1",), Outcome.SKIPPED, "tag 'v1' moved"),),
        storage=StorageUsage(2 * 1024 * 1024, 1024 * 1024),
        gc=GcResult("docker", ran=True, blobs_deleted=2),
    )
    text = render(result, "table")
    assert "applied (run None): 1 skipped" in text
    assert "skipped: app/web@sha256:abababababab tag 'v1' moved" in text
    assert "gc (docker): 2 blobs deleted" in text
    assert "storage: 2.0 MiB before, 1.0 MiB after, 1.0 MiB freed" in text


@pytest.mark.parametrize(
    ("probe", "line"),
    [
        ("passed", "probe: passed"),
        ("failed: pushing retention-probe:t failed: 405", "probe FAILED: pushing retention-probe"),
    ],
)
def test_table_of_a_run_says_whether_the_probe_after_gc_passed(probe: str, line: str) -> None:
    result = RunResult(
        sample_plan(), dry_run=False, gc=GcResult("command", ran=True, blobs_deleted=2, probe=probe)
    )
    text = render(result, "table")
    assert line in text
    assert json.loads(render(result, "json"))["gc"]["probe"] == probe


def test_human_bytes_uses_binary_units() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 GiB",
    ]


def test_a_json_plan_reads_back_into_the_same_plan() -> None:
    plan = sample_plan()
    assert plan_from_dict(json.loads(render(plan, "json"))) == plan


def test_a_file_that_is_not_a_plan_is_refused_in_one_line() -> None:
    with pytest.raises(PlanFileError, match="not a retention plan report"):
        plan_from_dict({"registry": "x", "repositories": [{"name": "a"}]})


def test_after_a_run_the_action_says_what_happened_not_what_was_planned() -> None:
    plan = sample_plan()
    applied = (DeletionResult("app/web", DIGEST, ("v1",), Outcome.DELETED),)
    failed = (DeletionResult("app/web", DIGEST, ("v1",), Outcome.FAILED, "500"),)

    done = render(RunResult(plan, dry_run=False, applied=applied), "table")
    broke = render(RunResult(plan, dry_run=False, applied=failed), "table")
    refused = render(RunResult(plan, dry_run=False, errors=("limit",)), "table")

    row = next(line for line in done.splitlines() if line.startswith("v1 "))
    assert row.split()[1] == "DELETED" and "DELETE " not in done
    assert next(li for li in broke.splitlines() if li.startswith("v1 ")).split()[1] == "FAILED"
    assert "NOT DELETED" in next(li for li in refused.splitlines() if li.startswith("v1 "))
    assert "app/web: 3 tags, 1 to delete, 1 manifest" in done


@pytest.mark.parametrize(
    "subject",
    [
        sample_plan(),
        RunResult(sample_plan(), dry_run=False, storage=StorageUsage(1000, 400)),
        Plan("http://127.0.0.1:5000", NOW, ()),  # no repositories: "repositories": []
        Plan("http://127.0.0.1:5000", NOW, (RepositoryPlan(name='a "quoted"\n  name'),)),
    ],
    ids=["plan", "run", "empty", "odd name"],
)
@pytest.mark.parametrize("fmt", ["json", "table", "markdown"])
def test_the_report_in_pieces_is_the_report(subject: Plan | RunResult, fmt: str) -> None:
    """JSON comes one repository at a time, so a large report is never whole in memory;
    the bytes must be ``json.dumps(..., indent=2)``'s of the whole document all the same."""
    pieces = list(render_pieces(subject, fmt))

    assert "".join(pieces) == render(subject, fmt)
    if fmt == "json" and isinstance(subject, Plan) and len(subject.repositories) == 2:
        assert len(pieces) == 4  # head, one per repository, tail
