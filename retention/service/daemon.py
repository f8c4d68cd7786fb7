"""``retention serve``: the same pass as ``retention run``, on a schedule, behind an HTTP port.

Owns the long-running parts and nothing of a pass itself: the APScheduler 3.x jobs, the
guard that keeps two passes from overlapping, the reports kept in ``state_dir/reports``,
the HTTP endpoints (health, readiness, metrics, the last report, a manual run, the
registry's notifications) and the signals (TERM/INT stop, HUP reloads the policy file).
Only ``cli.py`` imports it.

Threads: the main thread waits for signals; APScheduler's pool runs scheduled passes and
registry pings; ``POST /run`` starts a pass in a thread of its own; the HTTP server answers
from its own threads; the write gate (``gate:``, ``service/gate.py``) serves on an event
loop of its own thread, and each pass reaches it only as its ``WriteWindow``. What they
share lives in ``Daemon``: ``_pass_lock`` says a pass is running (and keeps two from
overlapping), ``_state_lock`` guards readiness; the last report is replaced whole, so
readers need no lock. The gate starts before the scheduler and stops after the last
pass, so no GC runs without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Protocol

# APScheduler 3.x ships no type information (no py.typed); its names are Any here.
from apscheduler.events import (  # type: ignore[import-untyped]
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
)
from apscheduler.schedulers.background import (  # type: ignore[import-untyped]
    BackgroundScheduler,
)
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from retention.clock import Clock, utc_now
from retention.config.load import load_policy_with_warnings
from retention.config.schedule import describe_schedule, job_options, make_trigger
from retention.core import render as report
from retention.core.model import PassOutcome, RunResult
from retention.core.policy import Policy, Server
from retention.errors import ConfigError, RegistryError, RetentionError, SecretError
from retention.gc import WriteWindow
from retention.logs import get_logger
from retention.registry.auth import public_url
from retention.registry.client import RegistryClient
from retention.runner import run_pass
from retention.service.access import server_token
from retention.service.event_receiver import EVENTS_PATH, EventReceiver, load_secret
from retention.service.gate import gating
from retention.service.http_api import Access, Readiness, listening
from retention.service.metrics import LastPass, Metrics
from retention.service.notify import Notifier, notices
from retention.state.event_store import EventStore
from retention.state.report_store import ReportStore

log = get_logger(__name__)

PASS_JOB = "pass"
PING_JOB = "ping"
PING_INTERVAL_S = 30
PING_TIMEOUT = timedelta(seconds=5)
# How long SIGTERM waits for a pass in flight. A docker offline GC must be allowed to start
# the registry again, so this is generous; set the orchestrator's grace period above it.
STOP_TIMEOUT_S = 300.0
# How long a stopping daemon lets queued notifications go out (a retry backoff is cut short).
NOTIFY_DRAIN_S = 5.0


class AccessHolder(Protocol):
    """The HTTP server, as far as a token reload is concerned."""

    access: Access


PassFunction = Callable[[Policy], RunResult]
PingFunction = Callable[[Policy], None]


# -- one pass, as the daemon runs it ------------------------------------------------------


def run_scheduled_pass(policy: Policy) -> RunResult:
    """The same pass as ``retention run``; whether it is a dry run is the policy's choice."""
    return asyncio.run(run_pass(policy, dry_run=policy.schedule.dry_run))


def gated_pass(window: WriteWindow | None) -> PassFunction:
    """The scheduled pass, with GC inside the gate's write window when the daemon runs one."""
    if window is None:
        return run_scheduled_pass

    def run(policy: Policy) -> RunResult:
        return asyncio.run(run_pass(policy, dry_run=policy.schedule.dry_run, window=window))

    return run


def ping_registry(policy: Policy) -> None:
    """One quick ``GET /v2/`` for readiness: a short timeout and no retries."""
    settings = policy.registry.model_copy(update={"timeout": PING_TIMEOUT, "retries": 0})

    async def ping() -> None:
        async with RegistryClient(settings) as client:
            await client.ping()

    asyncio.run(ping())


@dataclass(frozen=True)
class PassRecord:
    """How one pass ended: its result, or the error it raised instead."""

    result: RunResult | None
    outcome: PassOutcome
    duration_s: float
    finished_at: datetime
    registry: str  # the one the pass ran against: a SIGHUP during the pass may change it
    error: str | None = None
    registry_failed: bool = False


def outcome_of(result: RunResult) -> PassOutcome:
    if not result.ok:
        return "failure"
    return "dry_run" if result.dry_run else "success"


def failure_document(record: PassRecord) -> dict[str, Any]:
    """A report for a pass that raised, shaped like ``report.to_dict`` where it can be."""
    return {
        "registry": record.registry,
        "generated_at": report.timestamp(record.finished_at),
        "errors": [record.error or "unknown error"],
        "ok": False,
        "duration_s": round(record.duration_s, 3),
    }


