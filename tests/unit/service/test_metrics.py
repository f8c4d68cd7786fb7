"""The daemon's Prometheus metrics: what a pass's result becomes, in an injected registry."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.metadata import version

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from retention.core import render as report
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
from retention.service.metrics import LastPass, Metrics

NOW = datetime(2025, 1, 15, 3, 0, tzinfo=UTC)
PLAN = Plan(registry="http://127.0.0.1:5000", created_at=NOW, repositories=())


def deletion(outcome: Outcome, *tags: str) -> DeletionResult:
    return DeletionResult("app", f"sha256:{'0' * 63}{len(tags)}", tags, outcome)


APPLIED = (
    deletion(Outcome.DELETED, "build-1", "build-1-alias"),
    deletion(Outcome.DELETED, "build-2"),
    deletion(Outcome.ALREADY_GONE, "build-3"),
    deletion(Outcome.SKIPPED, "build-4"),
)
RESULT = RunResult(
    PLAN,
    dry_run=False,
    applied=APPLIED,
    storage=StorageUsage(before_bytes=10_000, after_bytes=4_000),
    gc=GcResult("command", ran=True, blobs_deleted=7),
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_before_any_pass_counters_are_zero_and_unmeasured_gauges_are_absent(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    for outcome in ("success", "failure", "dry_run"):
        assert value(registry, "retention_passes_total", outcome=outcome) == 0
    assert value(registry, "retention_pass_running") == 0
    assert value(registry, "retention_last_success_timestamp_seconds") == 0
    assert value(registry, "retention_storage_bytes", when="before") is None
    assert value(registry, "retention_freed_bytes") is None
    assert value(registry, "retention_gc_blobs_deleted_total") == 0


def test_a_successful_pass_counts_deleted_manifests_and_their_tags_only(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.record(RESULT, "success", 12.5, finished_at=NOW)
    assert value(registry, "retention_passes_total", outcome="success") == 1
    assert value(registry, "retention_manifests_deleted_total") == 2
    assert value(registry, "retention_tags_deleted_total") == 3


def test_a_successful_pass_sets_the_last_pass_gauges(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.record(RESULT, "success", 12.5, finished_at=NOW)
    assert value(registry, "retention_storage_bytes", when="before") == 10_000
    assert value(registry, "retention_storage_bytes", when="after") == 4_000
    assert value(registry, "retention_freed_bytes") == 6_000
    assert value(registry, "retention_gc_blobs_deleted_total") == 7
    assert value(registry, "retention_last_success_timestamp_seconds") == NOW.timestamp()
    assert value(registry, "retention_pass_duration_seconds_count") == 1
    assert value(registry, "retention_pass_duration_seconds_sum") == 12.5
    assert value(registry, "retention_pass_duration_seconds_bucket", le="15.0") == 1
    assert value(registry, "retention_pass_duration_seconds_bucket", le="5.0") == 0


def test_a_pass_that_raised_is_a_failure_and_leaves_the_last_figures_alone(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.record(RESULT, "success", 1.0, finished_at=NOW)
    later = datetime(2025, 1, 16, 3, 0, tzinfo=UTC)
    metrics.record(None, "failure", 0.2, finished_at=later)
    assert value(registry, "retention_passes_total", outcome="failure") == 1
    assert value(registry, "retention_last_success_timestamp_seconds") == NOW.timestamp()
    assert value(registry, "retention_freed_bytes") == 6_000
    assert value(registry, "retention_manifests_deleted_total") == 2


def test_a_dry_run_counts_as_its_own_outcome_and_is_not_a_last_success(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.record(RESULT, "success", 1.0, finished_at=NOW)
    later = datetime(2025, 1, 16, 3, 0, tzinfo=UTC)
    metrics.record(RunResult(PLAN, dry_run=True), "dry_run", 1.0, finished_at=later)
    assert value(registry, "retention_passes_total", outcome="dry_run") == 1
    assert value(registry, "retention_storage_bytes", when="after") == 4_000
    assert value(registry, "retention_last_success_timestamp_seconds") == NOW.timestamp()


def test_a_dry_run_exports_what_its_plan_would_delete_and_free(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    deletions = tuple(
        ManifestDeletion(f"sha256:{n:064x}", DeletionKind.TAGGED, (f"v{n}",)) for n in (1, 2)
    )
    decisions = tuple(
        TagDecision(f"v{n}", f"sha256:{n:064x}", None, Action.DELETE, "r", "old") for n in (1, 2)
    )
    loose = TagDecision("", f"sha256:{3:064x}", None, Action.DELETE, None, "9d", kind="untagged")
    deletions += (ManifestDeletion(loose.digest, DeletionKind.UNTAGGED),)
    repository = RepositoryPlan("app", decisions=(*decisions, loose), deletions=deletions)
    plan = Plan(PLAN.registry, NOW, (repository,), reclaimable_bytes=5_000)
    metrics.record(RunResult(plan, dry_run=True), "dry_run", 1.0, finished_at=NOW)
    assert value(registry, "retention_plan_deletions", kind="manifests") == 3
    assert value(registry, "retention_plan_deletions", kind="tags") == 2
    assert value(registry, "retention_plan_deletions", kind="untagged") == 1
    assert value(registry, "retention_plan_reclaimable_bytes") == 5_000
    assert value(registry, "retention_manifests_deleted_total") == 0


def test_the_build_info_names_the_installed_version(registry: CollectorRegistry) -> None:
    Metrics(registry)
    assert value(registry, "retention_build_info", version=version("retention")) == 1


def test_counters_export_no_created_series(metrics: Metrics) -> None:
    metrics.record(RESULT, "success", 1.0, finished_at=NOW)
    assert b"_created" not in metrics.render()


def test_a_pass_that_measured_nothing_freed_exports_zero_not_the_old_figure(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.record(RESULT, "success", 1.0, finished_at=NOW)
    unchanged = RunResult(PLAN, dry_run=False, storage=StorageUsage(4_000, 4_000))
    metrics.record(unchanged, "success", 1.0, finished_at=NOW)
    assert value(registry, "retention_freed_bytes") == 0
    assert value(registry, "retention_gc_blobs_deleted_total") == 7  # GC did not run this time


def test_figures_restored_from_a_stored_report_equal_the_recorded_ones(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    stored = report.to_dict(RESULT)
    metrics.restore(LastPass.from_report(stored), last_success=NOW)
    assert LastPass.from_report(stored) == LastPass.from_result(RESULT)
    assert value(registry, "retention_freed_bytes") == 6_000
    assert value(registry, "retention_last_success_timestamp_seconds") == NOW.timestamp()
    assert value(registry, "retention_passes_total", outcome="success") == 0


def test_a_report_of_a_pass_that_raised_restores_nothing() -> None:
    assert LastPass.from_report({"ok": False, "errors": ["registry down"]}) == LastPass()


def test_next_pass_and_running_are_plain_gauges(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_next_pass(NOW)
    metrics.set_running(True)
    assert value(registry, "retention_next_pass_timestamp_seconds") == NOW.timestamp()
    assert value(registry, "retention_pass_running") == 1
    metrics.set_next_pass(None)
    metrics.set_running(False)
    assert value(registry, "retention_next_pass_timestamp_seconds") == 0
    assert value(registry, "retention_pass_running") == 0


def test_render_is_parseable_text_exposition(metrics: Metrics) -> None:
    metrics.record(RESULT, "success", 3.0, finished_at=NOW)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    assert families["retention_passes"].type == "counter"
    assert families["retention_storage_bytes"].type == "gauge"
    assert families["retention_pass_duration_seconds"].type == "histogram"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("retention_passes_total", (("outcome", "success"),))] == 1


def test_metrics_stay_in_their_own_registry(registry: CollectorRegistry, metrics: Metrics) -> None:
    other = CollectorRegistry()
    Metrics(other).record(RESULT, "success", 1.0, finished_at=NOW)
    assert value(registry, "retention_passes_total", outcome="success") == 0
    assert REGISTRY.get_sample_value("retention_passes_total", {"outcome": "success"}) is None


def test_a_hand_edited_report_with_odd_sections_restores_nothing() -> None:
    odd = {"storage": ["not", "a", "mapping"], "gc": None}
    assert LastPass.from_report(odd) == LastPass()
    assert LastPass.from_report({"storage": {"before_bytes": True}}) == LastPass()


def test_problems_found_after_a_pass_are_counted(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    broken = RunResult(PLAN, dry_run=False, verification=("after gc: a:v1: manifest x is missing",))
    metrics.record(RESULT, "success", 1.0, finished_at=NOW)
    metrics.record(broken, "failure", 1.0, finished_at=NOW)
    assert value(registry, "retention_verification_problems_total") == 1


def test_a_failed_probe_counts_once_and_a_passed_one_not_at_all(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    assert value(registry, "retention_probe_failures_total") == 0
    passed = GcResult("command", ran=True, probe="passed")
    failed = GcResult("command", ran=True, probe="failed: pushing retention-probe:x failed")

    metrics.record(RunResult(PLAN, dry_run=False, gc=passed), "success", 1.0, finished_at=NOW)
    metrics.record(
        RunResult(PLAN, dry_run=False, gc=failed, errors=("probe: x",)),
        "failure",
        1.0,
        finished_at=NOW,
    )

    assert value(registry, "retention_probe_failures_total") == 1
