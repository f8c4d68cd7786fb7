"""Render a plan or a run's result as JSON, a terminal table or Markdown.

Pure: returns strings, writes nothing. The JSON shape is a public interface (scripts and
``retention apply`` read it); table and Markdown show the same decisions for a person.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from retention.core.model import (
    Action,
    DeletionResult,
    Plan,
    RepositoryPlan,
    RunResult,
    Summary,
    TagDecision,
)

FORMATS = ("table", "wide", "json", "markdown")
UNTAGGED_CELL = "<untagged>"
PLATFORM_CELL = "└ <platform>"


def render(subject: Plan | RunResult, fmt: str, *, only_delete: bool = False) -> str:
    """The report in ``fmt``; a Plan alone is reported as a dry run.

    ``only_delete`` leaves kept tags out of the table and Markdown rows (not out of the
    counts); JSON is a public interface read by ``apply`` and always whole.
    """
    result = subject if isinstance(subject, RunResult) else RunResult(subject, dry_run=True)
    renderers: dict[str, Callable[[RunResult], str]] = {
        "json": render_json,
        "table": lambda r: render_table(r, only_delete=only_delete),
        "wide": lambda r: render_table(r, wide=True, only_delete=only_delete),
        "markdown": lambda r: render_markdown(r, only_delete=only_delete),
    }
    return renderers[fmt](result)


# -- JSON -----------------------------------------------------------------------------------


def render_json(result: RunResult) -> str:
    return encode_json(to_dict(result))


def render_pieces(
    subject: Plan | RunResult, fmt: str, *, only_delete: bool = False
) -> Iterator[str]:
    """``render``'s text in pieces whose concatenation is that text: JSON one repository at
    a time (``json_pieces``), the other formats whole."""
    if fmt != "json":
        yield render(subject, fmt, only_delete=only_delete)
        return
    yield from json_pieces(
        subject if isinstance(subject, RunResult) else RunResult(subject, dry_run=True)
    )


_REPOSITORIES = '\n  "repositories": [],\n'
"""How ``encode_json`` writes an empty ``repositories`` list: a line no other can be, as a
string's newlines are escaped and deeper keys are indented further."""


def json_pieces(result: RunResult) -> Iterator[str]:
    """``render_json``'s exact text, with one repository's rows built at a time: a report of
    100,000 tags as one document of dicts took about 600 MB; a plan keeps its rows packed,
    and now so does printing it. Each repository is encoded alone and indented to its place,
    which gives the bytes ``json.dumps(..., indent=2)`` gives for the whole."""
    text = encode_json(_document(result, []))
    if not result.plan.repositories:
        yield text
        return
    head, tail = text.split(_REPOSITORIES)
    yield head + '\n  "repositories": [\n'
    for number, repository in enumerate(result.plan.repositories):
        encoded = json.dumps(_repository_dict(repository), indent=2).replace("\n", "\n    ")
        yield ("    " if number == 0 else ",\n    ") + encoded
    yield "\n  ],\n" + tail


def encode_json(document: Mapping[str, Any]) -> str:
    """The one JSON form of a report: stdout, ``--output`` files, the daemon's store and
    ``/report`` all give the same bytes for the same pass."""
    return json.dumps(document, indent=2) + "\n"


def to_dict(result: RunResult) -> dict[str, Any]:
    return _document(result, [_repository_dict(r) for r in result.plan.repositories])


def _document(result: RunResult, repositories: list[dict[str, Any]]) -> dict[str, Any]:
    plan = result.plan
    data: dict[str, Any] = {
        "registry": plan.registry,
        "dry_run": result.dry_run,
        "generated_at": timestamp(plan.created_at),
        "repositories": repositories,
        "summary": {**asdict(plan.summary), "refused": plan.refused},
    }
    if not result.dry_run:
        data["run_id"] = result.run_id
        data["applied"] = [_applied_dict(a) for a in result.applied]
        data["storage"] = {**asdict(result.storage), "freed_bytes": result.storage.freed_bytes}
        data["gc"] = asdict(result.gc) if result.gc else None
        data["verification"] = list(result.verification)
    data["errors"] = list(result.errors) + [
        f"{r.name}: {r.error}" for r in plan.repositories if r.error
    ]
    data["ok"] = result.ok
    data["duration_s"] = round(result.duration_s, 3)
    return data


def _repository_dict(repository: RepositoryPlan) -> dict[str, Any]:
    rows, deletions = tuple(repository.decisions), tuple(repository.deletions)  # built once
    return {
        "name": repository.name,
        "tags": [_decision_dict(d) for d in rows if not d.is_untagged],
        # Rows by digest: untagged manifests and the platforms of tagged indexes.
        "manifests": [_decision_dict(d) for d in rows if d.is_untagged],
        "delete": [d.digest for d in deletions],
        "deletions": [
            {
                "digest": d.digest,
                "kind": d.kind.value,
                "tags": list(d.tags),
                "parents": list(d.parents),
            }
            for d in deletions
        ],
        "error": repository.error,
        "held": repository.held,
    }


