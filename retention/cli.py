"""The ``retention`` command: the only place that prints reports and exits the process.

Exit codes: 0 success, 1 a runtime failure (registry, a repository, deletion, GC), 2 a usage
or policy-file error. Reports go to stdout (or ``--output``), progress and logs to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

import click

from retention import logs
from retention.clock import utc_now
from retention.config.load import LoadedPolicy, load_policy_with_warnings
from retention.core import plan_file
from retention.core import render as report
from retention.core.model import Outcome, Plan, RunResult
from retention.core.policy import Policy, parse_duration
from retention.errors import ConfigError, PassInterrupted, PlanFileError, RetentionError
from retention.runner import Scope, apply_plan, run_pass
from retention.scan.storage_reader import storage_root_problem
from retention.state import atomic

if TYPE_CHECKING:
    from retention.apply.restore import Restored
    from retention.apply.trash import Trash, TrashBin, TrashEntry

T = TypeVar("T")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    envvar="RETENTION_CONFIG",
    help="Policy file (YAML). Env: RETENTION_CONFIG.",
)


def _deprecated_format(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    """``--format`` was the format before ``-o/--output`` (kubectl's spelling) took over."""
    if value is not None:
        click.echo("warning: --format is deprecated; use -o/--output FORMAT", err=True)
        ctx.meta["retention.format"] = value


def format_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``-o/--output FORMAT`` (kubectl's), and ``--format`` kept as a deprecated alias.

    ``--output`` used to take a file name: ``--output plan.json`` is now refused as an
    invalid format instead of silently writing the table to a file named ``json``.
    """
    command = click.option(
        "--format",
        "legacy_format",
        type=click.Choice(report.FORMATS),
        hidden=True,
        expose_value=False,
        callback=_deprecated_format,
        help="Deprecated: use -o/--output.",
    )(command)
    return click.option(
        "-o",
        "--output",
        "fmt",
        type=click.Choice(report.FORMATS),
        default=None,
        help="Report format: table (default), wide (kind, size, pushed), json, markdown.",
    )(command)


output_option = click.option(
    "-f",
    "--output-file",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report to this file (atomically) instead of stdout.",
)


def scope_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--repository REGEX``, ``--rule NAME`` and ``--only delete`` for plan and run."""
    command = click.option(
        "--only",
        type=click.Choice(["delete"]),
        help="Show only the tags to delete (table, wide, markdown; JSON stays whole).",
    )(command)
    command = click.option(
        "--rule",
        help="Delete only what this rule decides; every other tag is kept this pass.",
    )(command)
    return click.option(
        "--repository",
        "repository_pattern",
        help="Scan, plan and delete only repositories whose name fully matches this regex.",
    )(command)


def _scope(policy: Policy, repository_pattern: str | None, rule: str | None) -> Scope:
    """The filters, checked against the policy: a typo is a usage error (exit 2)."""
    try:
        pattern = re.compile(repository_pattern) if repository_pattern is not None else None
    except re.error as exc:
        _fail(f"--repository {repository_pattern!r} is not a valid regex: {exc}", EXIT_USAGE)
    names = [r.name for r in policy.rules]
    if rule is not None and rule not in names:
        _fail(f"--rule {rule!r}: the policy has no such rule (it has {', '.join(names)})", 2)
    return Scope(pattern, rule)


def _format(fmt: str | None) -> str:
    """-o wins; else the deprecated --format; else the table."""
    legacy = click.get_current_context().meta.get("retention.format")
    return fmt or legacy or "table"


@click.group(
    context_settings={"auto_envvar_prefix": "RETENTION", "help_option_names": ["-h", "--help"]}
)
@click.version_option(package_name="retention")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default="auto",
    show_default=True,
    help="JSON lines off a terminal, readable key=value on one.",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info"
)
def main(log_format: logs.LogFormat, log_level: str) -> None:
    """Declarative retention policies for Docker/OCI registries."""
    logs.configure(log_format, log_level)


@main.command()
@config_option
def check(config_path: Path) -> None:
    """Validate the policy file; contacts nothing (it does look for the GC programs).

    A gc command whose program is not on this host, or a kubernetes in_use source without
    the client installed, is a warning, not an error: the file may be checked here for a
    pass that runs elsewhere (a container, a sidecar).
    """
    from retention.gc.command import missing_programs

    loaded = _load(config_path)
    policy = loaded.policy
    missing = missing_programs(policy.gc) if policy.gc.mode == "command" else []
    here = [f"{m} on this host" for m in missing] + _missing_kubernetes_client(policy)
    for warning in (*loaded.warnings, *here):
        click.echo(f"warning: {warning}", err=True)
    scan_note = _storage_scan_note(policy)
    if scan_note is not None:
        click.echo(scan_note, err=True)
    untagged_problem = _untagged_storage_problem(policy)
    if untagged_problem is not None:
        _fail(untagged_problem, EXIT_USAGE)
    click.echo(
        f"{config_path}: ok ({len(policy.rules)} rules, {len(policy.protect)} protected patterns, "
        f"gc mode {policy.gc.mode})"
    )


def _missing_kubernetes_client(policy: Policy) -> list[str]:
    """A warning per kubernetes in_use source when the optional client is not installed."""
    from retention.scan.in_use import KUBERNETES_MISSING, kubernetes_client_installed

    sources = [s for s in policy.in_use if s.kubernetes is not None]
    if not sources or kubernetes_client_installed():
        return []
    return [f"in_use {s.label}: {KUBERNETES_MISSING}" for s in sources]


def _untagged_storage_problem(policy: Policy) -> str | None:
    """``untagged:`` lists manifests from storage.path: refused when this host cannot read it.

    A pass would still run (each covered repository fails closed, deleting nothing), so
    this is said where the operator sets the policy up.
    """
    if policy.untagged is None or policy.storage.path is None:
        return None
    problem = storage_root_problem(policy.storage.path)
    if problem is None:
        return None
    return f"untagged: cannot list manifests no tag points at: {problem}"


def _storage_scan_note(policy: Policy) -> str | None:
    """Whether ``scan: storage`` can read ``storage.path`` here; reads the disk, no network.

    A note when the API scan could be replaced (the storage is here and readable), a
    warning when ``scan: storage`` is chosen but the pass would fail to read it.
    """
    path = policy.storage.path
    if path is None or policy.gc.mode == "docker":
        return None
    problem = storage_root_problem(path)
    if policy.scan == "storage":
        return None if problem is None else f"warning: scan: storage cannot read it: {problem}"
    if problem is not None:
        return None
    return (
        f"note: {path} holds the registry's storage, so scan: storage can read tags and "
        "manifests from it instead of the API (much faster; deletions still use the API)"
    )


@main.command()
@config_option
@format_option
@output_option
@scope_options
def plan(
    config_path: Path,
    fmt: str | None,
    output: Path | None,
    repository_pattern: str | None,
    rule: str | None,
    only: str | None,
) -> None:
    """Show what a pass would delete and why; deletes nothing.

    \b
    Examples:
      retention plan -c policies.yml
      retention plan -c policies.yml -o wide
      retention plan -c policies.yml -o json -f plan.json   # then: retention apply plan.json
    """
    filters = (repository_pattern, rule, only)
    _one_pass(config_path, _format(fmt), output, filters, dry_run=True, force=False, yes=True)


@main.command()
@config_option
@click.option("--dry-run", is_flag=True, help="Stop after the plan: the same report as `plan`.")
@click.option(
    "--force", is_flag=True, help="Apply even when the plan exceeds safety.max_deletions."
)
@click.option(
    "-y", "--yes", is_flag=True, help="Do not ask for confirmation at a terminal before deleting."
)
@format_option
@output_option
@scope_options
def run(
    config_path: Path,
    dry_run: bool,
    force: bool,
    yes: bool,
    fmt: str | None,
    output: Path | None,
    repository_pattern: str | None,
    rule: str | None,
    only: str | None,
) -> None:
    """One full pass: plan, delete by digest, garbage-collect, measure storage.

    At a terminal (stdin a TTY) it asks before deleting anything, unless --yes; from cron,
    a pipeline or the daemon it never asks.

    \b
    Examples:
      retention run -c policies.yml --dry-run     # the same report as `plan`
      retention run -c policies.yml --yes -o json -f report.json
      retention run -c policies.yml --repository 'team-a/.*' --rule nightly
    """
    filters = (repository_pattern, rule, only)
    _one_pass(config_path, _format(fmt), output, filters, dry_run=dry_run, force=force, yes=yes)


def _one_pass(
    config_path: Path,
    fmt: str,
    output: Path | None,
    filters: tuple[str | None, str | None, str | None],
    *,
    dry_run: bool,
    force: bool,
    yes: bool,
) -> NoReturn:
    """`plan` is `run --dry-run`: one code path, so the preview cannot drift from the run."""
    policy = _load(config_path).policy
    repository_pattern, rule, only = filters
    scope = _scope(policy, repository_pattern, rule)
    with Progress() as progress:
        confirm = None if yes or not _stdin_is_a_terminal() else _confirmer(progress)
        pass_ = run_pass(
            policy,
            dry_run=dry_run,
            force=force,
            progress=progress.update,
            confirm=confirm,
            scope=scope,
        )
        result = _run(pass_)
    _emit(result, fmt, output, only_delete=only == "delete")
    _keep_report(policy, result)
    sys.exit(_exit_code(result))


def _stdin_is_a_terminal() -> bool:
    return bool(getattr(sys.stdin, "isatty", lambda: False)())


def _confirmer(progress: Progress) -> Callable[[Plan], bool]:
    """Ask once, after the plan and before the first deletion."""

    def confirm(plan: Plan) -> bool:
        progress.clear()
        summary = plan.summary
        manifests = summary.manifests_to_delete
        question = (
            f"delete {manifests} {_plural(manifests, 'manifest')} "
            f"({summary.tags_to_delete} {_plural(summary.tags_to_delete, 'tag')}) "
            f"from {plan.registry}?"
        )
        return click.confirm(question, default=False, err=True)

    return confirm


@main.command()
@config_option
@click.option("--run-now", is_flag=True, help="Also run one pass at start.")
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds SIGTERM waits for a running pass (its GC may have the registry stopped).",
)
def serve(config_path: Path, run_now: bool, stop_timeout: float) -> None:
    """Run passes on the policy's schedule, with /healthz, /readyz, /metrics, /report, /run.

    SIGTERM or SIGINT stop (a running pass may finish first), SIGHUP reloads the file.
    """
    from retention.service import daemon

    loaded = _load(config_path)
    try:
        finished = daemon.serve(
            config_path,
            loaded.policy,
            warnings=loaded.warnings,
            run_now=run_now,
            stop_timeout_s=stop_timeout,
        )
    except ConfigError as exc:  # a notifications secret that cannot be read
        _fail(str(exc), EXIT_USAGE)
    except RetentionError as exc:
        _fail(str(exc))
    if not finished:
        # The pass's thread would hold up interpreter exit for as long as it runs.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_OK)
    sys.exit(EXIT_OK)


