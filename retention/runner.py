"""One retention pass, shared by the CLI and the daemon: scan, plan, delete, collect, measure.

This is the only place that strings the edges together; it holds no policy logic of its
own. Dry run is this same path stopped before the first write, never a second
implementation, and ``apply`` of a saved plan joins it right after planning. Expected
failures after the plan (GC, storage, verification) are recorded in the result rather
than raised, so the report always shows what was deleted.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import datetime

from retention.apply import executor, probe
from retention.apply.audit import AuditWriter
from retention.apply.trash import BinWriter, Trash, TrashBin, new_run_id
from retention.apply.verify import verify
from retention.clock import Clock, utc_now
from retention.core import planner
from retention.core.image_reference import ImageReference
from retention.core.model import (
    GcResult,
    Outcome,
    PhaseProgress,
    Plan,
    Repository,
    RunResult,
    StorageUsage,
)
from retention.core.policy import Policy, format_duration
from retention.errors import (
    DeleteDisabled,
    GarbageCollectionError,
    InUseError,
    PassInterrupted,
    PlanMismatch,
    ProbeFailed,
    RegistryError,
    StorageError,
    TrashError,
)
from retention.gc import ReadyCheck, WriteWindow
from retention.gc import mode as gc_mode
from retention.gc.disk_usage import StorageProbe
from retention.gc.mode import PassGc
from retention.logs import get_logger
from retention.registry.client import RegistryClient
from retention.scan import in_use as in_use_sources
from retention.scan import inventory, storage_reader
from retention.scan.push_times import EventTimes, with_link_times
from retention.scan.subjects import confirm_repository
from retention.scan.untagged import UntaggedListing
from retention.state.holds import HoldStore
from retention.state.lock import exclusive
from retention.state.manifest_cache import ManifestCache

log = get_logger(__name__)
NOT_CONFIRMED = "not confirmed at the prompt: nothing was deleted"


async def run_pass(
    policy: Policy,
    *,
    dry_run: bool = False,
    force: bool = False,
    progress: PhaseProgress | None = None,
    clock: Clock = utc_now,
    confirm: Callable[[Plan], bool] | None = None,
    scope: Scope | None = None,
    window: WriteWindow | None = None,
) -> RunResult:
    """Plan, then (unless ``dry_run``) delete, garbage-collect and measure, under the lock.

    ``confirm`` (the CLI at a terminal) is asked before a plan that deletes anything is
    applied; a no stops the pass with nothing deleted. ``scope`` (``--repository``,
    ``--rule``) limits what is scanned, planned and deleted, not only what is shown.
    ``window`` is the daemon's write gate: with ``gate:`` in the policy, GC runs only
    inside its closed window, and a pass without one (``retention run``) skips GC.
    """
    started = time.monotonic()
    scope = scope or Scope()
    async with RegistryClient(policy.registry) as client:
        if dry_run:
            plan = await _scan_and_plan(client, policy, progress, clock, scope)
            return RunResult(plan, dry_run=True, duration_s=time.monotonic() - started)
        with exclusive(policy.state_dir):
            plan = await _scan_and_plan(client, policy, progress, clock, scope)
            if policy.in_use:  # read before the scan; deployed since is spared too
                plan = planner.hold_in_use(plan, await _in_use(policy))
            if confirm is not None and plan.manifests_to_delete and not confirm(plan):
                return RunResult(plan, dry_run=False, errors=(NOT_CONFIRMED,))
            result = await _apply(
                client, policy, plan, force=force, clock=clock, progress=progress, window=window
            )
    return _finished(result, started)


async def apply_plan(
    policy: Policy,
    plan: Plan,
    *,
    force: bool = False,
    clock: Clock = utc_now,
    progress: PhaseProgress | None = None,
) -> RunResult:
    """Carry out a reviewed plan: only what it lists, each tag re-checked before deletion.

    What is in use now is read again (a failing source stops here), and the plan's
    deletions of images in use are dropped.
    """
    started = time.monotonic()
    async with RegistryClient(policy.registry) as client:
        if plan.registry != client.url:
            raise PlanMismatch(
                f"the plan is for {plan.registry}, the policy's registry is {client.url}"
            )
        with exclusive(policy.state_dir):
            plan = planner.hold_in_use(plan, await _in_use(policy))
            result = await _apply(client, policy, plan, force=force, clock=clock, progress=progress)
    return _finished(result, started)


@dataclass(frozen=True)
class Scope:
    """Part of the registry for one pass: repositories whose name fully matches
    ``repositories``, and only the deletions of ``rule`` (see ``planner.only_rule``)."""

    repositories: re.Pattern[str] | None = None
    rule: str | None = None

    def includes(self, name: str) -> bool:
        return self.repositories is None or self.repositories.fullmatch(name) is not None


async def _scan_and_plan(
    client: RegistryClient,
    policy: Policy,
    progress: PhaseProgress | None,
    clock: Clock,
    scope: Scope,
) -> Plan:
    """Each repository planned as soon as it is scanned, then dropped: a pass holds one
    repository's manifests at a time (and the plan), not the whole registry's.

    So what is in use and what is held are read before the scan; ``run_pass`` reads in use
    again before it deletes, so an image deployed during a long scan is spared too.
    """
    in_use = await _in_use(policy)
    holds = HoldStore(policy.state_dir).load()
    now = clock()
    untagged = UntaggedListing(policy, now)
    with EventTimes(policy.state_dir, policy.notifications) as events:
        planning = planner.Planning(
            policy, client.url, now, in_use, holds=holds, history_since=events.history_since
        )
        # Closed at once if planning stops (cancelled): the scan's tasks end, its cache saves.
        async with aclosing(_scanned(client, policy, progress, scope)) as repositories:
            async for scanned in repositories:
                completed = await _completed(client, policy, events, scanned)
                if untagged.enabled:  # reads the storage: off the event loop
                    completed = await asyncio.to_thread(untagged.add, completed)
                planning.add(completed)
    if untagged.enabled:
        await asyncio.to_thread(untagged.save)
    plan = planning.finish()
    if scope.rule is not None:
        plan = planner.only_rule(plan, scope.rule)
        plan = replace(plan, refused=planner.check_budget(plan, policy.safety))
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
    _log_decisions(plan)
    return plan


def _log_decisions(plan: Plan) -> None:
    """Every tag's fate with its reason, at debug: what ``--log-level debug`` is for.

    Asked once, first: the plan keeps its rows packed, and building a million of them to
    drop every event would cost seconds of CPU; and each ``log.debug`` on the module's lazy
    logger binds a new logger before it finds the level too low (4 µs a tag).
    """
    logger = log.bind()
    if not logger.is_enabled_for(logging.DEBUG):
        return
    for repository in plan.repositories:
        for decision in repository.decisions:
            logger.debug(
                "decision",
                repository=repository.name,
                tag=decision.tag,
                digest=decision.digest,
                action=decision.action.value,
                rule=decision.rule,
                reason=decision.reason,
            )


async def _scanned(
    client: RegistryClient, policy: Policy, progress: PhaseProgress | None, scope: Scope
) -> AsyncGenerator[Repository, None]:
    """The scan, one repository at a time (``scan: api`` with manifests cached by digest,
    or ``scan: storage``), in catalog order.

    The probe repository holds only the probe's own short-lived test images: never
    scanned, so no rule can plan them and a probe in flight cannot be deleted under it.
    """

    def wanted(name: str) -> bool:
        return name != policy.gc.probe and scope.includes(name)

    if policy.scan == "storage" and policy.storage.path is not None:
        await client.ping()  # deletions and subjects still need the API: fail early
        found = storage_reader.each_repository(
            policy.storage.path,
            repositories=wanted,
            progress=_phase(progress, "scan"),
            push_times=True,  # the link mtimes ``_completed`` would otherwise stat again
        )
        while (read := await asyncio.to_thread(next, found, None)) is not None:
            yield read
        return
    cache = ManifestCache(policy.state_dir)
    scanned = inventory.each_repository(
        client, repositories=wanted, progress=_phase(progress, "scan"), cache=cache
    )
    async with aclosing(scanned):
        async for repository in scanned:
            yield repository


async def _completed(
    client: RegistryClient, policy: Policy, events: EventTimes, repository: Repository
) -> Repository:
    """A scanned repository with its signed subjects, push and pull times: what it is planned
    with."""
    repository = await confirm_repository(client, repository)
    repository = events.timed(repository)
    if policy.storage.path is not None and policy.gc.mode != "docker" and policy.scan == "api":
        repository = with_link_times(repository, policy.storage.path)  # the storage scan has them
    return repository


async def _in_use(policy: Policy) -> tuple[ImageReference, ...]:
    """The references in use, read right before planning; a failing source stops the pass.

    ``InUseError`` propagates: with an image in use unseen, no deletion is safe.
    """
    if not policy.in_use:
        return ()
    try:
        found = await asyncio.to_thread(in_use_sources.collect, policy.in_use, policy.registry.url)
    except InUseError as exc:
        log.error("in_use source failed", error=str(exc))
        raise
    log.info("in use collected", references=len(found), sources=len(policy.in_use))
    return found


def _phase(progress: PhaseProgress | None, phase: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(phase, done, total)


async def _apply(
    client: RegistryClient,
    policy: Policy,
    plan: Plan,
    *,
    force: bool,
    clock: Clock,
    progress: PhaseProgress | None = None,
    window: WriteWindow | None = None,
) -> RunResult:
    over = planner.check_budget(plan, policy.safety)
    if over is not None and not force:
        log.error("safety limit exceeded", reason=over)
        return RunResult(plan, dry_run=False, errors=(over,))
    with gc_mode.for_pass(policy) as gc_means:
        return await _delete_and_collect(client, policy, plan, gc_means, clock, progress, window)


async def _delete_and_collect(
    client: RegistryClient,
    policy: Policy,
    plan: Plan,
    gc_means: PassGc,
    clock: Clock,
    progress: PhaseProgress | None,
    window: WriteWindow | None = None,
) -> RunResult:
    now = clock()
    run_id = new_run_id(now)
    trash = Trash(policy.state_dir)
    probe_storage = gc_means.storage
    before = _measure(probe_storage, "before")
    trash_bin = trash.open_bin(run_id, plan.registry, now)
    try:
        audit = AuditWriter.for_policy(policy, run_id, plan.registry, clock)
        applied = await executor.apply(client, plan, trash_bin, progress, audit)
    except DeleteDisabled as exc:
        errors = (str(exc), *_commit(trash_bin))
        return RunResult(plan, dry_run=False, errors=errors, run_id=run_id)
    except asyncio.CancelledError:
        _commit(trash_bin)
        planned = sum(len(r.deletions) for r in plan.repositories if not r.skipped)
        raise PassInterrupted(len(trash_bin.confirmed), planned, run_id) from None
    bin_problems = _commit(trash_bin)
    deleted = any(a.outcome is Outcome.DELETED for a in applied)
    problems = await _verify(client, policy, plan, "after deletion", progress) if deleted else []
    gc, errors, canary = await _collect_garbage(
        client, policy, trash, gc_means, clock(), progress, window
    )
    errors = (*bin_problems, *errors)
    if gc is not None and gc.ran:
        problems += await _verify(client, policy, plan, "after gc", progress)
    trash.prune(policy.trash.keep, clock())
    errors = (*errors, *_damaged_bins(trash))
    after = _measure(probe_storage, "after") if before is not None else None
    if gc is not None and gc.ran:
        gc, failed = await _probe_registry(client, policy, gc, canary, run_id)
        errors += failed
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


def _commit(trash_bin: BinWriter) -> tuple[str, ...]:
    """Write the bin's confirmed state; a failure is reported with the pass, not raised."""
    try:
        trash_bin.commit()
    except TrashError as exc:
        log.error("trash not written", run_id=trash_bin.contents.run_id, error=str(exc))
        return (f"trash: {exc}",)
    return ()