def _decision_dict(decision: TagDecision) -> dict[str, Any]:
    """``created`` stays for older readers; ``*_at`` and ``*_by`` say which time decided."""
    return {
        "tag": decision.tag,
        "digest": decision.digest,
        "created": _optional_time(decision.created),
        "action": decision.action.value,
        "rule": decision.rule,
        "reason": decision.reason,
        "subject": decision.subject,
        "pushed_at": _optional_time(decision.pushed),
        "pulled_at": _optional_time(decision.pulled),
        "created_at": _optional_time(decision.created),
        "ranked_by": decision.ranked_by,
        "aged_by": decision.aged_by,
        "kind": decision.kind,
        "size": decision.size,
    }


def _optional_time(moment: datetime | None) -> str | None:
    return timestamp(moment) if moment is not None else None


def _applied_dict(applied: DeletionResult) -> dict[str, Any]:
    return {
        "repository": applied.repository,
        "digest": applied.digest,
        "tags": list(applied.tags),
        "outcome": applied.outcome.value,
        "detail": applied.detail,
    }


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second: what people paste into other tools."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- table and Markdown ---------------------------------------------------------------------

_COLUMNS = ("TAG", "ACTION", "RULE", "CREATED", "DIGEST", "REASON")


_WIDE_COLUMNS = ("TAG", "ACTION", "RULE", "KIND", "SIZE", "PUSHED", "CREATED", "DIGEST", "REASON")


def render_table(result: RunResult, wide: bool = False, only_delete: bool = False) -> str:
    columns = _WIDE_COLUMNS if wide else _COLUMNS
    lines: list[str] = [_headline(result), ""]
    outcomes = _outcomes(result)
    for repository in result.plan.repositories:
        lines.append(_repository_title(repository))
        shown = _shown(repository, only_delete, wide)
        rows = (_row(d, wide, outcomes.get(repository.name)) for d in shown)
        lines.extend(_aligned([columns, *rows], "  "))
        lines.append("")
    lines.extend(_footer(result))
    return "\n".join(lines) + "\n"


def render_wide(result: RunResult) -> str:
    """The table with KIND, SIZE and PUSHED: ``-o wide``, as kubectl has it."""
    return render_table(result, wide=True)


def _shown(
    repository: RepositoryPlan, only_delete: bool, wide: bool = False
) -> Sequence[TagDecision]:
    """Every row; kept platforms of indexes only in the wide table (there are many)."""
    if only_delete:
        return repository.tags_to_delete
    if wide:
        return repository.decisions
    return tuple(d for d in repository.decisions if not _kept_platform(d))


def _kept_platform(decision: TagDecision) -> bool:
    untagged_platform = decision.is_untagged and decision.kind == "platform"
    return untagged_platform and decision.action is Action.KEEP


def render_markdown(result: RunResult, only_delete: bool = False) -> str:
    lines: list[str] = [f"# {_headline(result)}", ""]
    outcomes = _outcomes(result)
    for repository in result.plan.repositories:
        lines += [f"## {_repository_title(repository)}", ""]
        lines.append("| " + " | ".join(_COLUMNS) + " |")
        lines.append("|" + "---|" * len(_COLUMNS))
        lines.extend(
            "| "
            + " | ".join(_escape(c) for c in _row(d, False, outcomes.get(repository.name)))
            + " |"
            for d in _shown(repository, only_delete)
        )
        lines.append("")
    lines.extend(f"- {line}" for line in _footer(result))
    return "\n".join(lines) + "\n"


def _headline(result: RunResult) -> str:
    mode = "plan (dry run: nothing deleted)" if result.dry_run else "retention pass"
    return f"{mode} for {result.plan.registry} at {timestamp(result.plan.created_at)}"


def _repository_title(repository: RepositoryPlan) -> str:
    tags, deleting, loose, going = repository.counts()  # without building every row
    title = (
        f"{repository.name}: {_count(tags, 'tag')}, {deleting} to delete, "
        f"{_count(len(repository.deletions), 'manifest')}"
    )
    if loose:
        title += f"; {loose} untagged, {going} to delete"
    if repository.error:
        return f"{title} — SKIPPED, not fully read: {repository.error}"
    if repository.held:
        return f"{title} — HELD: {repository.held}"
    return title


def _outcomes(result: RunResult) -> dict[str, dict[str, str]]:
    """After a run, per repository and digest, what happened: the ACTION column says it."""
    if result.dry_run:
        return {}
    found: dict[str, dict[str, str]] = {r.name: {} for r in result.plan.repositories}
    for applied in result.applied:
        word = "GONE" if applied.outcome.value == "already_gone" else applied.outcome.value.upper()
        found.setdefault(applied.repository, {})[applied.digest] = word
    return found


