"""Prometheus metrics of the daemon, kept in a ``CollectorRegistry`` the caller passes in.

Owns the metric names, their help texts and how a pass's result becomes numbers. It must
not measure anything itself: every figure comes from a finished pass (or from the report
of one, after a restart), so a scrape never touches the disk or the registry. The
registry is injected rather than the process-global one so that tests, and two daemons
in one process, never see each other's numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from retention.core.model import OUTCOMES, Outcome, PassOutcome, RunResult
from retention.service.event_receiver import Answer

# What becomes of each event inside an envelope answered 200 (see event_receiver.py), and
# the key of the answer that counts it.
NOTIFICATION_OUTCOMES = {"stored": "stored", "duplicate": "duplicates", "ignored": "ignored"}

# A ``_created`` series per counter is noise to every query here and doubles the series;
# prometheus_client's switch is process-wide, and this module is its only user.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

# generate_latest writes the classic text format, so say that version, not the newest one.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# From a pass over a handful of tags to a docker offline GC of a large registry.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)


@dataclass(frozen=True)
class LastPass:
    """The figures of the last pass that produced them; None is unknown and not exported."""

    storage_before_bytes: int | None = None
    storage_after_bytes: int | None = None
    bytes_freed: int | None = None

    @classmethod
    def from_result(cls, result: RunResult) -> LastPass:
        storage = result.storage
        return cls(storage.before_bytes, storage.after_bytes, storage.freed_bytes)

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> LastPass:
        """The same figures read back from a stored JSON report (``report.to_dict``)."""
        storage = _section(report, "storage")
        return cls(
            _integer(storage.get("before_bytes")),
            _integer(storage.get("after_bytes")),
            _integer(storage.get("freed_bytes")),
        )

    def merged_into(self, previous: LastPass) -> LastPass:
        """A pass that could not measure (a dry run, a failure) keeps the earlier figures."""
        return LastPass(
            *(
                new if new is not None else old
                for new, old in zip(_values(self), _values(previous), strict=True)
            )
        )


def _values(figures: LastPass) -> tuple[int | None, ...]:
    return (figures.storage_before_bytes, figures.storage_after_bytes, figures.bytes_freed)


def _section(report: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A sub-mapping of a stored report; anything else (a hand edit, null) reads as empty."""
    value = report.get(key)
    return value if isinstance(value, Mapping) else {}


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _LastPassCollector:
    """Exports only the figures that are known: a 0 would claim a measurement never made."""

    def __init__(self) -> None:
        self.figures = LastPass()  # replaced whole, so a scrape never sees half an update

    def collect(self) -> Iterable[Metric]:
        figures = self.figures
        storage = GaugeMetricFamily(
            "retention_storage_bytes",
            "Registry storage measured by du in the last pass, before deleting and after GC.",
            labels=["when"],
        )
        for when, value in (
            ("before", figures.storage_before_bytes),
            ("after", figures.storage_after_bytes),
        ):
            if value is not None:
                storage.add_metric([when], value)
        yield storage
        yield from _single(
            "retention_freed_bytes", "Storage bytes freed by the last pass.", figures.bytes_freed
        )


def _single(name: str, documentation: str, value: int | None) -> Iterable[Metric]:
    family = GaugeMetricFamily(name, documentation)
    if value is not None:
        family.add_metric([], value)
    yield family


