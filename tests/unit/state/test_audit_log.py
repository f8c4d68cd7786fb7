"""``state_dir/audit.jsonl``: durable appends, rotation by size, reading back with filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.errors import AuditError
from retention.state.audit import AuditLog, AuditQuery, AuditRecord

NOW = datetime(2026, 1, 15, 3, 0, tzinfo=UTC)


def record(number: int, **changes: object) -> AuditRecord:
    fields: dict[str, object] = {
        "time": NOW + timedelta(hours=number),
        "action": "deleted",
        "run_id": f"run-{number}",
        "registry": "http://127.0.0.1:5000",
        "repository": "app",
        "digest": f"sha256:{number:064x}",
        "tags": (f"v{number}",),
        "rule": "builds",
        "reason": "older than 14d",
        "bytes_estimate": 100 * number,
    }
    fields.update(changes)
    return AuditRecord(**fields)  # type: ignore[arg-type]


def test_a_record_survives_the_round_trip_through_json(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append([record(1), record(2, tags=(), rule=None, bytes_estimate=None)])
    assert list(log.read()) == [record(1), record(2, tags=(), rule=None, bytes_estimate=None)]


def test_appends_rotate_by_size_and_keep_only_the_newest_files(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, max_bytes=1024, keep=2)
    line_bytes = len(record(1).to_json()) + 1
    batches = 12
    for number in range(batches):
        log.append([record(number)])

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 1024 for p in tmp_path.iterdir())
    kept = [r.run_id for r in log.read()]
    assert kept == [f"run-{n}" for n in range(batches - len(kept), batches)]  # oldest dropped
    assert len(kept) >= 2 * (1024 // line_bytes)


def test_every_filter_narrows_the_records_read_from_rotated_files_too(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, max_bytes=1024, keep=5)
    for number in range(10):
        log.append([record(number, repository="web" if number % 2 else "app")])
    assert len(list(tmp_path.glob("audit.jsonl.*"))) >= 1

    def digests(**query: object) -> list[str]:
        return [r.digest[-2:] for r in log.read(AuditQuery(**query))]  # type: ignore[arg-type]

    assert len(digests()) == 10
    assert digests(repository="web") == ["01", "03", "05", "07", "09"]
    assert digests(tag="v4") == ["04"]
    assert digests(digest=f"sha256:{7:064x}") == ["07"]
    assert digests(since=NOW + timedelta(hours=8)) == ["08", "09"]
    assert digests(until=NOW + timedelta(hours=2)) == ["00", "01"]


def test_a_line_cut_by_a_crash_is_skipped_and_the_next_record_stays_whole(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append([record(1)])
    with (tmp_path / "audit.jsonl").open("a") as damaged:
        damaged.write('{"time": "2026-01-1')
    log.append([record(2)])
    assert [r.run_id for r in log.read()] == ["run-1", "run-2"]


def test_an_unwritable_log_is_an_audit_error_naming_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(AuditError, match=r"cannot append to .*not-a-directory"):
        AuditLog(blocker).append([record(1)])