def _action(decision: TagDecision, outcomes: dict[str, str] | None) -> str:
    """DELETE/keep in a plan; DELETED, GONE, SKIPPED, FAILED or NOT DELETED after a run."""
    if decision.action is not Action.DELETE:
        return "keep"
    if outcomes is None:
        return "DELETE"
    return outcomes.get(decision.digest, "NOT DELETED")


def _row(
    decision: TagDecision, wide: bool = False, outcomes: dict[str, str] | None = None
) -> tuple[str, ...]:
    created = timestamp(decision.created) if decision.created else "unknown"
    extra: tuple[str, ...] = ()
    if wide:
        size = human_bytes(decision.size) if decision.size is not None else "?"
        pushed = timestamp(decision.pushed) if decision.pushed else "unknown"
        extra = (decision.kind, size, pushed)
    return (
        _tag_cell(decision),
        _action(decision, outcomes),
        decision.rule or "-",
        *extra,
        created,
        short_digest(decision.digest),
        decision.reason,
    )


def _tag_cell(decision: TagDecision) -> str:
    """Artifacts and platforms hang under their image; a manifest no tag reaches reads
    ``<untagged>``."""
    if decision.is_untagged:
        return UNTAGGED_CELL if decision.kind == "untagged" else PLATFORM_CELL
    return f"└ {decision.tag}" if decision.is_artifact else decision.tag


def _footer(result: RunResult) -> list[str]:
    s = result.plan.summary
    lines = [
        f"total: {_count(s.repositories, 'repository')}, {_count(s.tags, 'tag')}, "
        f"{_count(s.tags_to_delete, 'tag')} to delete, "
        f"{_untagged_counts(s)}"
        f"{_count(s.manifests_to_delete, 'manifest')} to delete, "
        f"~{human_bytes(s.reclaimable_bytes)} reclaimable",
    ]
    lines.extend(_refusals(result))
    if not result.dry_run:
        lines.extend(_applied_lines(result))
    lines.extend(f"error: {e}" for e in result.errors)
    lines.extend(f"broken: {problem}" for problem in result.verification)
    return lines


def _untagged_counts(summary: Summary) -> str:
    if not summary.untagged:
        return ""
    return f"{summary.untagged} untagged ({summary.untagged_to_delete} to delete), "


def _refusals(result: RunResult) -> list[str]:
    """What `run` refuses (or refused): said in the plan, so a dry run is no surprise."""
    plan = result.plan
    lines = []
    unread = sum(1 for r in plan.repositories if r.error)
    held = sum(1 for r in plan.repositories if r.held)
    if unread:
        lines.append(f"{_count(unread, 'repository')} not fully read: nothing deleted there")
    if held:
        verb = "would delete" if result.dry_run else "deleted"
        lines.append(
            f"{_count(held, 'repository')} HELD by safety.max_delete_fraction: run {verb} "
            "nothing there, and exits 1 (see above)"
        )
    if plan.refused and result.dry_run:
        lines.append(f"run will refuse this plan: {plan.refused}")
    return lines


def _count(count: int, noun: str) -> str:
    """``1 repository``, ``2 repositories``, ``3 tags``."""
    if count == 1:
        return f"1 {noun}"
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{count} {plural}"


def _applied_lines(result: RunResult) -> list[str]:
    counts: dict[str, int] = {}
    for applied in result.applied:
        counts[applied.outcome.value] = counts.get(applied.outcome.value, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing"
    lines = [f"applied (run {result.run_id}): {summary}"]
    lines.extend(
        f"{a.outcome.value}: {a.repository}@{short_digest(a.digest)} {a.detail}".rstrip()
        for a in result.applied
        if a.detail
    )
    if result.gc is not None:
        gc = result.gc
        blobs = "?" if gc.blobs_deleted is None else str(gc.blobs_deleted)
        state = f"error: {gc.error}" if gc.error else f"{blobs} blobs deleted"
        lines.append(f"gc ({gc.mode}): {state}" if gc.ran else f"gc ({gc.mode}): {gc.skipped}")
        if gc.probe is not None:
            lines.append(
                f"probe FAILED: {gc.probe[len('failed: ') :]}"
                if gc.probe_failed
                else "probe: passed"
            )
    storage = result.storage
    if storage.before_bytes is not None:
        after = "?" if storage.after_bytes is None else human_bytes(storage.after_bytes)
        freed = storage.freed_bytes
        freed_text = "?" if freed is None else human_bytes(freed)
        lines.append(
            f"storage: {human_bytes(storage.before_bytes)} before, {after} after, "
            f"{freed_text} freed"
        )
    return lines


def _aligned(rows: Sequence[Sequence[str]], gap: str) -> Iterable[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        yield (gap.join([*cells, row[-1]])).rstrip()


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def short_digest(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    return f"{algorithm}:{value[:12]}" if value else digest


def human_bytes(count: int) -> str:
    """Binary units, one decimal: how ``du -h`` and operators talk about disk."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"