class Metrics:
    """The daemon's metrics: counters across passes, and gauges about the last one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._passes = Counter(
            "retention_passes", "Retention passes by outcome.", ["outcome"], registry=registry
        )
        for outcome in OUTCOMES:
            self._passes.labels(outcome)  # export 0 before the first pass, so rate() works
        self._tags_deleted = Counter(
            "retention_tags_deleted", "Tags removed by deleted manifests.", registry=registry
        )
        self._manifests_deleted = Counter(
            "retention_manifests_deleted", "Manifests deleted.", registry=registry
        )
        self._broken = Counter(
            "retention_verification_problems",
            "Problems with kept images found by the checks after deletion and after GC.",
            registry=registry,
        )
        self._probe_failures = Counter(
            "retention_probe_failures",
            "Test pushes after GC that the registry did not take back whole.",
            registry=registry,
        )
        self._duration = Histogram(
            "retention_pass_duration_seconds",
            "Duration of retention passes.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._last_success = Gauge(
            "retention_last_success_timestamp_seconds",
            "Unix time the last pass that deleted without failure ended (not a dry run); "
            "0 is never.",
            registry=registry,
        )
        self._next_pass = Gauge(
            "retention_next_pass_timestamp_seconds",
            "Unix time of the next scheduled pass; 0 is none.",
            registry=registry,
        )
        self._running = Gauge(
            "retention_pass_running", "1 while a pass is running.", registry=registry
        )
        self._gc_blobs = Counter(
            "retention_gc_blobs_deleted",
            "Blobs deleted by garbage collection.",
            registry=registry,
        )
        self._plan = Gauge(
            "retention_plan_deletions",
            "What the last pass's plan deletes, dry run or not: tags, untagged manifests and "
            "manifests (all of them).",
            ["kind"],
            registry=registry,
        )
        self._reclaimable = Gauge(
            "retention_plan_reclaimable_bytes",
            "Bytes the last pass's plan frees once GC runs (blobs no kept manifest uses).",
            registry=registry,
        )
        self._notifications = Counter(
            "retention_notifications",
            "Notifications by target and outcome: sent, failed (after retries), dropped.",
            ["target", "outcome"],
            registry=registry,
        )
        Gauge(
            "retention_build_info",
            "Always 1; the version label says which retention is running.",
            ["version"],
            registry=registry,
        ).labels(_version()).set(1)
        self._last = _LastPassCollector()
        registry.register(self._last)
        self._notification_metrics(registry)

    def _notification_metrics(self, registry: CollectorRegistry) -> None:
        """``POST /events``: how many arrive, and when the last was stored. A registry whose
        notifications stopped looks, to a pass, like one nobody pulls from: alert on this."""
        self._events = Counter(
            "retention_registry_events",
            "Registry notification events received, by what became of them.",
            ["outcome"],
            registry=registry,
        )
        for outcome in NOTIFICATION_OUTCOMES:
            self._events.labels(outcome)
        self._refused = Counter(
            "retention_registry_event_refusals",
            "POST /events requests not stored, by HTTP status (401 a wrong secret).",
            ["status"],
            registry=registry,
        )
        self._last_event = Gauge(
            "retention_last_registry_event_timestamp_seconds",
            "Unix time an envelope of events was last stored; 0 is not since the start.",
            registry=registry,
        )

    def record(
        self,
        result: RunResult | None,
        outcome: PassOutcome,
        duration_s: float,
        *,
        finished_at: datetime,
    ) -> None:
        """Count one finished pass; ``result`` is None when the pass raised."""
        self._passes.labels(outcome).inc()
        self._duration.observe(duration_s)
        if outcome == "success":
            self._last_success.set(finished_at.timestamp())
        if result is None:
            return
        self._record_plan(result)
        if result.gc is not None and result.gc.blobs_deleted:
            self._gc_blobs.inc(result.gc.blobs_deleted)
        deleted = [a for a in result.applied if a.outcome is Outcome.DELETED]
        self._manifests_deleted.inc(len(deleted))
        self._tags_deleted.inc(sum(len(a.tags) for a in deleted))
        self._broken.inc(len(result.verification))
        if result.gc is not None and result.gc.probe_failed:
            self._probe_failures.inc()
        self._last.figures = LastPass.from_result(result).merged_into(self._last.figures)

    def record_notification(self, answer: Answer, at: datetime) -> None:
        """Count one ``POST /events`` answer (called from the HTTP threads)."""
        if answer.status != 200:
            self._refused.labels(str(answer.status)).inc()
            return
        for outcome, key in NOTIFICATION_OUTCOMES.items():
            self._events.labels(outcome).inc(int(answer.body[key]))
        self._last_event.set(at.timestamp())

    def count_notification(self, target: str, outcome: str) -> None:
        """Called from the notifier's threads; prometheus_client counters are thread-safe."""
        self._notifications.labels(target, outcome).inc()

    def _record_plan(self, result: RunResult) -> None:
        """The plan's figures, so the dry-run weeks show what a real pass would do."""
        summary = result.plan.summary
        self._plan.labels("tags").set(summary.tags_to_delete)
        self._plan.labels("untagged").set(summary.untagged_to_delete)
        self._plan.labels("manifests").set(summary.manifests_to_delete)
        self._reclaimable.set(summary.reclaimable_bytes)

    def restore(self, figures: LastPass, last_success: datetime | None) -> None:
        """Gauges from stored reports after a restart; counters start again at 0, as usual."""
        self._last.figures = figures
        if last_success is not None:
            self._last_success.set(last_success.timestamp())

    def set_next_pass(self, moment: datetime | None) -> None:
        self._next_pass.set(moment.timestamp() if moment else 0)

    def set_running(self, running: bool) -> None:
        self._running.set(1 if running else 0)

    def render(self) -> bytes:
        """The text exposition format (``CONTENT_TYPE``) of everything in the registry."""
        return generate_latest(self._registry)


def _version() -> str:
    try:
        return version("retention")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
