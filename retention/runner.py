"""One retention pass, shared by the CLI and the daemon: scan, plan, delete, collect, measure.

This is the only place that strings the edges together; it holds no policy logic of its
own. Dry run is this same path stopped before the first write, never a second
implementation. Expected failures after the plan (GC, storage) are recorded in the result
rather than raised, so the report always shows what was deleted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from retention import executor, planner
from retention.errors import DeleteDisabled, GarbageCollectionError, RegistryError, StorageError
from retention.gc import Collector, ReadyCheck
from retention.gc.command import CommandCollector
from retention.inventory import ProgressCallback, collect
from retention.lock import exclusive
from retention.logs import get_logger
from retention.model import GcResult, Outcome, Plan, RunResult, StorageUsage
from retention.policy import Policy
from retention.registry.client import RegistryClient
from retention.storage import LocalStorage, StorageProbe

Clock = Callable[[], datetime]
log = get_logger(__name__)
READY_POLL_S = 0.5


def utc_now() -> datetime:
    return datetime.now(UTC)


async def run_pass(
    policy: Policy,
    *,
    dry_run: bool = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
    clock: Clock = utc_now,
) -> RunResult:
    """Plan, then (unless ``dry_run``) delete, garbage-collect and measure, under the lock."""
    started = time.monotonic()
    async with RegistryClient(policy.registry) as client:
        if dry_run:
            plan = await _scan_and_plan(client, policy, progress, clock)
            return RunResult(plan, dry_run=True, duration_s=time.monotonic() - started)
        with exclusive(policy.state_dir):
            plan = await _scan_and_plan(client, policy, progress, clock)
            result = await _apply(client, policy, plan, force=force)
    result = _finished(result, started)
    _log_summary(result)
    return result


async def _scan_and_plan(
    client: RegistryClient, policy: Policy, progress: ProgressCallback | None, clock: Clock
) -> Plan:
    inventory = await collect(client, progress=progress)
    plan = planner.plan(policy, inventory, clock())
    summary = plan.summary
    log.info(
        "plan made",
        repositories=summary.repositories,
        tags=summary.tags,
        tags_to_delete=summary.tags_to_delete,
        manifests_to_delete=summary.manifests_to_delete,
        reclaimable_bytes=summary.reclaimable_bytes,
    )
    for repository in plan.repositories:
        if repository.skipped:
            log.warning("repository skipped", repository=repository.name, reason=repository.skipped)
    return plan


async def _apply(client: RegistryClient, policy: Policy, plan: Plan, *, force: bool) -> RunResult:
    over = planner.check_budget(plan, policy.safety)
    if over is not None and not force:
        log.error("safety limit exceeded", reason=over)
        return RunResult(plan, dry_run=False, errors=(over,))
    probe = storage_probe(policy)
    before = _measure(probe, "before")
    try:
        applied = await executor.apply(client, plan)
    except DeleteDisabled as exc:
        return RunResult(plan, dry_run=False, errors=(str(exc),))
    deleted = any(a.outcome is Outcome.DELETED for a in applied)
    gc, errors = await _collect_garbage(client, policy, deleted)
    after = _measure(probe, "after") if before is not None else None
    storage = StorageUsage(before, after)
    return RunResult(plan, dry_run=False, applied=applied, storage=storage, gc=gc, errors=errors)


# -- garbage collection ---------------------------------------------------------------------


async def _collect_garbage(
    client: RegistryClient, policy: Policy, deleted: bool
) -> tuple[GcResult | None, tuple[str, ...]]:
    """Run GC only when this pass deleted something: stopping a registry for nothing is downtime."""
    if policy.gc.mode == "none":
        return None, ()
    if not deleted:
        log.info("gc skipped", mode=policy.gc.mode, reason="nothing was deleted")
        return GcResult(mode=policy.gc.mode), ()
    ready = _ready_check(client, asyncio.get_running_loop())
    log.info("gc started", mode=policy.gc.mode)
    started = time.monotonic()
    try:
        result = await asyncio.to_thread(lambda: make_collector(policy, ready).collect())
    except GarbageCollectionError as exc:
        log.error("gc failed", mode=policy.gc.mode, error=str(exc))
        elapsed = time.monotonic() - started
        failed = GcResult(policy.gc.mode, ran=True, duration_s=elapsed, error=str(exc))
        return failed, (f"gc: {exc}",)
    log.info(
        "gc finished",
        mode=result.mode,
        blobs_deleted=result.blobs_deleted,
        duration_s=round(result.duration_s, 3),
    )
    return result, ()


def make_collector(policy: Policy, ready: ReadyCheck) -> Collector:
    if policy.gc.mode == "docker":
        from retention.gc.docker import DockerCollector, docker_client

        return DockerCollector(policy.gc, ready, docker_client(policy.gc))
    return CommandCollector(policy.gc, ready)


def _ready_check(client: RegistryClient, loop: asyncio.AbstractEventLoop) -> ReadyCheck:
    """A blocking check for GC threads, answered by the pass's own client on its loop."""

    def wait(timeout_s: float) -> None:
        asyncio.run_coroutine_threadsafe(_wait_until_up(client, timeout_s), loop).result()

    return wait


async def _wait_until_up(client: RegistryClient, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.ping()
            return
        except RegistryError as exc:
            if time.monotonic() >= deadline:
                raise GarbageCollectionError(
                    f"the registry did not answer within {timeout_s:.0f}s after GC: {exc}"
                ) from exc
        await asyncio.sleep(READY_POLL_S)


# -- storage --------------------------------------------------------------------------------


def storage_probe(policy: Policy) -> StorageProbe | None:
    if policy.storage.path is None:
        return None
    if policy.gc.mode == "docker":
        from retention.gc.docker import ContainerStorage, docker_client

        return ContainerStorage(
            docker_client(policy.gc), policy.gc.container, str(policy.storage.path)
        )
    return LocalStorage(policy.storage.path)


def _measure(probe: StorageProbe | None, when: str) -> int | None:
    """Bytes in storage, or None (said once in the log) when it cannot be measured."""
    if probe is None:
        return None
    try:
        size = probe.measure()
    except (StorageError, GarbageCollectionError) as exc:
        log.warning("storage not measured", when=when, error=str(exc))
        return None
    log.info("storage measured", when=when, bytes=size)
    return size


# -- the end of a pass ----------------------------------------------------------------------


def _finished(result: RunResult, started: float) -> RunResult:
    return replace(result, duration_s=time.monotonic() - started)


def _log_summary(result: RunResult) -> None:
    counts = {outcome.value: 0 for outcome in Outcome}
    for applied in result.applied:
        counts[applied.outcome.value] += 1
    log.info(
        "pass finished",
        ok=result.ok,
        tags_deleted=sum(len(a.tags) for a in result.applied if a.outcome is Outcome.DELETED),
        manifests=counts,
        bytes_before=result.storage.before_bytes,
        bytes_after=result.storage.after_bytes,
        bytes_freed=result.storage.freed_bytes,
        gc_blobs_deleted=result.gc.blobs_deleted if result.gc else None,
        gc_duration_s=round(result.gc.duration_s, 3) if result.gc else None,
        duration_s=round(result.duration_s, 3),
        errors=list(result.errors),
    )
