"""The daemon's scheduling and job wrapper, without a registry, a socket or a wall clock.

Triggers are asked ``get_next_fire_time(previous, now)`` with fixed datetimes. The job
wrapper runs fake pass functions that block on events, so "never two at once" is shown
without sleeping for time to pass.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apscheduler.events import (  # type: ignore[import-untyped]
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
)
from apscheduler.schedulers.background import (  # type: ignore[import-untyped]
    BackgroundScheduler,
)
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from retention.config.schedule import MISFIRE_GRACE_S, crontab_weekdays, job_options, make_trigger
from retention.core import render as report
from retention.core.model import DeletionResult, GcResult, Outcome, Plan, RunResult, StorageUsage
from retention.core.policy import Policy, Schedule, policy_from_mapping
from retention.errors import LockError, RegistryUnreachable
from retention.service.daemon import Daemon, Signals, wait_for_stop
from retention.service.http_api import respond
from retention.service.metrics import Metrics
from retention.state.report_store import ReportStore

WEDNESDAY = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
PLAN = Plan(registry="http://127.0.0.1:9", created_at=WEDNESDAY, repositories=())
RESULT = RunResult(
    PLAN,
    dry_run=False,
    applied=(DeletionResult("app", "sha256:" + "1" * 64, ("build-1",), Outcome.DELETED),),
    storage=StorageUsage(5_000, 3_000),
    gc=GcResult("command", ran=True, blobs_deleted=2),
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# -- triggers -------------------------------------------------------------------------------


def test_the_default_schedule_is_three_in_the_morning_utc_every_day() -> None:
    trigger = make_trigger(Schedule())
    first = trigger.get_next_fire_time(None, WEDNESDAY)
    assert first == utc(2025, 1, 16, 3, 0)
    assert trigger.get_next_fire_time(first, first) == utc(2025, 1, 17, 3, 0)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(utc(2025, 1, 15, 12), utc(2025, 1, 16, 2), id="winter: 03:00 CET is 02:00Z"),
        pytest.param(utc(2025, 7, 15, 12), utc(2025, 7, 16, 1), id="summer: 03:00 CEST is 01:00Z"),
    ],
)
def test_a_cron_line_is_read_in_its_time_zone(now: datetime, expected: datetime) -> None:
    trigger = make_trigger(Schedule(cron="0 3 * * *", timezone="Europe/Berlin"))
    assert trigger.get_next_fire_time(None, now) == expected


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        pytest.param("0 3 * * 0", utc(2025, 1, 19, 3), id="0 is Sunday, as in crontab"),
        pytest.param("0 3 * * 7", utc(2025, 1, 19, 3), id="7 is Sunday too"),
        pytest.param("0 3 * * 1", utc(2025, 1, 20, 3), id="1 is Monday"),
        pytest.param("0 3 * * 4-5", utc(2025, 1, 16, 3), id="a range of numbers"),
        pytest.param("0 3 * * sat", utc(2025, 1, 18, 3), id="a name"),
    ],
)
def test_weekdays_count_from_sunday_as_crontab_does(cron: str, expected: datetime) -> None:
    trigger = make_trigger(Schedule(cron=cron))
    assert trigger.get_next_fire_time(None, WEDNESDAY) == expected


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("*", "*"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("5-7", "sun,fri,sat"),
        ("0-2", "sun,mon,tue"),
        ("*/2", "sun,tue,thu,sat"),
        ("1-5/2", "mon,wed,fri"),
        ("MON-Fri", "mon,tue,wed,thu,fri"),
        ("sat,0", "sun,sat"),
        ("5-1", "5-1"),  # not a crontab range: left for APScheduler to reject
        ("8", "8"),
        ("last", "last"),
    ],
)
def test_crontab_weekdays_become_names(field: str, expected: str) -> None:
    assert crontab_weekdays(field) == expected


def test_an_interval_runs_one_interval_after_its_start_and_then_every_interval() -> None:
    trigger = make_trigger(Schedule(interval="6h"), start=WEDNESDAY)
    assert trigger.get_next_fire_time(None, WEDNESDAY + timedelta(hours=1)) == utc(2025, 1, 15, 18)
    assert trigger.get_next_fire_time(WEDNESDAY, WEDNESDAY) == utc(2025, 1, 15, 18)


@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param(Schedule(cron="0 3 * * *", jitter="5m"), id="cron"),
        pytest.param(Schedule(interval="1d", jitter="5m"), id="interval"),
    ],
)
def test_jitter_delays_each_pass_by_up_to_its_length(schedule: Schedule) -> None:
    trigger = make_trigger(schedule, start=utc(2025, 1, 15, 3))
    fires = {trigger.get_next_fire_time(utc(2025, 1, 15, 3), WEDNESDAY) for _ in range(40)}
    earliest, latest = utc(2025, 1, 16, 3), utc(2025, 1, 16, 3, 5)
    assert all(earliest <= fire <= latest for fire in fires)
    assert len(fires) > 1


def test_no_jitter_means_the_same_time_every_time() -> None:
    trigger = make_trigger(Schedule(cron="0 3 * * *"))
    assert {trigger.get_next_fire_time(None, WEDNESDAY) for _ in range(10)} == {utc(2025, 1, 16, 3)}


# -- coalescing, with APScheduler's own scheduler and our job options -------------------


def run_scheduler_once(start: datetime, interval: timedelta, stop_on: int) -> list[Any]:
    """Add one job whose slots since ``start`` are all missed; return the events it caused."""
    events: list[Any] = []
    runs: list[datetime] = []
    seen = threading.Event()

    def note(event: Any) -> None:
        events.append(event)
        if event.code == stop_on:
            seen.set()

    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_listener(note, EVENT_JOB_SUBMITTED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
    trigger = IntervalTrigger(seconds=interval.total_seconds(), start_date=start, timezone=UTC)
    job = scheduler.add_job(
        lambda: runs.append(datetime.now(UTC)), trigger, next_run_time=start, **job_options()
    )
    scheduler.start()
    try:
        assert seen.wait(5), events
    finally:
        # shutdown takes the job store lock, so the scheduler's pass over due jobs is over.
        scheduler.shutdown(wait=True)
    assert job.next_run_time > datetime.now(UTC)
    return events


def test_missed_slots_are_coalesced_into_one_pass_not_stacked() -> None:
    start = datetime.now(UTC) - timedelta(hours=2, minutes=30)
    events = run_scheduler_once(start, timedelta(hours=1), stop_on=EVENT_JOB_SUBMITTED)
    assert [e.code for e in events] == [EVENT_JOB_SUBMITTED]
    assert events[0].scheduled_run_times == [start + timedelta(hours=2)]


def test_a_slot_later_than_the_grace_time_is_skipped() -> None:
    late = timedelta(seconds=MISFIRE_GRACE_S + 600)
    start = datetime.now(UTC) - late - timedelta(hours=2)
    events = run_scheduler_once(start, timedelta(hours=2), stop_on=EVENT_JOB_MISSED)
    # The executor's thread reports the miss, so it may come before the submission.
    assert sorted(e.code for e in events) == sorted([EVENT_JOB_SUBMITTED, EVENT_JOB_MISSED])


def test_job_options_allow_one_instance_and_coalesce() -> None:
    assert job_options() == {
        "max_instances": 1,
        "coalesce": True,
        "misfire_grace_time": MISFIRE_GRACE_S,
    }


# -- the job wrapper ------------------------------------------------------------------------


class FakePass:
    """A pass function that blocks until released, then returns or raises what it was given."""

    def __init__(self, *outcomes: RunResult | Exception) -> None:
        self.outcomes = list(outcomes) or [RESULT]
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, policy: Policy) -> RunResult:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(5)
        outcome = self.outcomes[min(self.calls, len(self.outcomes)) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def minutes_clock() -> Callable[[], datetime]:
    """Each call one minute later, so every report gets its own name."""
    ticks = iter(range(10_000))
    return lambda: WEDNESDAY + timedelta(minutes=next(ticks))


def make_policy(tmp_path: Path, **sections: Any) -> Policy:
    document = {"registry": {"url": "http://127.0.0.1:9"}, "state_dir": str(tmp_path / "state")}
    return policy_from_mapping({**document, **sections})


def make_daemon(tmp_path: Path, run: FakePass, **sections: Any) -> Daemon:
    policy = make_policy(tmp_path, **sections)
    metrics = Metrics(CollectorRegistry())
    return Daemon(tmp_path / "policy.yml", policy, metrics=metrics, run=run, clock=minutes_clock())


def wait_idle(daemon: Daemon) -> None:
    deadline = time.monotonic() + 5
    while daemon.running:
        assert time.monotonic() < deadline, "the pass did not finish"
        time.sleep(0.005)


def sample(daemon: Daemon, name: str, **labels: str) -> float | None:
    return daemon.metrics._registry.get_sample_value(name, labels)


@pytest.fixture
def held() -> Iterator[FakePass]:
    """A pass that stays running until the test lets it go."""
    fake = FakePass()
    fake.release.clear()
    yield fake
    fake.release.set()


def test_a_second_pass_is_refused_while_one_runs(tmp_path: Path, held: FakePass) -> None:
    daemon = make_daemon(tmp_path, held)
    assert daemon.start_now()
    assert held.entered.wait(5)
    assert not daemon.start_now()
    assert respond(daemon, "POST", "/run").status == 409
    with capture_logs() as logs:
        daemon.run_scheduled()  # returns at once instead of waiting or stacking
    assert held.calls == 1
    assert {"event": "scheduled pass skipped", "reason": "another pass is running"}.items() <= (
        logs[0].items()
    )
    held.release.set()
    wait_idle(daemon)
    assert daemon.start_now()
    wait_idle(daemon)
    assert held.calls == 2


def test_running_is_exported_while_a_pass_runs(tmp_path: Path, held: FakePass) -> None:
    daemon = make_daemon(tmp_path, held)
    daemon.start_now()
    assert held.entered.wait(5)
    assert sample(daemon, "retention_pass_running") == 1
    held.release.set()
    wait_idle(daemon)
    assert sample(daemon, "retention_pass_running") == 0


def test_a_scheduled_pass_runs_in_the_callers_thread_and_is_recorded(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, FakePass(RESULT))
    daemon.run_scheduled()
    assert sample(daemon, "retention_passes_total", outcome="success") == 1
    assert sample(daemon, "retention_freed_bytes") == 2_000
    assert daemon.readiness.ready


def test_an_expected_failure_is_logged_counted_and_the_next_pass_still_runs(
    tmp_path: Path,
) -> None:
    down = RegistryUnreachable("connection refused", method="GET", url="http://127.0.0.1:9/v2/")
    daemon = make_daemon(tmp_path, FakePass(down, RESULT))
    with capture_logs() as logs:
        daemon.run_scheduled()
    assert sample(daemon, "retention_passes_total", outcome="failure") == 1
    assert not daemon.readiness.ready
    assert "connection refused" in daemon.readiness.reason
    failed = [e for e in logs if e["event"] == "pass failed"]
    assert failed and failed[0]["log_level"] == "error" and "exc_info" not in failed[0]
    daemon.run_scheduled()
    assert sample(daemon, "retention_passes_total", outcome="success") == 1
    assert daemon.readiness.ready


def test_a_held_lock_fails_the_pass_without_calling_the_registry_down(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, FakePass(RESULT, LockError("another retention pass")))
    daemon.run_scheduled()
    daemon.run_scheduled()
    assert sample(daemon, "retention_passes_total", outcome="failure") == 1
    assert daemon.readiness.ready  # the lock says nothing about the registry


def test_a_bug_in_a_pass_is_logged_with_its_traceback_and_counted(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, FakePass(ZeroDivisionError("boom"), RESULT))
    with capture_logs() as logs:
        daemon.run_scheduled()
    crashed = [e for e in logs if e["event"] == "pass crashed"]
    assert crashed and crashed[0]["exc_info"] is True
    assert sample(daemon, "retention_passes_total", outcome="failure") == 1
    report_body = json.loads(respond(daemon, "GET", "/report").body)
    assert report_body["ok"] is False
    assert "boom" in report_body["errors"][0]
    daemon.run_scheduled()
    assert sample(daemon, "retention_passes_total", outcome="success") == 1


def test_a_result_that_is_not_ok_is_a_failure(tmp_path: Path) -> None:
    failed_gc = RunResult(PLAN, dry_run=False, errors=("gc: exit status 1",))
    daemon = make_daemon(tmp_path, FakePass(failed_gc))
    daemon.run_scheduled()
    assert sample(daemon, "retention_passes_total", outcome="failure") == 1
    assert sample(daemon, "retention_passes_total", outcome="success") == 0


def test_a_dry_run_result_is_counted_as_dry_run(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, FakePass(RunResult(PLAN, dry_run=True)))
    daemon.run_scheduled()
    assert sample(daemon, "retention_passes_total", outcome="dry_run") == 1


# -- reports --------------------------------------------------------------------------------


def report_names(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "state" / "reports").iterdir())


def test_each_pass_writes_its_report_and_only_the_newest_are_kept(tmp_path: Path) -> None:
    down = RegistryUnreachable("down")
    daemon = make_daemon(tmp_path, FakePass(RESULT, down, RESULT), reports={"keep": 2})
    for _ in range(3):
        daemon.run_scheduled()
    assert report_names(tmp_path) == [
        "20250115T120100.000Z-failure.json",
        "20250115T120200.000Z-success.json",
    ]
    newest = tmp_path / "state" / "reports" / "20250115T120200.000Z-success.json"
    assert json.loads(newest.read_text()) == report.to_dict(RESULT)
    assert json.loads(respond(daemon, "GET", "/report").body) == report.to_dict(RESULT)


def test_a_restart_restores_the_last_report_and_its_gauges(tmp_path: Path) -> None:
    first = make_daemon(tmp_path, FakePass(RESULT, RegistryUnreachable("down")))
    first.run_scheduled()
    first.run_scheduled()
    second = make_daemon(tmp_path, FakePass())
    assert second.last_report is None
    second.restore()
    assert json.loads(second.last_report or b"")["errors"] == ["down"]
    success_at = (WEDNESDAY).timestamp()
    assert sample(second, "retention_last_success_timestamp_seconds") == success_at


def test_a_restart_restores_storage_figures_from_a_successful_report(tmp_path: Path) -> None:
    make_daemon(tmp_path, FakePass(RESULT)).run_scheduled()
    second = make_daemon(tmp_path, FakePass())
    second.restore()
    assert sample(second, "retention_storage_bytes", when="after") == 3_000
    assert sample(second, "retention_passes_total", outcome="success") == 0


def test_a_damaged_newest_report_is_skipped_with_a_warning(tmp_path: Path) -> None:
    store = ReportStore(tmp_path / "reports", keep=5)
    store.write('{"ok": true}\n', "success", WEDNESDAY)
    (tmp_path / "reports" / "20300101T000000.000Z-success.json").write_text("{not json")
    (tmp_path / "reports" / "notes.txt").write_text("left alone")
    with capture_logs() as logs:
        latest = store.latest()
    assert latest is not None and latest[1] == {"ok": True}
    assert logs[0]["event"] == "report not readable"
    store.prune()
    assert (tmp_path / "reports" / "notes.txt").exists()


def test_no_report_directory_means_nothing_to_restore(tmp_path: Path) -> None:
    assert ReportStore(tmp_path / "missing", keep=3).latest() is None


# -- HTTP routing, without a socket -----------------------------------------------------


def test_endpoints_answer_with_status_and_json(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, FakePass())
    assert respond(daemon, "GET", "/healthz").status == 200
    ready = respond(daemon, "GET", "/readyz")
    assert ready.status == 503
    assert json.loads(ready.body) == {
        "ready": False,
        "reason": "the registry has not been checked yet",
    }
    missing = respond(daemon, "GET", "/report")
    assert (missing.status, json.loads(missing.body)) == (404, {"error": "no pass has run yet"})
    assert respond(daemon, "GET", "/nothing").status == 404
    assert respond(daemon, "GET", "/run").status == 405
    assert respond(daemon, "POST", "/metrics").status == 405


def test_metrics_are_text_with_the_next_pass_read_at_scrape_time(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, FakePass())
    response = respond(daemon, "GET", "/metrics?debug=1")
    assert response.status == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    assert b"retention_next_pass_timestamp_seconds 0.0" in response.body


def test_post_run_starts_a_pass(tmp_path: Path) -> None:
    fake = FakePass()
    daemon = make_daemon(tmp_path, fake)
    assert respond(daemon, "POST", "/run").status == 202
    assert fake.entered.wait(5)
    wait_idle(daemon)
    assert respond(daemon, "GET", "/report").status == 200


def test_the_registry_ping_sets_readiness(tmp_path: Path) -> None:
    answers: list[Exception | None] = [None, RegistryUnreachable("refused")]

    def ping(policy: Policy) -> None:
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    daemon = Daemon(
        tmp_path / "p.yml", make_policy(tmp_path), metrics=Metrics(CollectorRegistry()), ping=ping
    )
    daemon.check_registry()
    assert respond(daemon, "GET", "/readyz").status == 200
    daemon.check_registry()
    assert json.loads(respond(daemon, "GET", "/readyz").body)["reason"].endswith("refused")


# -- stopping and reloading -----------------------------------------------------------------


def test_stop_waits_for_the_running_pass_and_then_refuses_new_ones(
    tmp_path: Path, held: FakePass
) -> None:
    daemon = make_daemon(tmp_path, held)
    daemon.start_now()
    assert held.entered.wait(5)
    assert daemon.stop(timeout_s=0.05) is False  # still running: not cancelled
    held.release.set()
    assert daemon.stop(timeout_s=5) is True
    assert not daemon.start_now()
    assert held.calls == 1


def write_policy_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_broken_policy_file_on_reload_keeps_the_old_policy(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, FakePass())
    old = daemon.policy
    write_policy_file(daemon.path, "registry:\n  url: nope\nrules:\n  - name: a\n")
    with capture_logs() as logs:
        daemon.reload()
    assert daemon.policy is old
    problems = [e["problem"] for e in logs if e["event"] == "policy not reloaded"]
    assert len(problems) == 2
    assert problems[0].startswith(f"{daemon.path}:2 registry.url:")


def test_a_valid_policy_file_on_reload_takes_effect(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, FakePass())
    state = tmp_path / "state"
    write_policy_file(
        daemon.path,
        "registry:\n  url: http://127.0.0.1:9\nrules:\n  - name: builds\n    keep_last: 3\n"
        f"schedule:\n  interval: 1h\nstate_dir: {state}\n",
    )
    daemon.reload()
    assert [rule.name for rule in daemon.policy.rules] == ["builds"]
    assert daemon.policy.schedule.interval == timedelta(hours=1)


def test_a_reload_during_a_failing_pass_reports_the_registry_the_pass_ran_against(
    tmp_path: Path, held: FakePass
) -> None:
    held.outcomes = [RegistryUnreachable("connection refused", method="GET", url="x")]
    daemon = make_daemon(tmp_path, held)
    assert daemon.start_now()
    assert held.entered.wait(5)
    write_policy_file(
        daemon.path,
        f"registry:\n  url: http://127.0.0.1:10\nstate_dir: {tmp_path / 'state'}\n",
    )
    daemon.reload()  # SIGHUP while the pass against :9 is still running
    held.release.set()
    wait_idle(daemon)

    assert daemon.policy.registry.url == "http://127.0.0.1:10"
    assert daemon.last_report is not None
    assert json.loads(daemon.last_report)["registry"] == "http://127.0.0.1:9"


def test_signals_arrive_in_order_through_the_pipe() -> None:
    with Signals() as signals:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGHUP)
        received = signals.wait(5)
        assert received == [signal.SIGHUP, signal.SIGHUP]
        assert signals.wait(0) == []


class ReloadCounter:
    path = Path("policy.yml")

    def __init__(self) -> None:
        self.reloads = 0

    def reload(self) -> None:
        self.reloads += 1
        os.kill(os.getpid(), signal.SIGTERM)  # the next signal stops the loop


def test_hup_reloads_and_term_stops_the_main_loop() -> None:
    counter = ReloadCounter()
    with Signals() as signals:
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for_stop(signals, counter)  # type: ignore[arg-type]
    assert counter.reloads == 1


def test_a_reload_reschedules_only_when_the_schedule_changed(tmp_path: Path) -> None:
    daemon = Daemon(
        tmp_path / "policy.yml",
        make_policy(tmp_path, schedule={"interval": "1h"}),
        metrics=Metrics(CollectorRegistry()),
        run=FakePass(),
        ping=lambda policy: None,
    )
    daemon.start()
    try:
        first = daemon.next_pass()
        assert first is not None
        assert sample(daemon, "retention_next_pass_timestamp_seconds") == 0  # set at scrape
        respond(daemon, "GET", "/metrics")
        assert sample(daemon, "retention_next_pass_timestamp_seconds") == first.timestamp()
        text = "registry:\n  url: http://127.0.0.1:9\nschedule:\n  interval: {}\n"
        write_policy_file(
            daemon.path,
            text.format("1h") + f"rules:\n  - {{name: r, keep_last: 1}}\nstate_dir: {tmp_path}\n",
        )
        daemon.reload()
        assert daemon.next_pass() == first
        write_policy_file(daemon.path, text.format("3h"))
        daemon.reload()
        moved = daemon.next_pass()
        assert moved is not None and moved - first > timedelta(hours=1, minutes=59)
    finally:
        assert daemon.stop(timeout_s=5)
