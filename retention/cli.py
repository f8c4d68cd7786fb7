"""The ``retention`` command: the only place that prints reports and exits the process.

Exit codes: 0 success, 1 a runtime failure (registry, a repository, deletion, GC), 2 a usage
or policy-file error. Reports go to stdout (or ``--output``), progress and logs to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from retention import logs
from retention.config.load import LoadedPolicy, load_policy_with_warnings
from retention.core import render as report
from retention.core.model import Outcome, Plan, RunResult
from retention.core.policy import Policy
from retention.errors import ConfigError, RetentionError
from retention.runner import apply_plan, run_pass
from retention.scan.storage_reader import storage_root_problem
from retention.state import atomic

if TYPE_CHECKING:
    from retention.apply.restore import Restored
    from retention.apply.trash import Trash, TrashEntry

T = TypeVar("T")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    envvar="RETENTION_CONFIG",
    help="Policy file (YAML). Env: RETENTION_CONFIG.",
)
format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(report.FORMATS),
    default="table",
    show_default=True,
    help="Report format.",
)
output_option = click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report to this file (atomically) instead of stdout.",
)


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
    """Validate the policy file; contacts nothing."""
    loaded = _load(config_path)
    policy = loaded.policy
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}", err=True)
    scan_note = _storage_scan_note(policy)
    if scan_note is not None:
        click.echo(scan_note, err=True)
    click.echo(
        f"{config_path}: ok ({len(policy.rules)} rules, {len(policy.protect)} protected patterns, "
        f"gc mode {policy.gc.mode})"
    )


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
def plan(config_path: Path, fmt: str, output: Path | None) -> None:
    """Show what a pass would delete and why; deletes nothing."""
    _one_pass(config_path, fmt, output, dry_run=True, force=False)


@main.command()
@config_option
@click.option("--dry-run", is_flag=True, help="Stop after the plan: the same report as `plan`.")
@click.option(
    "--force", is_flag=True, help="Apply even when the plan exceeds safety.max_deletions."
)
@format_option
@output_option
def run(config_path: Path, dry_run: bool, force: bool, fmt: str, output: Path | None) -> None:
    """One full pass: plan, delete by digest, garbage-collect, measure storage."""
    _one_pass(config_path, fmt, output, dry_run=dry_run, force=force)


def _one_pass(
    config_path: Path, fmt: str, output: Path | None, *, dry_run: bool, force: bool
) -> NoReturn:
    """`plan` is `run --dry-run`: one code path, so the preview cannot drift from the run."""
    policy = _load(config_path).policy
    with Progress() as progress:
        result = _run(run_pass(policy, dry_run=dry_run, force=force, progress=progress.update))
    _emit(result, fmt, output)
    sys.exit(_exit_code(result))


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
def apply(plan_file: Path, config_path: Path, force: bool, fmt: str, output: Path | None) -> None:
    """Carry out a reviewed plan (from `plan --format json`): only what it lists."""
    policy = _load(config_path).policy
    plan = _read_plan(plan_file)
    result = _run(apply_plan(policy, plan, force=force))
    _emit(result, fmt, output)
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
    """Push manifests a pass deleted back from the trash, until GC removes their blobs."""
    from retention.apply import restore
    from retention.apply.trash import Trash

    policy = _load(config_path).policy
    trash = Trash(policy.state_dir)
    _, entries = _guard(
        lambda: restore.select(trash, run_id, repository=repository, tag=tag, force=force)
    )
    results = _run(_restore(policy, trash, run_id, entries))
    for item in results:
        state = f"failed: {item.error}" if item.error else "restored"
        click.echo(f"{item.repository}: {', '.join(item.references)} ({item.digest}) {state}")
    sys.exit(EXIT_FAILURE if any(item.error for item in results) else EXIT_OK)


@main.group()
def trash() -> None:
    """What past passes deleted, and whether it can still be restored."""


@trash.command("list")
@config_option
def trash_list(config_path: Path) -> None:
    """List trash bins: run id, when, how many manifests, restorable or collected."""
    from retention.apply.trash import Trash

    policy = _load(config_path).policy
    bins = Trash(policy.state_dir).bins()
    rows = [("RUN", "DELETED AT", "MANIFESTS", "TAGS", "STATE")]
    for item in bins:
        tags = sum(len(e.tags) for e in item.entries)
        state = "collected (blobs may be gone)" if item.collected else "restorable"
        stamp = report.timestamp(item.deleted_at)
        rows.append((item.run_id, stamp, str(len(item.entries)), str(tags), state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@main.command()
@format_option
def demo(fmt: str) -> None:
    """Run a full pass against a throwaway local registry seeded with demo images."""
    from retention import demo as demo_registry

    with (
        demo_registry.workspace() as workdir,
        demo_registry.throwaway_registry(workdir) as registry,
    ):
        pushed = _run(demo_registry.seed(registry.url, demo_registry.now_utc()))
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
    """Run async work; expected failures become one line on stderr and exit 1."""
    try:
        return asyncio.run(coroutine)
    except RetentionError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted")


def _guard(action: Callable[[], T]) -> T:
    """Run sync work whose expected failures become one line and exit 1."""
    try:
        return action()
    except RetentionError as exc:
        _fail(str(exc))


def _read_plan(path: Path) -> Plan:
    """A saved JSON plan; anything else is a usage error (exit 2)."""
    try:
        return report.plan_from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, report.PlanFileError) as exc:
        _fail(f"{path}: {exc}", EXIT_USAGE)


async def _restore(
    policy: Policy, trash: Trash, run_id: str, entries: list[TrashEntry]
) -> list[Restored]:
    from retention.apply.restore import restore
    from retention.registry import RegistryClient

    async with RegistryClient(policy.registry) as client:
        return await restore(client, trash, run_id, entries)


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _emit(subject: RunResult, fmt: str, output: Path | None) -> None:
    text = report.render(subject, fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        atomic.write_text(output, text)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror}")
    click.echo(f"report written to {output}", err=True)


def _exit_code(result: RunResult) -> int:
    """1 when anything failed; each failure is also said on stderr, one line each."""
    for repository in result.plan.repositories:
        if repository.error:
            click.echo(f"error: {repository.name}: {repository.error}", err=True)
    for applied in result.applied:
        if applied.outcome is Outcome.FAILED:
            click.echo(f"error: {applied.repository}@{applied.digest}: {applied.detail}", err=True)
    for error in result.errors:
        click.echo(f"error: {error}", err=True)
    return EXIT_OK if result.ok else EXIT_FAILURE


class Progress:
    """A one-line progress counter on stderr, only when stderr is a terminal."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream or sys.stderr
        self._active = bool(getattr(self._stream, "isatty", lambda: False)())
        self._shown = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        if self._shown:
            self._stream.write("\r\033[K")
            self._stream.flush()

    def update(self, done: int, total: int) -> None:
        if not self._active:
            return
        share = f" {100 * done // total}%" if total else ""
        self._stream.write(f"\rscanning: {done}/{total} tags{share}")
        self._stream.flush()
        self._shown = True