# -- the daemon's state ---------------------------------------------------------------------


class Daemon:
    """What the scheduler, the HTTP threads and the signal loop share.

    ``_pass_lock`` means "a pass is running": whoever takes it without waiting runs the
    pass and everyone else is told no. That lock, not APScheduler's ``max_instances``
    alone, keeps a ``POST /run`` and a scheduled pass from overlapping.
    """

    def __init__(
        self,
        path: Path,
        policy: Policy,
        *,
        metrics: Metrics,
        run: PassFunction = run_scheduled_pass,
        ping: PingFunction = ping_registry,
        clock: Clock = utc_now,
        events: EventReceiver | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.path = path
        self.policy = policy
        self.metrics = metrics
        self._run = run
        self._ping = ping
        self._clock = clock
        self._reports = _store_for(policy)
        self._pass_lock = threading.Lock()
        self._stopping = threading.Event()
        self._state_lock = threading.Lock()
        self._last_report: bytes | None = None
        self._readiness = Readiness(False, "the registry has not been checked yet")
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._events = events
        self._notifier = notifier or Notifier(policy.notify, outcomes=metrics.count_notification)

    # state read by the HTTP threads

    @property
    def events(self) -> EventReceiver | None:
        return self._events

    @property
    def readiness(self) -> Readiness:
        return self._readiness

    @property
    def last_report(self) -> bytes | None:
        return self._last_report

    @property
    def running(self) -> bool:
        return self._pass_lock.locked()

    def next_pass(self) -> datetime | None:
        job = self._scheduler.get_job(PASS_JOB) if self._scheduler.running else None
        moment: datetime | None = job.next_run_time if job else None
        return moment

    def metrics_body(self) -> bytes:
        """Only the next pass time is read at scrape time: it is the scheduler's, not disk."""
        self.metrics.set_next_pass(self.next_pass())
        return self.metrics.render()

    # starting and stopping

    def restore(self) -> None:
        """Load the newest stored report, so /report and the gauges survive a restart."""
        latest = self._reports.latest()
        if latest is None:
            return
        stored, document = latest
        self._last_report = _encode(document)
        self.metrics.restore(LastPass.from_report(document), self._reports.last_success())
        log.info("last report loaded", path=str(stored.path), outcome=stored.outcome)

    def start(self) -> None:
        # The listener below logs skips and misfires as structured events; APScheduler's own
        # plain-text warnings about them would only repeat those lines.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        self._scheduler.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        trigger = make_trigger(self.policy.schedule)
        self._scheduler.add_job(self.run_scheduled, trigger, id=PASS_JOB, **job_options())
        self._scheduler.add_job(
            self.check_registry,
            IntervalTrigger(seconds=PING_INTERVAL_S, timezone=UTC),
            id=PING_JOB,
            next_run_time=utc_now(),
            **job_options(),
        )
        self._scheduler.start()

    def stop(self, timeout_s: float) -> bool:
        """No new pass; wait up to ``timeout_s`` for the one in flight, never cancelling it.

        A pass is never cancelled because its GC may have stopped the registry, and only the
        pass starts it again. The lock is kept, so nothing can start a pass after this.
        """
        self._stopping.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self.running:
            log.info("waiting for the running pass", timeout_s=timeout_s)
        if not self._pass_lock.acquire(timeout=timeout_s):
            log.error("pass still running at exit", waited_s=timeout_s)
            return False
        if not self._notifier.close(NOTIFY_DRAIN_S):
            log.warning("notifications left unsent at exit", waited_s=NOTIFY_DRAIN_S)
        return True

    def reload(self) -> None:
        """SIGHUP: read the policy file again; a broken file leaves the old policy in force."""
        try:
            loaded = load_policy_with_warnings(self.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("policy not reloaded", problem=problem)
            log.error("old policy stays in force", path=str(self.path))
            return
        for warning in loaded.warnings:
            log.warning("policy warning", warning=warning)
        self._apply(loaded.policy)

    def _apply(self, policy: Policy) -> None:
        if policy.server.listen != self.policy.server.listen:
            log.warning("server.listen changes at the next restart", listen=policy.server.listen)
        if policy.gate != self.policy.gate:
            log.warning("gate changes at the next restart", gate=_describe_gate(policy))
        rescheduled = policy.schedule != self.policy.schedule
        self._reload_events(policy)
        self.policy = policy
        self._reports = _store_for(policy)
        self._notifier.targets = tuple(policy.notify)
        # An unchanged schedule keeps its slots: a HUP must not push an interval's pass back.
        if rescheduled and self._scheduler.running:
            self._scheduler.reschedule_job(PASS_JOB, trigger=make_trigger(policy.schedule))
        log.info(
            "policy reloaded",
            path=str(self.path),
            rules=len(policy.rules),
            schedule=describe_schedule(policy.schedule),
            next_pass=_iso(self.next_pass()),
        )

    def _reload_events(self, policy: Policy) -> None:
        """A new receiver, with the secret read again (a rotated secret needs only a HUP);
        one that cannot start (its secret is gone) is logged, and the old one goes on."""
        try:
            self._events = event_receiver(policy, self.metrics, self._clock, self._events)
        except ConfigError as exc:
            log.error("notifications not reloaded", problem=str(exc))

    # passes

    def run_scheduled(self) -> None:
        """APScheduler's job: one pass, unless one is already running or we are stopping."""
        if self._stopping.is_set():
            return
        if not self._pass_lock.acquire(blocking=False):
            log.warning("scheduled pass skipped", reason="another pass is running")
            return
        self._run_held("schedule")

    def start_now(self, *, reason: str = "manual") -> bool:
        """Start a pass in its own thread now; False when one is running (or we stop)."""
        if self._stopping.is_set() or not self._pass_lock.acquire(blocking=False):
            return False
        # Daemonic: if SIGTERM's wait runs out, the process must still be able to exit.
        worker = threading.Thread(
            target=self._run_held, args=(reason,), name="retention-pass", daemon=True
        )
        worker.start()
        return True

    def _run_held(self, reason: str) -> None:
        """Run one pass while holding ``_pass_lock``, then release it, whatever happens."""
        try:
            self.metrics.set_running(True)
            log.info("pass started", trigger=reason, dry_run=self.policy.schedule.dry_run)
            self._finish(self._attempt(self.policy))
        finally:
            self.metrics.set_running(False)
            self._pass_lock.release()  # stop(), if waiting, takes it and keeps it

    def _attempt(self, policy: Policy) -> PassRecord:
        """The job wrapper: the one place where any exception is caught, logged and counted."""
        started = time.monotonic()
        registry = public_url(policy.registry.base_url)

        def ended(error: str, *, registry_failed: bool = False) -> PassRecord:
            elapsed = time.monotonic() - started
            return PassRecord(
                None, "failure", elapsed, self._clock(), registry, error, registry_failed
            )

        try:
            result = self._run(policy)
        except RegistryError as exc:
            log.error("pass failed", error=str(exc))
            return ended(str(exc), registry_failed=True)
        except RetentionError as exc:
            log.error("pass failed", error=str(exc))
            return ended(str(exc))
        except Exception as exc:  # a bug: keep the daemon alive, keep the traceback
            log.exception("pass crashed", error=repr(exc))
            return ended(f"internal error: {exc!r}")
        elapsed = time.monotonic() - started
        return PassRecord(result, outcome_of(result), elapsed, self._clock(), registry)

    def _finish(self, record: PassRecord) -> None:
        if record.result is not None:  # the rows one repository at a time, not as dicts
            text = "".join(report.json_pieces(record.result))
        else:
            text = report.encode_json(failure_document(record))
        self._last_report = text.encode()
        self.metrics.record(
            record.result, record.outcome, record.duration_s, finished_at=record.finished_at
        )
        self._save(text, record)
        self._notifier.send(notices(self.policy, record.result, record.error, record.finished_at))
        if record.result is not None:
            self._set_readiness(Readiness(True, "the registry answered the last pass"))
        elif record.registry_failed:
            self._set_readiness(Readiness(False, f"the last pass failed: {record.error}"))

    def _save(self, text: str, record: PassRecord) -> None:
        """A report that cannot be written is logged; the daemon goes on either way."""
        try:
            path = self._reports.write(text, record.outcome, record.finished_at)
            self._reports.prune()
        except OSError as exc:
            log.error("report not written", directory=str(self._reports.directory), error=str(exc))
            return
        log.info("report written", path=str(path), outcome=record.outcome)

    # readiness

    def check_registry(self) -> None:
        """The periodic ping; skipped while a pass runs, since the pass will tell."""
        if self.running or self._stopping.is_set():
            return
        try:
            self._ping(self.policy)
        except RegistryError as exc:
            self._set_readiness(Readiness(False, f"the registry did not answer: {exc}"))
            return
        self._set_readiness(Readiness(True, "the registry answered"))

    def _set_readiness(self, readiness: Readiness) -> None:
        with self._state_lock:
            changed = readiness.ready != self._readiness.ready
            self._readiness = readiness
        if changed:
            log.info("readiness changed", ready=readiness.ready, reason=readiness.reason)

    def _on_skipped(self, event: Any) -> None:
        if event.job_id != PASS_JOB:
            return
        if event.code == EVENT_JOB_MAX_INSTANCES:
            log.warning("scheduled pass skipped", reason="the previous pass is still running")
        else:
            log.warning("scheduled pass missed", reason="later than the grace time")


def event_receiver(
    policy: Policy, metrics: Metrics, clock: Clock, current: EventReceiver | None = None
) -> EventReceiver | None:
    """The receiver for ``POST /events`` when notifications are enabled (its store reused:
    ``state_dir`` changes only with a restart), counting its answers in ``metrics``."""
    settings = policy.notifications
    if not settings.enabled:
        return None
    secret = load_secret(settings)
    store = current.store if current is not None else EventStore(policy.state_dir)
    return EventReceiver(
        store, settings, secret, lambda answer: metrics.record_notification(answer, clock())
    )


def _describe_gate(policy: Policy) -> str | None:
    gate = policy.gate
    return f"{gate.listen} -> {gate.upstream}" if gate else None


def _store_for(policy: Policy) -> ReportStore:
    return ReportStore(policy.state_dir / "reports", policy.reports.keep)


def _encode(document: Mapping[str, Any]) -> bytes:
    return report.encode_json(document).encode()


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


# -- signals and the main loop --------------------------------------------------------------

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HANDLED_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)


def _note(signum: int, frame: FrameType | None) -> None:
    """Does nothing: the signal number reaches the main loop through the wakeup pipe."""


class Signals:
    """TERM, INT and HUP delivered to the main loop as numbers read from a pipe.

    The handlers do nothing in Python; the interpreter writes each signal's number to the
    wakeup fd. A handler that took a lock (an Event, a Queue) could deadlock against the
    very code it interrupted, and blocking signals instead would leak into GC subprocesses.
    """

    def __enter__(self) -> Signals:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, _note) for signum in HANDLED_SIGNALS}
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read)
        os.close(self._write)

    def wait(self, timeout_s: float | None = None) -> list[int]:
        """The signals received, in order; empty after ``timeout_s`` without one."""
        readable, _, _ = select.select([self._read], [], [], timeout_s)
        if not readable:
            return []
        try:
            return list(os.read(self._read, 64))
        except BlockingIOError:
            return []