def _damaged_bins(trash: Trash) -> tuple[str, ...]:
    """Bins whose index cannot be read: their deletions may be uncollected or unrestorable."""
    problems = tuple(f"trash bin {b.run_id} is damaged: {b.problem}" for b in trash.damaged())
    for problem in problems:
        log.error("trash bin damaged", problem=problem)
    return problems


async def _verify(
    client: RegistryClient,
    policy: Policy,
    plan: Plan,
    when: str,
    progress: PhaseProgress | None = None,
) -> list[str]:
    if not policy.verify.enabled:
        return []
    found = await verify(client, plan, policy.verify.blobs, progress)
    problems = [f"{when}: {p}" for p in found]
    for problem in problems:
        log.error("verification failed", problem=problem)
    if not problems:
        log.info("verification passed", when=when)
    return problems


# -- garbage collection ---------------------------------------------------------------------


async def _collect_garbage(
    client: RegistryClient,
    policy: Policy,
    trash: Trash,
    gc_means: PassGc,
    now: datetime,
    progress: PhaseProgress | None = None,
    window: WriteWindow | None = None,
) -> tuple[GcResult | None, tuple[str, ...], probe.Canary | None]:
    """GC when deletions wait for it and the oldest is older than ``gc.delay``.

    Stopping a registry for nothing is downtime, and collecting too early ends the window
    in which ``retention restore`` can bring an image back. Returns the canary planted for
    the probe (``_probe_registry``), which runs after storage is measured.
    """
    if policy.gc.mode == "none":
        return None, (), None
    pending = trash.uncollected()
    why_not = _gc_deferred(pending, policy, now)
    if why_not is not None:
        log.info("gc skipped", mode=policy.gc.mode, reason=why_not)
        return GcResult(mode=policy.gc.mode, skipped=why_not), (), None
    canary = await _plant_canary(client, policy.gc.probe)
    if progress is not None:
        progress("gc", 0, 1)
    result, errors = await _collect_behind_gate(client, policy, gc_means, window)
    if progress is not None:
        progress("gc", 1, 1)
    if result.ran and result.error is None:
        unmarked = trash.mark_collected([b.run_id for b in pending])
        for problem in unmarked:
            log.error("trash not marked collected", problem=problem)
        errors = (*errors, *unmarked)
    return result, errors, canary if result.ran and result.error is None else None


