"""One retention pass, shared by the CLI and the daemon: scan, plan, delete, collect, measure.

This is the only place that strings the edges together; it holds no policy logic of its
own. Dry run is this same path stopped before the first write, never a second
implementation, and ``apply`` of a saved plan joins it right after planning. Expected
failures after the plan (GC, storage, verification) are recorded in the result rather
than raised, so the report always shows what was deleted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from retention.apply import executor
from retention.apply.trash import Trash, TrashBin, new_run_id
from retention.apply.verify import verify
from retention.core import planner
from retention.core.model import GcResult, Inventory, Outcome, Plan, RunResult, StorageUsage
from retention.core.policy import Policy, format_duration
from retention.errors import (
    DeleteDisabled,
    GarbageCollectionError,
    RegistryError,
    RetentionError,
    StorageError,
)
from retention.gc import Collector, ReadyCheck
from retention.gc.command import CommandCollector
from retention.gc.disk_usage import LocalStorage, StorageProbe
from retention.logs import get_logger
from retention.registry.client import RegistryClient
from retention.scan.inventory import ProgressCallback, collect
from retention.scan.push_times import with_push_times
from retention.scan.storage_reader import read_storage
from retention.scan.subjects import confirm_subjects
from retention.state.lock import exclusive
from retention.state.manifest_cache import ManifestCache

Clock = Callable[[], datetime]
log = get_logger(__name__)
READY_POLL_S = 0.5


def utc_now() -> datetime:
    return datetime.now(UTC)


class PlanMismatch(RetentionError):
    """A saved plan is for another registry than the policy's."""


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
            result = await _apply(client, policy, plan, force=force, clock=clock)
    return _finished(result, started)


async def apply_plan(
    policy: Policy, plan: Plan, *, force: bool = False, clock: Clock = utc_now
) -> RunResult:
    """Carry out a reviewed plan: only what it lists, each tag re-checked before deletion."""
    started = time.monotonic()
    async with RegistryClient(policy.registry) as client:
        if plan.registry != client.url:
            raise PlanMismatch(
                f"the plan is for {plan.registry}, the policy's registry is {client.url}"
            )
        with exclusive(policy.state_dir):
            result = await _apply(client, policy, plan, force=force, clock=clock)
    return _finished(result, started)


async def _scan_and_plan(
    client: RegistryClient, policy: Policy, progress: ProgressCallback | None, clock: Clock
) -> Plan:
    inventory = await _inventory(client, policy, progress)
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


async def _inventory(
    client: RegistryClient, policy: Policy, progress: ProgressCallback | None
) -> Inventory:
    """The scan (``scan: api`` with manifests cached by digest, or ``scan: storage``),
    signed subjects and push times."""
    if policy.scan == "storage" and policy.storage.path is not None:
        await client.ping()  # deletions and subjects still need the API: fail early
        scanned = await asyncio.to_thread(
            read_storage, policy.storage.path, registry=client.url, progress=progress
        )
    else:
        scanned = await collect(client, progress=progress, cache=ManifestCache(policy.state_dir))
    inventory = await confirm_subjects(client, scanned)
    if policy.storage.path is not None and policy.gc.mode != "docker":
        inventory = with_push_times(inventory, policy.storage.path)
    return inventory


async def _apply(
    client: RegistryClient, policy: Policy, plan: Plan, *, force: bool, clock: Clock
) -> RunResult:
    over = planner.check_budget(plan, policy.safety)
    if over is not None and not force:
        log.error("safety limit exceeded", reason=over)
        return RunResult(plan, dry_run=False, errors=(over,))
    with docker_engine(policy) as engine:
        return await _delete_and_collect(client, policy, plan, engine, clock)


async def _delete_and_collect(
    client: RegistryClient, policy: Policy, plan: Plan, engine: Any, clock: Clock
) -> RunResult:
    now = clock()
    run_id = new_run_id(now)
    trash = Trash(policy.state_dir)
    probe = storage_probe(policy, engine)
    before = _measure(probe, "before")
    try:
        applied = await executor.apply(client, plan, trash.open_bin(run_id, plan.registry, now))
    except DeleteDisabled as exc:
        return RunResult(plan, dry_run=False, errors=(str(exc),), run_id=run_id)
    deleted = any(a.outcome is Outcome.DELETED for a in applied)
    problems = await _verify(client, policy, plan, "after deletion") if deleted else []
    gc, errors = await _collect_garbage(client, policy, trash, engine, clock())
    if gc is not None and gc.ran:
        problems += await _verify(client, policy, plan, "after gc")
    trash.prune(policy.trash.keep, clock())
    after = _measure(probe, "after") if before is not None else None
    return RunResult(
        plan,
        dry_run=False,
        applied=applied,
        storage=StorageUsage(before, after),
        gc=gc,
        errors=errors,
        run_id=run_id,
        verification=tuple(problems),
    )