@main.command()
@click.argument("plan_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@config_option
@click.option(
    "--force", is_flag=True, help="Apply even when the plan exceeds safety.max_deletions."
)
@format_option
@output_option
def apply(
    plan_file: Path, config_path: Path, force: bool, fmt: str | None, output: Path | None
) -> None:
    """Carry out a reviewed plan (from `plan -o json`): only what it lists.

    \b
    Examples:
      retention plan -c policies.yml -o json -f plan.json
      retention apply plan.json -c policies.yml
    """
    fmt = _format(fmt)
    policy = _load(config_path).policy
    plan = _read_plan(plan_file)
    with Progress() as progress:
        result = _run(apply_plan(policy, plan, force=force, progress=progress.update))
    _emit(result, fmt, output)
    _keep_report(policy, result)
    sys.exit(_exit_code(result))


@main.command("restore")
@click.argument("run_id")
@config_option
@click.option("--repository", help="Only this repository.")
@click.option("--tag", help="Only this tag (with its index children and signatures).")
@click.option("--force", is_flag=True, help="Try even after GC collected the run.")
def restore_command(
    run_id: str, config_path: Path, repository: str | None, tag: str | None, force: bool
) -> None:
    """Push manifests a pass deleted back from the trash, until GC removes their blobs.

    Restored tags are then held: every pass keeps them for trash.hold_restored (default
    7d), or until `retention trash release`.
    """
    from retention.apply import restore
    from retention.apply.trash import Trash
    from retention.state.holds import HoldStore
    from retention.state.lock import exclusive

    policy = _load(config_path).policy
    trash = Trash(policy.state_dir)
    _, entries = _guard(
        lambda: restore.select(trash, run_id, repository=repository, tag=tag, force=force)
    )
    # Under the pass lock: a pass must not plan between the push and the hold.
    with _guard(lambda: exclusive(policy.state_dir)):
        results = _run(_restore(policy, trash, run_id, entries))
        holds = HoldStore(policy.state_dir)
        hold_for = policy.trash.hold_restored
        added = _guard(lambda: restore.record(trash, holds, run_id, results, utc_now(), hold_for))
    for item in results:
        state = f"failed: {item.error}" if item.error else "restored"
        click.echo(f"{item.repository}: {', '.join(item.references)} ({item.digest}) {state}")
    if added:
        until = report.timestamp(added[0].until)
        click.echo(
            f"held until {until} (trash.hold_restored): {len(added)} "
            f"{_plural(len(added), 'tag')}; `retention trash release {run_id}` ends it sooner"
        )
    sys.exit(EXIT_FAILURE if any(item.error for item in results) else EXIT_OK)


@main.group()
def trash() -> None:
    """What past passes deleted, and whether it can still be restored."""


@trash.command("list")
@config_option
def trash_list(config_path: Path) -> None:
    """List trash bins: run id, when, what the registry confirmed deleted, restorable or not.

    A damaged bin is listed with its problem, and makes the exit code 1.
    """
    from retention.apply.trash import Trash

    policy = _load(config_path).policy
    trash = Trash(policy.state_dir)
    rows = [("RUN", "DELETED AT", "MANIFESTS", "TAGS", "RESTORED", "STATE")]
    for item in trash.bins():
        tags = sum(len(e.tags) for e in item.entries)
        stamp = report.timestamp(item.deleted_at)
        counts = (str(len(item.entries)), str(tags), str(len(item.restored)))
        rows.append((item.run_id, stamp, *counts, _bin_state(item)))
    damaged = trash.damaged()
    rows += [(b.run_id, "?", "?", "?", "?", f"damaged: {b.problem}") for b in damaged]
    _table(rows)
    _list_holds(policy)
    sys.exit(EXIT_FAILURE if damaged else EXIT_OK)


def _list_holds(policy: Policy) -> None:
    """Restored tags every pass keeps for now, under the bins."""
    from retention.state.holds import HoldStore

    holds = _guard(lambda: HoldStore(policy.state_dir).active(utc_now()))
    if holds:
        click.echo("")
        rows = [("HELD TAG", "RESTORED FROM", "UNTIL")]
        for hold in holds:
            until = report.timestamp(hold.until)
            rows.append((f"{hold.repository}:{hold.tag}", hold.run_id, until))
        _table(rows)


@trash.command("release")
@click.argument("run_id", required=False)
@config_option
@click.option("--repository", help="Only this repository.")
@click.option("--tag", help="Only this tag.")
def trash_release(
    run_id: str | None, config_path: Path, repository: str | None, tag: str | None
) -> None:
    """End the hold on restored tags (all of them, or those of RUN_ID, --repository, --tag).

    The next pass then decides them by the rules again.

    \b
    Examples:
      retention trash release 20261127T030000Z-3fa9c1 -c policies.yml
      retention trash release -c policies.yml --repository app --tag v1.4.0
    """
    from retention.state.holds import HoldStore

    policy = _load(config_path).policy
    store = HoldStore(policy.state_dir)
    released = _guard(
        lambda: store.release(utc_now(), run_id=run_id, repository=repository, tag=tag)
    )
    for hold in released:
        click.echo(f"released {hold.repository}:{hold.tag} (restored from {hold.run_id})")
    if not released:
        click.echo("no hold matched", err=True)


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# -- retention audit ------------------------------------------------------------------------


def _moment(value: str | None, option: str) -> datetime | None:
    """``2026-01-31``, ``2026-01-31T12:00:00Z`` or a duration ago (``7d``); UTC if naive."""
    if value is None:
        return None
    try:
        return utc_now() - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        _fail(f"{option} {value!r} is not a date (2026-01-31), a time or a duration (7d)", 2)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@main.command("audit")
@config_option
@click.option("--repository", help="Only this repository.")
@click.option("--tag", help="Only records that name this tag.")
@click.option("--digest", help="Only this digest (a prefix such as sha256:3f2a is enough).")
@click.option("--since", help="From this date, time or duration ago (2026-01-31, 7d).")
@click.option("--until", help="Before this date, time or duration ago.")
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def audit_command(
    config_path: Path,
    repository: str | None,
    tag: str | None,
    digest: str | None,
    since: str | None,
    until: str | None,
    fmt: str,
) -> None:
    """What was deleted and restored, when and why: state_dir/audit.jsonl, rotated files too.

    Examples: retention audit -c policies.yml --repository app --since 7d
    """
    from retention.state.audit import AuditLog, AuditQuery

    policy = _load(config_path).policy
    query = AuditQuery(
        repository, tag, digest, _moment(since, "--since"), _moment(until, "--until")
    )
    log = AuditLog(policy.state_dir, policy.audit.max_bytes, policy.audit.keep)
    records = _guard(lambda: list(log.read(query)))
    if fmt == "json":
        for record in records:
            click.echo(record.to_json())
        return
    rows = [("TIME", "ACTION", "RUN", "REPOSITORY", "TAGS", "DIGEST", "RULE", "REASON")]
    for r in records:
        stamp = report.timestamp(r.time)
        tags = ",".join(r.tags) or "-"
        short = report.short_digest(r.digest)
        rows.append((stamp, r.action, r.run_id, r.repository, tags, short, r.rule or "-", r.reason))
    _table(rows)
    click.echo(f"{len(records)} {_plural(len(records), 'record')}", err=True)


def _bin_state(item: TrashBin) -> str:
    state = "collected (blobs may be gone)" if item.collected else "restorable"
    if item.unconfirmed:
        count = len(item.unconfirmed)
        state += f"; {count} more {_plural(count, 'deletion')} unconfirmed (pass interrupted)"
    return state


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else f"{noun}s"


@main.command()
@format_option
def demo(fmt: str | None) -> None:
    """Run a full pass against a throwaway local registry seeded with demo images."""
    fmt = _format(fmt)
    from retention import demo as demo_registry

    with (
        demo_registry.workspace() as workdir,
        demo_registry.throwaway_registry(workdir) as registry,
    ):
        pushed = _run(demo_registry.seed(registry.url, utc_now()))
        policy_path = demo_registry.write_policy(workdir, registry)
        click.echo(f"demo registry {registry.url}: pushed {pushed} tags", err=True)
        click.echo(f"policy ({policy_path}):\n{policy_path.read_text()}", err=True)
        policy = _load(policy_path).policy
        result = _run(run_pass(policy))
    _emit(result, fmt, None)
    sys.exit(_exit_code(result))


# -- helpers --------------------------------------------------------------------------------


def _load(path: Path) -> LoadedPolicy:
    try:
        return load_policy_with_warnings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(EXIT_USAGE)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run async work; expected failures become one line on stderr (see ``_fail_for``)."""
    try:
        return asyncio.run(_boxed(coroutine)).value
    except PassInterrupted as exc:
        _fail(str(exc), EXIT_INTERRUPTED)
    except RetentionError as exc:
        _fail_for(exc)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)


class _Box(Generic[T]):
    """A coroutine's result with a constant repr, for ``asyncio.run`` on Python 3.11.

    ``asyncio.run`` installs a SIGINT handler naming its main task, and on the way out
    ``signal.getsignal`` tries to turn that handler into a ``signal.Handlers`` member; the
    failure's message is the handler's repr, which holds the task's, which holds its
    result's: for a pass, the repr of the whole plan, built twice and dropped (0.13 s each
    at 10,000 tags, measured: a tenth of a storage plan).
    """

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<result>"


async def _boxed(coroutine: Coroutine[Any, Any, T]) -> _Box[T]:
    return _Box(await coroutine)


def _guard(action: Callable[[], T]) -> T:
    """Run sync work whose expected failures become one line (see ``_fail_for``)."""
    try:
        return action()
    except RetentionError as exc:
        _fail_for(exc)


def _fail_for(exc: RetentionError) -> NoReturn:
    """Exit 2 for configuration found wrong during a pass (a password file or certificate
    the policy names is missing), as for the policy file itself; exit 1 for the rest."""
    if isinstance(exc, ConfigError):
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(EXIT_USAGE)
    _fail(str(exc))


def _read_plan(path: Path) -> Plan:
    """A saved JSON plan; anything else is a usage error (exit 2)."""
    try:
        return plan_file.plan_from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, PlanFileError) as exc:
        _fail(f"{path}: {exc}", EXIT_USAGE)


async def _restore(
    policy: Policy, trash: Trash, run_id: str, entries: list[TrashEntry]
) -> list[Restored]:
    from retention.apply.audit import AuditWriter
    from retention.apply.restore import restore
    from retention.registry import RegistryClient

    async with RegistryClient(policy.registry) as client:
        audit = AuditWriter.for_policy(policy, run_id, client.url, utc_now)
        return await restore(client, trash, run_id, entries, audit)


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _emit(subject: RunResult, fmt: str, output: Path | None, only_delete: bool = False) -> None:
    """The report on stdout or in ``output``, written in pieces (JSON one repository at a
    time), so that a large one is never whole in memory."""
    pieces = report.render_pieces(subject, fmt, only_delete=only_delete)
    if output is None:
        for piece in pieces:
            click.echo(piece, nl=False)
        return
    try:
        atomic.write_text(output, pieces)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror}")
    click.echo(f"report written to {output}", err=True)


def _keep_report(policy: Policy, result: RunResult) -> None:
    """A run's JSON report in state_dir/reports, as the daemon keeps its passes' (not plans).

    Failing to keep it is a warning: the report was already printed.
    """
    if result.dry_run:
        return
    from retention.state.report_store import ReportStore

    store = ReportStore(policy.state_dir / "reports", policy.reports.keep)
    try:
        store.write(report.json_pieces(result), "success" if result.ok else "failure", utc_now())
        store.prune()
    except OSError as exc:
        click.echo(f"warning: report not kept in {store.directory}: {exc.strerror}", err=True)


@main.command()
@config_option
def reports(config_path: Path) -> None:
    """List past passes (the daemon's and `run`/`apply`'s): when, outcome, run, deletions.

    \b
    Examples:
      retention reports -c policies.yml
      jq .summary "$(retention reports -c policies.yml | tail -1 | awk '{print $NF}')"
    """
    from retention.state.report_store import ReportStore

    policy = _load(config_path).policy
    store = ReportStore(policy.state_dir / "reports", policy.reports.keep)
    rows = [("FINISHED", "OUTCOME", "RUN", "DELETED", "FREED", "FILE")]
    for stored in store.stored():
        try:
            document = json.loads(stored.path.read_text())
        except (OSError, ValueError) as exc:
            click.echo(f"warning: {stored.path}: not readable: {exc}", err=True)
            continue
        deleted, freed = _report_facts(document)
        stamp = report.timestamp(stored.finished_at)
        run_id = str(document.get("run_id") or "-")
        rows.append((stamp, stored.outcome, run_id, deleted, freed, str(stored.path)))
    if len(rows) == 1:
        click.echo(f"no reports in {store.directory}", err=True)
        return
    _table(rows)


def _report_facts(document: dict[str, Any]) -> tuple[str, str]:
    """Manifests deleted and bytes freed, as the report says (``-`` where it does not)."""
    applied = document.get("applied")
    deleted = "-"
    if isinstance(applied, list):
        deleted = str(sum(1 for a in applied if a.get("outcome") == "deleted"))
    freed = (document.get("storage") or {}).get("freed_bytes")
    return deleted, report.human_bytes(freed) if isinstance(freed, int) else "-"


def _exit_code(result: RunResult) -> int:
    """1 when anything failed; each failure is also said on stderr, one line each."""
    for repository in result.plan.repositories:
        if repository.error:
            click.echo(f"error: {repository.name}: {repository.error}", err=True)
        if repository.held:
            level = "warning" if result.dry_run else "error"
            click.echo(f"{level}: {repository.name}: HELD: {repository.held}", err=True)
    if result.dry_run and result.plan.refused:
        click.echo(f"warning: run will refuse this plan: {result.plan.refused}", err=True)
    for applied in result.applied:
        if applied.outcome is Outcome.FAILED:
            click.echo(f"error: {applied.repository}@{applied.digest}: {applied.detail}", err=True)
    for error in result.errors:
        click.echo(f"error: {error}", err=True)
    return EXIT_OK if result.ok else EXIT_FAILURE


class Progress:
    """One progress line on stderr, ``phase: done/total NN%``, only at a terminal.

    While it is active, ``sys.stderr`` is a stream that erases the line before anything
    else is written there (log lines, ``error:`` lines) and draws it again after, so the
    two never run together. Redrawn at most every 0.1 s within a phase; the phase name is
    bold unless ``NO_COLOR`` is set; nothing at all when ``TERM=dumb``.
    """

    REDRAW_S = 0.1

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream or sys.stderr
        tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._active = tty and os.environ.get("TERM") != "dumb"
        self._color = not logs.no_color()
        self._line = ""
        self._shown = False
        self._phase = ""
        self._drawn_at = 0.0
        self._saved: Any = None

    def __enter__(self) -> Progress:
        if self._active:
            self._saved, sys.stderr = sys.stderr, _AroundProgress(self._stream, self)
        return self

    def __exit__(self, *_: object) -> None:
        self.clear()
        self._line = ""
        if self._saved is not None:
            sys.stderr, self._saved = self._saved, None

    def update(self, phase: str, done: int, total: int) -> None:
        if not self._active:
            return
        now = time.monotonic()
        recent = now - self._drawn_at < self.REDRAW_S
        if phase == self._phase and done < total and recent:
            return
        self._phase, self._drawn_at = phase, now
        share = f" {100 * done // total}%" if total else ""
        name = f"\033[1m{phase}\033[0m" if self._color else phase
        self._line = f"{name}: {done}/{total}{share}"
        self.resume()

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\033[K")
            self._stream.flush()
            self._shown = False

    def resume(self) -> None:
        if self._line:
            self._stream.write(f"\r\033[K{self._line}")
            self._stream.flush()
            self._shown = True


class _AroundProgress:
    """stderr while a progress line is shown: erase it, write, draw it again after a line."""

    def __init__(self, stream: Any, progress: Progress) -> None:
        self._stream = stream
        self._progress = progress

    def write(self, text: str) -> int:
        self._progress.clear()
        written: int = self._stream.write(text)
        if text.endswith("\n"):
            self._progress.resume()
        return written

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