async def _plant_canary(client: RegistryClient, repository: str) -> probe.Canary | None:
    """Before the GC window: a blob nothing references, which GC must sweep."""
    try:
        return await probe.plant_canary(client, repository)
    except RegistryError as exc:
        log.warning("probe canary not planted", repository=repository, error=str(exc))
        return None


async def _probe_registry(
    client: RegistryClient,
    policy: Policy,
    gc: GcResult,
    canary: probe.Canary | None,
    run_id: str,
) -> tuple[GcResult, tuple[str, ...]]:
    """After GC and the restart: the swept canary must be gone and a test push must come
    back whole. A failure fails the pass, because the registry would now accept broken
    pushes. Runs after the write window (it pushes) and after storage is measured (its
    few KB would otherwise count against what GC freed).
    """
    repository = policy.gc.probe
    tag = probe.probe_tag(run_id)
    try:
        if canary is not None:
            await probe.check_canary(client, canary)
        digest = await probe.push_pull_delete(client, repository, tag)
    except ProbeFailed as exc:
        log.error("probe failed", repository=repository, tag=tag, error=str(exc))
        return replace(gc, probe=f"failed: {exc}"), (f"probe: {exc}",)
    log.info("probe passed", repository=repository, tag=tag, digest=digest)
    return replace(gc, probe="passed"), ()