async def _verify(client: RegistryClient, policy: Policy, plan: Plan, when: str) -> list[str]:
    if not policy.verify.enabled:
        return []
    problems = [f"{when}: {p}" for p in await verify(client, plan, policy.verify.blobs)]
    for problem in problems:
        log.error("verification failed", problem=problem)
    if not problems:
        log.info("verification passed", when=when)
    return problems


# -- garbage collection ---------------------------------------------------------------------


async def _collect_garbage(
    client: RegistryClient, policy: Policy, trash: Trash, engine: Any, now: datetime
) -> tuple[GcResult | None, tuple[str, ...]]:
    """GC when deletions wait for it and the oldest is older than ``gc.delay``.

    Stopping a registry for nothing is downtime, and collecting too early ends the window
    in which ``retention restore`` can bring an image back.
    """
    if policy.gc.mode == "none":
        return None, ()
    pending = trash.uncollected()
    why_not = _gc_deferred(pending, policy, now)
    if why_not is not None:
        log.info("gc skipped", mode=policy.gc.mode, reason=why_not)
        return GcResult(mode=policy.gc.mode, skipped=why_not), ()
    result, errors = await _run_collector(client, policy, engine)
    if result.error is None:
        trash.mark_collected([b.run_id for b in pending])
    return result, errors


def _gc_deferred(pending: list[TrashBin], policy: Policy, now: datetime) -> str | None:
    if not pending:
        return "nothing deleted since the last collection"
    oldest = min(b.deleted_at for b in pending)
    if now - oldest < policy.gc.delay:
        age = format_duration(now - oldest) if now > oldest else "0s"
        return (
            f"gc.delay={format_duration(policy.gc.delay)}: the oldest uncollected deletion "
            f"is {age} old (restorable until collected)"
        )
    return None


async def _run_collector(
    client: RegistryClient, policy: Policy, engine: Any
) -> tuple[GcResult, tuple[str, ...]]:
    ready = _ready_check(client, asyncio.get_running_loop())
    log.info("gc started", mode=policy.gc.mode)
    started = time.monotonic()
    try:
        result = await asyncio.to_thread(lambda: make_collector(policy, ready, engine).collect())
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


def make_collector(policy: Policy, ready: ReadyCheck, engine: Any) -> Collector:
    if policy.gc.mode == "docker":
        from retention.gc.docker import DockerCollector

        return DockerCollector(policy.gc, ready, engine)
    return CommandCollector(policy.gc, ready)


@contextmanager
def docker_engine(policy: Policy) -> Iterator[Any]:
    """One Docker client per pass in docker mode (None otherwise), closed at the end.

    Connecting first means an unreachable engine stops the pass before anything is deleted.
    """
    if policy.gc.mode != "docker":
        yield None
        return
    from retention.gc.docker import docker_client

    engine = docker_client(policy.gc)
    try:
        yield engine
    finally:
        engine.close()


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


def storage_probe(policy: Policy, engine: Any) -> StorageProbe | None:
    if policy.storage.path is None:
        return None
    if engine is not None:
        from retention.gc.docker import ContainerStorage

        return ContainerStorage(engine, policy.gc.container, str(policy.storage.path))
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
    result = replace(result, duration_s=time.monotonic() - started)
    _log_summary(result)
    return result


def _log_summary(result: RunResult) -> None:
    counts = {outcome.value: 0 for outcome in Outcome}
    for applied in result.applied:
        counts[applied.outcome.value] += 1
    log.info(
        "pass finished",
        ok=result.ok,
        run_id=result.run_id,
        tags_deleted=sum(len(a.tags) for a in result.applied if a.outcome is Outcome.DELETED),
        manifests=counts,
        bytes_before=result.storage.before_bytes,
        bytes_after=result.storage.after_bytes,
        bytes_freed=result.storage.freed_bytes,
        gc_blobs_deleted=result.gc.blobs_deleted if result.gc else None,
        gc_duration_s=round(result.gc.duration_s, 3) if result.gc else None,
        verification_problems=len(result.verification),
        duration_s=round(result.duration_s, 3),
        errors=list(result.errors),
    )