def wait_for_stop(
    signals: Signals, daemon: Daemon, reloaded: Callable[[Policy], None] | None = None
) -> None:
    """Block until TERM or INT; reload the policy on each HUP meanwhile."""
    while True:
        for signum in signals.wait():
            if signum in STOP_SIGNALS:
                log.info("stopping", signal=signal.Signals(signum).name)
                return
            if signum == signal.SIGHUP:
                log.info("reloading", signal="SIGHUP", path=str(daemon.path))
                daemon.reload()
                if reloaded is not None:
                    reloaded(daemon.policy)


def read_access(server: Server) -> Access:
    """Who may use the guarded endpoints; raises SecretError when the token is unusable."""
    return Access(server_token(server), server.protect_report)


def reload_access(http: AccessHolder, policy: Policy) -> None:
    """SIGHUP re-reads the token, so a rotated token file needs no restart.

    An unusable token leaves the old one in force, as a broken policy file does.
    """
    try:
        access = read_access(policy.server)
    except SecretError as exc:
        log.error("token not reloaded, the old one stays in force", error=str(exc))
        return
    http.access = access


def serve(
    path: Path,
    policy: Policy,
    *,
    warnings: Sequence[str] = (),
    run_now: bool = False,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> bool:
    """Run until SIGTERM or SIGINT. True when no pass was left running at exit."""
    for warning in warnings:
        log.warning("policy warning", warning=warning)
    access = read_access(policy.server)
    metrics = Metrics(CollectorRegistry())
    receiver = event_receiver(policy, metrics, utc_now)
    with gating(policy.gate) as gate:
        daemon = Daemon(path, policy, metrics=metrics, events=receiver, run=gated_pass(gate))
        return _serve_until_stopped(daemon, access, run_now=run_now, stop_timeout_s=stop_timeout_s)


def _serve_until_stopped(
    daemon: Daemon, access: Access, *, run_now: bool, stop_timeout_s: float
) -> bool:
    policy = daemon.policy
    daemon.restore()
    with Signals() as signals, listening(policy.server, daemon, access) as http:
        daemon.start()
        log.info(
            "serving",
            listen=policy.server.listen,
            token=access.token is not None,
            gate=_describe_gate(policy),
            schedule=describe_schedule(policy.schedule),
            dry_run=policy.schedule.dry_run,
            next_pass=_iso(daemon.next_pass()),
            notifications=EVENTS_PATH if daemon.events is not None else None,
        )
        if run_now:
            daemon.start_now(reason="start")
        wait_for_stop(signals, daemon, lambda reloaded: reload_access(http, reloaded))
        finished = daemon.stop(stop_timeout_s)
    log.info("stopped", pass_left_running=not finished)
    return finished