async def _collect_behind_gate(
    client: RegistryClient, policy: Policy, gc_means: PassGc, window: WriteWindow | None
) -> tuple[GcResult, tuple[str, ...]]:
    """With ``gate:``, GC only inside the gate's closed window; without it, as configured.

    The window closes only once writes have drained, stays closed through GC and until the
    registry answers again, then opens. A drain that times out skips GC: the deletions
    stay pending for the next pass, and the pass fails so that someone looks at the
    upload that held it up. A pass without the window (``retention run``, ``apply``)
    skips GC by design, not as a failure: only ``retention serve`` runs the gate.
    """
    if policy.gate is None:
        return await _run_collector(client, policy, gc_means)
    if window is None:
        reason = "gate: is configured and only `retention serve` runs the write gate"
        log.warning("gc skipped", mode=policy.gc.mode, reason=reason)
        return GcResult(policy.gc.mode, skipped=reason), ()
    drain = policy.gate.drain_timeout
    log.info("write window closing", drain_timeout=format_duration(drain))
    if not await window.close(drain.total_seconds()):
        reason = (
            f"the write gate did not drain within gate.drain_timeout={format_duration(drain)}: "
            "writes or upload sessions were still in progress"
        )
        log.error("gc skipped", mode=policy.gc.mode, reason=reason)
        return GcResult(policy.gc.mode, skipped=reason), (f"gc: {reason}",)
    log.info("write window closed")
    try:
        return await _collect_then_wait(client, policy, gc_means)
    finally:
        await window.open()
        log.info("write window opened")


async def _collect_then_wait(
    client: RegistryClient, policy: Policy, gc_means: PassGc
) -> tuple[GcResult, tuple[str, ...]]:
    """GC, then wait for ``/v2/`` so writes resume only against a registry that answers."""
    result, errors = await _run_collector(client, policy, gc_means)
    try:
        await _wait_until_up(client, policy.gc.ready_timeout.total_seconds())
    except GarbageCollectionError as exc:
        log.error("registry silent after gc", error=str(exc))
        return result, (*errors, f"gc: {exc}")
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
    client: RegistryClient, policy: Policy, gc_means: PassGc
) -> tuple[GcResult, tuple[str, ...]]:
    ready = _ready_check(client, asyncio.get_running_loop())
    log.info("gc started", mode=policy.gc.mode)
    started = time.monotonic()
    try:
        result = await asyncio.to_thread(lambda: gc_means.collector(ready).collect())
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


def _ready_check(client: RegistryClient, loop: asyncio.AbstractEventLoop) -> ReadyCheck:
    """A blocking check for GC threads, answered by the pass's own client on its loop."""

    def wait(timeout_s: float) -> None:
        asyncio.run_coroutine_threadsafe(_wait_until_up(client, timeout_s), loop).result()

    return wait


async def _wait_until_up(client: RegistryClient, timeout_s: float) -> None:
    try:
        await client.wait_until_up(timeout_s)
    except RegistryError as exc:
        raise GarbageCollectionError(
            f"the registry did not answer within {timeout_s:.0f}s after GC: {exc}"
        ) from exc


# -- storage --------------------------------------------------------------------------------


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
